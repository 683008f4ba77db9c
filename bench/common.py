"""Shared helpers of the benchmark scripts: interleaved timing, tables, the JSON record.

Timing (:func:`time_interleaved`): every side of a comparison runs in the same process, in
rounds; each round runs every side once, in alternating order (A B, B A, ...), so slow drifts of
the machine (other processes, thermal state, caches) hit all sides alike. Each side is warmed up
first. Results are medians over the rounds; :func:`speedup` is the ratio of two medians and
:func:`round_ratios` the per-round ratios (their spread shows how noisy the machine was).

The JSON record (:class:`BenchReport`) each script writes to ``<results dir>/<name>.json``::

    {
      "name": "decode", "title": "...", "quick": false, "command": "python -m bench.decode",
      "created": "2025-01-01T12:00:00+00:00", "duration_s": 12.3,
      "machine": {cpu, cpu_count, usable_cores, torch, torch_threads, load_avg_start, ...},
      "params": {...},                       # sizes, repetitions, settings
      "headline": [{"metric": "...", "value": 2.5, "unit": "x", "target": ">= 2x",
                    "met": true, "detail": "..."}],
      "tables": [{"title": "...", "columns": [...], "rows": [[...], ...]}],
      "results": {...},                      # raw numbers: per-side timings etc.
      "notes": ["..."]
    }

``bench/suite.py`` (``xpool bench``) summarises every such file in ``README.md`` next to them: the headline rows and
the tables. Other fields are free. The results directory is ``results/bench`` (or
``results/bench/quick`` with ``--quick``) unless ``XPOOL_BENCH_DIR`` names another.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpool import reporting
from xpool.engine.runs import environment_info
from xpool.io import write_json

__all__ = [
    "REPO_ROOT",
    "RESULTS_ENV",
    "BenchReport",
    "Timing",
    "apply_threads",
    "bench_parser",
    "fmt",
    "markdown_table",
    "results_dir",
    "round_ratios",
    "speedup",
    "time_interleaved",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ENV = "XPOOL_BENCH_DIR"


def results_dir(quick: bool) -> Path:
    """Where benchmark JSONs go: ``$XPOOL_BENCH_DIR``, else ``results/bench[/quick]``."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    base = REPO_ROOT / "results" / "bench"
    return base / "quick" if quick else base


def bench_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script takes (``--quick``, ``--out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (part of the 2-minute check)")
    parser.add_argument("--out", default=None,
                        help=f"results directory (default: ${RESULTS_ENV} or results/bench[/quick])")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, i.e. the cores; 1 with --quick)")
    return parser


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's thread count from ``--threads`` (``--quick`` defaults to 1); returns it.

    One thread keeps the quick check fast on a busy machine: with more threads than free cores,
    torch's worker threads wait on each other and small operations slow down many times over.
    """
    import torch

    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call of one side, one entry per timed round."""

    label: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def best(self) -> float:
        return min(self.seconds) if self.seconds else math.nan

    def rate(self, items: float) -> float:
        """Items per second at the median time, for ``items`` items per call."""
        return items / self.median if self.median > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.best,
            "max_s": max(self.seconds) if self.seconds else math.nan,
            "rounds": len(self.seconds),
            "seconds": self.seconds,
        }


def time_interleaved(
    sides: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    number: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time several callables against each other, interleaved (see the module docstring).

    Args:
        sides: label -> zero-argument callable (one unit of work).
        repeats: timed rounds; every side runs once per round.
        warmup: untimed calls of each side before the first round.
        number: calls per timed measurement (the recorded time is per call).
        sync: called before reading the clock (e.g. ``torch.cuda.synchronize``).

    Returns:
        label -> :class:`Timing`, in the order of ``sides``.
    """
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, number >= 1, warmup >= 0; got {repeats}, {number}, {warmup}")
    labels = list(sides)
    for label in labels:
        for _ in range(warmup):
            sides[label]()
    if sync is not None:
        sync()
    out = {label: Timing(label) for label in labels}
    for r in range(repeats):
        order = labels if r % 2 == 0 else labels[::-1]
        for label in order:
            fn = sides[label]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            if sync is not None:
                sync()
            out[label].seconds.append((time.perf_counter() - start) / number)
    return out


def speedup(timings: Mapping[str, Timing], fast: str, slow: str) -> float:
    """How many times faster ``fast`` is than ``slow``: median(slow) / median(fast)."""
    a, b = timings[fast].median, timings[slow].median
    return b / a if a > 0 else math.nan


def round_ratios(timings: Mapping[str, Timing], fast: str, slow: str) -> list[float]:
    """The per-round ratios slow / fast (same round = same machine state)."""
    return [s / f if f > 0 else math.nan
            for f, s in zip(timings[fast].seconds, timings[slow].seconds, strict=True)]


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant digits, None as '-', the rest as str."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or math.isinf(value):
            return str(value)
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - magnitude)
        return f"{value:,.{decimals}f}" if abs(value) >= 1e-3 else f"{value:.{digits - 1}e}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The benchmarks' table: xpool.reporting's writer with cells in :func:`fmt`, columns padded
    (it reads fine in a terminal too) and no trailing newline."""
    return reporting.markdown_table(columns, rows, aligned=True, cell=fmt).removesuffix("\n")


# ----------------------------------------------------------------------------- the record


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """`xpool.engine.runs.environment_info()` plus usable cores, interop threads and the load average."""
    import torch

    info = environment_info()
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        info["usable_cores"] = os.cpu_count()
    info["torch_interop_threads"] = torch.get_num_interop_threads()
    if "cv2" in sys.modules:
        info["opencv"] = sys.modules["cv2"].__version__
    info["load_avg"] = _load_avg()
    return info


class BenchReport:
    """Collects one benchmark's parameters, headline numbers and tables; writes its JSON."""

    def __init__(self, name: str, title: str, quick: bool, out_dir: str | Path | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.name = name
        self.title = title
        self.quick = quick
        self.out_dir = Path(out_dir) if out_dir is not None else results_dir(quick)
        self.params: dict[str, Any] = dict(params or {})
        self.headline: list[dict[str, Any]] = []
        self.tables: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self._start = time.perf_counter()
        self._load_start = _load_avg()
        self._created = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
        self.argv: list[str] = sys.argv[1:]  # for the record's "command"

    @classmethod
    def from_args(cls, name: str, title: str, args: argparse.Namespace,
                  argv: Sequence[str] | None = None, **params: Any) -> BenchReport:
        """A report for a script parsed with :func:`bench_parser` (``argv``: what it parsed)."""
        report = cls(name, title, quick=args.quick, out_dir=args.out, params=params)
        if argv is not None:
            report.argv = list(argv)
        return report

    def add_headline(self, metric: str, value: float | None, unit: str = "",
                     target: str | None = None, met: bool | None = None, detail: str = "") -> None:
        """A headline number; ``target`` (e.g. '>= 2x') and ``met`` when there is a goal."""
        self.headline.append({"metric": metric, "value": value, "unit": unit, "target": target,
                              "met": met, "detail": detail})

    def add_table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  echo: bool = True) -> None:
        """A result table (printed unless ``echo`` is False)."""
        self.tables.append({"title": title, "columns": list(columns), "rows": [list(r) for r in rows]})
        if echo:
            print(f"\n{title}\n{markdown_table(columns, rows)}", flush=True)

    def note(self, text: str, echo: bool = True) -> None:
        """A sentence for the reader (why a target was missed, what was skipped, ...)."""
        self.notes.append(text)
        if echo:
            print(f"note: {text}", flush=True)

    def to_dict(self) -> dict[str, Any]:
        machine = machine_info()
        machine["load_avg_start"] = self._load_start
        machine["load_avg_end"] = machine.pop("load_avg")
        argv = [f"python -m bench.{self.name}", *map(shlex.quote, self.argv)]
        return {
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "command": " ".join(argv),
            "created": self._created,
            "duration_s": round(time.perf_counter() - self._start, 2),
            "machine": machine,
            "params": self.params,
            "headline": self.headline,
            "tables": self.tables,
            "results": self.results,
            "notes": self.notes,
        }

    def write(self) -> Path:
        """Write ``<out_dir>/<name>.json`` atomically and print the headline; returns the path."""
        record = self.to_dict()
        path = write_json(self.out_dir / f"{self.name}.json", _finite(record))
        if self.headline:
            rows = [[h["metric"], h["value"], h["unit"], h["target"] or "-", h["met"]]
                    for h in self.headline]
            print(f"\n{self.title}: headline\n"
                  f"{markdown_table(['metric', 'value', 'unit', 'target', 'met'], rows)}")
        print(f"\nwrote {path} ({record['duration_s']:.1f} s)", flush=True)
        return path


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so the JSON is standard (json.dumps would write NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def proc_status_kb(field: str) -> int | None:
    """A kB field of /proc/self/status (e.g. VmRSS, VmHWM); None where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
