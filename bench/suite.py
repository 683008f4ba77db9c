"""The benchmark suite: run the scripts under `bench/` and summarise their results.

``python -m bench.suite [--quick] [--only NAME ...]`` from the repository root; `xpool bench` and
`make bench` run it. Each benchmark runs in its own subprocess (``python -m bench.<name>
[--quick]`` from the repository root), so one benchmark's threads, memory and imports never
affect another's, and a crash or hang (timeout) is reported without stopping the rest. Every
script writes ``<dir>/<name>.json`` (see ``bench/common.py``); afterwards ``<dir>/README.md``
summarises every JSON in the folder, including ones from earlier runs (each section says when it
was made).

``<dir>`` is ``results/bench`` for the full set and ``results/bench/quick`` for ``--quick``, so a
quick check never overwrites the committed full results; ``XPOOL_BENCH_DIR`` overrides both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_ENV, markdown_table, results_dir
from xpool.errors import XPoolError
from xpool.io import atomic_write_text, read_json

__all__ = ["BENCHMARKS", "available_benchmarks", "main", "run_benchmarks", "write_summary"]

# The suite, in run order (cheap ones first). Other `bench/*.py` scripts run after these.
BENCHMARKS = ("reproduce", "decode", "dataloader", "train_step", "similarity", "twostage",
              "exact_math", "exact_conv")
# index_vitb32 is a one-off measurement (no --quick, no JSON), run by hand; not part of the suite.
_NOT_BENCHMARKS = {"__init__", "common", "suite", "index_vitb32"}
BENCH_DIR = REPO_ROOT / "bench"
# Per-script wall-clock limits: a hang must not block the suite.
QUICK_TIMEOUT_S = 300
FULL_TIMEOUT_S = 3 * 3600


def available_benchmarks(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Names of the benchmark scripts present: the known suite in order, then any others."""
    present = {p.stem for p in bench_dir.glob("*.py")
               if p.stem not in _NOT_BENCHMARKS and not p.stem.startswith("_")}
    return [n for n in BENCHMARKS if n in present] + sorted(present.difference(BENCHMARKS))


def run_benchmarks(quick: bool = False, only: list[str] | None = None, *,
                   out_dir: str | Path | None = None, timeout_s: float | None = None,
                   python: str | None = None) -> int:
    """Run the benchmarks (all, or ``only`` these names); write the summary; 0 if all succeeded.

    Args:
        quick: small sizes (the whole suite in under 2 minutes); results go to ``quick/``.
        only: names of benchmarks to run; unknown names raise XPoolError. The summary still covers
            every JSON in the results folder.
        out_dir: results folder (default: see the module docstring).
        timeout_s: per-script limit (default 300 s quick, 3 h full).
        python: interpreter for the scripts (default: this one).
    """
    present = available_benchmarks()
    if only:
        unknown = [n for n in only if n not in present and n not in BENCHMARKS]
        if unknown:
            raise XPoolError(f"unknown benchmark(s) {unknown}; available: {', '.join(present)}")
        names = [n for n in only if n in present]
        missing = [n for n in only if n not in present]
    else:
        names = present
        missing = [n for n in BENCHMARKS if n not in present]
    out = Path(out_dir) if out_dir is not None else results_dir(quick)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{RESULTS_ENV: str(out.resolve())})
    limit = timeout_s if timeout_s is not None else (QUICK_TIMEOUT_S if quick else FULL_TIMEOUT_S)

    status: dict[str, dict[str, Any]] = {}
    for n in missing:
        print(f"[bench] {n}: bench/{n}.py is not there; skipped", flush=True)
        status[n] = {"status": "missing", "seconds": 0.0}
    t_suite = time.perf_counter()
    for i, name in enumerate(names, 1):
        cmd = [python or sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        print(f"\n[bench] [{i}/{len(names)}] {name}: {' '.join(cmd[1:])}", flush=True)
        t, started = time.perf_counter(), time.time()
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, timeout=limit, check=False).returncode
            state = "ok" if rc == 0 else f"failed (exit code {rc})"
        except subprocess.TimeoutExpired:
            state = f"timed out after {limit:.0f} s"
        seconds = time.perf_counter() - t
        result = out / f"{name}.json"
        if state == "ok" and (not result.is_file() or result.stat().st_mtime < started):
            # Not fatal (the script ran), but the summary will not show this run.
            state = f"ok, but wrote no {name}.json here (it must honour ${RESULTS_ENV})"
        status[name] = {"status": state, "seconds": round(seconds, 1)}
        print(f"[bench] {name}: {state} in {seconds:.1f} s", flush=True)
    total = time.perf_counter() - t_suite
    summary = write_summary(out, status, quick=quick, total_s=total)
    print(f"\n[bench] {len(names)} benchmarks in {total:.1f} s; summary: {summary}")
    failed = [n for n, s in status.items() if not s["status"].startswith("ok")
              and (s["status"] != "missing" or (only and n in only))]
    if failed:
        listing = ", ".join(f"{n} ({status[n]['status']})" for n in failed)
        print(f"[bench] not ok: {listing}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- summary


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        print(f"[bench] cannot read {path}: {exc}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else {"value": data}


def _flat(obj: Any, prefix: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """Scalar leaves of a nested dict as (dotted key, value), for JSONs without tables."""
    if isinstance(obj, dict) and depth > 0:
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k), depth - 1)
        return out
    if isinstance(obj, str | int | float | bool) or obj is None:
        return [(prefix, obj)]
    return []


def _machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    cores = m.get("cpu_count", m.get("cores", "?"))
    return (f"{m.get('cpu', '?')}, {m.get('usable_cores', cores)} cores (of {cores}){gpu}; "
            f"torch {m.get('torch', '?')}, "
            f"{m.get('torch_threads', '?')} threads")


def _section(name: str, data: dict[str, Any]) -> list[str]:
    md = markdown_table
    lines = [f"## {name}: {data.get('title', '')}".rstrip(": "), ""]
    meta = []
    if data.get("command"):
        meta.append(f"`{data['command']}`")
    if data.get("created"):
        meta.append(f"made {data['created']}")
    if data.get("duration_s") is not None:
        meta.append(f"{data['duration_s']:.0f} s")
    if data.get("quick"):
        meta.append("**quick mode** (small sizes: a plumbing check, not a measurement)")
    if meta:
        lines += [", ".join(meta) + ".", ""]
    m = data.get("machine")
    if isinstance(m, dict):
        load = ""
        if m.get("load_avg_start") or m.get("load_avg_end"):
            load = (f" Load average (1/5/15 min) at start {m.get('load_avg_start')}, "
                    f"at end {m.get('load_avg_end')}.")
        lines += [f"Machine: {_machine_line(m)}.{load}", ""]
    if data.get("params"):
        params = ", ".join(f"{k}={v}" for k, v in data["params"].items() if not isinstance(v, dict))
        if params:
            lines += [f"Parameters: {params}.", ""]
    headline = data.get("headline")
    if isinstance(headline, list) and headline:
        rows = [[h.get("metric"), h.get("value"), h.get("unit", ""), h.get("target") or "-",
                 h.get("met"), h.get("detail", "")] for h in headline if isinstance(h, dict)]
        lines += [md(["metric", "value", "unit", "target", "met", "detail"], rows), ""]
    tables = data.get("tables")
    if isinstance(tables, list):
        for t in tables:
            if isinstance(t, dict) and t.get("columns"):
                lines += [f"**{t.get('title', '')}**", "", md(t["columns"], t.get("rows", [])), ""]
    if not headline and not tables:
        flat = [(k, v) for k, v in _flat(data) if not k.startswith(("machine.", "name"))][:40]
        lines += ["(This JSON has no `headline` or `tables` (bench/common.py's schema); its "
                  "numbers, flattened:)", "", md(["key", "value"], flat), ""]
    for note in data.get("notes") or []:
        lines.append(f"- {note}")
    if data.get("notes"):
        lines.append("")
    return lines


def write_summary(out: Path, status: dict[str, dict[str, Any]] | None = None, quick: bool = False,
                  total_s: float | None = None) -> Path:
    """Write ``out/README.md`` summarising every ``out/*.json``; returns its path.

    Files named ``*-quick.json`` (quick results written next to the full ones by a script that
    ignores ``XPOOL_BENCH_DIR``) are left out of the full summary.
    """
    results = {p.stem: d for p in sorted(out.glob("*.json"))
               if (quick or not p.stem.endswith("-quick")) and (d := _load(p)) is not None}
    order = [n for n in BENCHMARKS if n in results] + sorted(set(results).difference(BENCHMARKS))
    title = "Benchmarks (quick check)" if quick else "Benchmarks"
    lines = [f"# {title}", "",
             "Written by `xpool bench` (`make bench`; `make bench QUICK=1` writes `results/bench/quick/`)."
             " One section per `bench/<name>.py`, from its `<name>.json` in this folder. Every "
             "comparison runs its sides in one process, interleaved over several rounds; values "
             "are medians. Timings depend on the machine and on what else ran on it: see each "
             "section's machine and load average.", ""]
    if status:
        rows = [[n, s["status"], s["seconds"]] for n, s in status.items()]
        total = f" ({total_s:.0f} s in all)" if total_s is not None else ""
        lines += [f"Last run{total}:", "", markdown_table(["benchmark", "status", "seconds"], rows), ""]
    heads = []
    for n in order:
        for h in results[n].get("headline") or []:
            if isinstance(h, dict):
                heads.append([n, h.get("metric"), h.get("value"), h.get("unit", ""),
                              h.get("target") or "-", h.get("met")])
    if heads:
        lines += ["## Headline numbers", "",
                  markdown_table(["benchmark", "metric", "value", "unit", "target", "met"], heads), ""]
    for n in order:
        lines += _section(n, results[n])
    if not results:
        lines += ["No results yet: run `make bench`.", ""]
    return atomic_write_text(out / "README.md", "\n".join(lines).rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.suite``: run the suite; the exit code is 0 when every benchmark succeeded."""
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run")
    args = parser.parse_args(argv)
    try:
        return run_benchmarks(quick=args.quick, only=args.only)
    except XPoolError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
