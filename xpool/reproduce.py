"""`xpool reproduce` / `make reproduce`: execute the study's notebooks with papermill.

Every notebook that applies to the profile runs in order, in the `xpool` Jupyter kernel, with the
repository root as its working directory (so `data/`, `cache/` and `results/` resolve as on the
command line). Executed copies go to `results/<profile>/notebooks/`; the notebooks write tables
and figures under `results/<profile>/`. Runs are cached by their resolved config, so a second
`reproduce` only re-reads finished runs; `fresh=True` deletes the profile's runs first.
`figures_only=True` re-executes the notebooks in read-only mode: every table and figure is
rebuilt from the saved run records, nothing is trained.

A failing notebook stops the study with exit code 1, naming the notebook and the failing cell;
Ctrl-C stops it with exit code 130 and one line (finished runs are kept, a rerun continues).
Timings go to `results/<profile>/reproduce_record.json`.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from xpool.config import DEFAULT_PROFILE, Config, dataset_key, load_config
from xpool.determinism import STUDY_ISA, cap_cpu_isa
from xpool.engine.runs import LOCAL_MARKER, cpu_model
from xpool.errors import ConfigError, XPoolError
from xpool.io import read_json, write_json
from xpool.notebook_exec import (
    INTERRUPTED,
    SharedKernel,
    kernel_failure,
    run_notebook,
    shared_kernel,
)
from xpool.report import build_report

# The modules that load torch (the study, the synthetic corpus, pretraining) are imported inside
# the functions that need them: torch must load only after `_cpu_caps` has capped its CPU kernels.
# So is the reproduction check (pandas), to keep `import xpool.reproduce` instant.

KERNEL = "xpool"
# Parallel notebook executions in figures-only mode (read-only, so they cannot collide).
FIGURES_WORKERS = 2
# The study's notebooks in run order, each with its phase. "runs": the notebooks that train (or,
# figures-only, read) the study's runs and write its tables; "figures": the read-only notebooks
# after them (07 and 08 read those tables). Only figures-only mode runs a phase's notebooks in
# parallel (see `_phases`); otherwise every notebook runs on its own, in this order.
Phase = Literal["runs", "figures"]
PHASES: tuple[Phase, ...] = ("runs", "figures")
NOTEBOOKS: dict[str, Phase] = {
    "01_msrvtt_9k": "runs",
    "02_msrvtt_7k": "runs",
    "03_msvd": "runs",
    "04_lsmdc": "runs",
    "05_pooling_ablation": "runs",
    "06_subregion_study": "runs",
    "07_figures": "figures",
    "08_explore": "figures",
    "09_authors_checkpoints": "figures",
    "10_protocol": "figures",
}
# The authors' released checkpoints exist for the real corpora; the smoke profile runs the
# notebook on a random model converted to their format (a plumbing check), other synthetic
# profiles skip it.
AUTHORS_NOTEBOOK = "09_authors_checkpoints"
DATASET_NOTEBOOK = {
    "msrvtt9k": "01_msrvtt_9k",
    "msrvtt7k": "02_msrvtt_7k",
    "msvd": "03_msvd",
    "lsmdc": "04_lsmdc",
}

# Notebook parameters per profile, on top of each notebook's own defaults (which are the
# embedded study's choices, see the notebooks' parameters cells). The smoke profile shrinks every
# grid to what the test suite can afford; real-corpus profiles train as their profile says (the
# paper's fine-tuning for paper-*, cached features for frozen-*), with the paper's seed for the
# GPU-hours profiles.
PROFILE_PARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "*": {"seeds": [0], "mode": "frozen"},
        "01_msrvtt_9k": {"seeds": [0, 1]},
        "05_pooling_ablation": {"n_boot": 200, "frames": [2], "heads": [2]},
        "06_subregion_study": {"ks": [1, 2], "n_boot": 200},
        "10_protocol": {"evals_per_epoch": 2, "val_videos": 4, "n_boot": 200},
    },
    # The protocol study on real corpora evaluates as the profile says (so its test-selected
    # runs are those of notebooks 01 and 05) and holds out 1,000 MSR-VTT training videos for
    # rule (c); MSVD and LSMDC have their own validation split.
    "paper": {"*": {"mode": None, "seeds": [24]},
              "05_pooling_ablation": {"frames": [6], "heads": [8]},
              "10_protocol": {"evals_per_epoch": None, "val_videos": 1000}},
    "frozen": {"*": {"mode": None, "seeds": [24, 25, 26]},
               "05_pooling_ablation": {"frames": [6], "heads": [8]},
               "10_protocol": {"evals_per_epoch": None, "val_videos": 1000}},
    # Fine-tuning costs ~3.3 min a run here: one seed, no head or frame-count variants.
    "embedded-finetune": {"*": {"mode": None, "seeds": [0]},
                          "05_pooling_ablation": {"frames": [], "heads": []}},
    # The protocol study with the tiny CLIP fine-tuned: 3 seeds (see its profile for the time).
    "embedded-finetune-protocol": {"*": {"mode": None, "seeds": [0, 1, 2]}},
    # Under 5 minutes from a clean clone (see its profile): the smallest grids that still give
    # every table and figure, with two seeds where a spread or a paired bootstrap over seeds is
    # the point.
    "embedded-quick": {"*": {"seeds": [0]},
                       "05_pooling_ablation": {"seeds": [0, 1], "frames": [4], "heads": [8]},
                       "06_subregion_study": {"ks": [1, 2, 3]},
                       "10_protocol": {"seeds": [0, 1], "evals_per_epoch": 2, "val_videos": 50}},
}
# Profiles that run a subset of the notebooks `notebooks_for` would choose.
PROFILE_NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "embedded-finetune": ("05_pooling_ablation", "07_figures", "08_explore"),
    "embedded-finetune-protocol": ("10_protocol",),
}


def notebooks_for(cfg: Config) -> list[str]:
    """The notebooks that apply to a profile: all of them for a synthetic corpus; for a real one
    its dataset's table, the pooling ablation, the figures and the explorer."""
    name = Path(cfg.profile).stem
    if name in PROFILE_NOTEBOOKS:
        return list(PROFILE_NOTEBOOKS[name])
    if cfg.data.corpus == "synthetic":
        return [n for n in NOTEBOOKS if n != AUTHORS_NOTEBOOK or name == "smoke"]
    key = dataset_key(cfg)
    if key not in DATASET_NOTEBOOK:
        raise ConfigError(f"no notebook for corpus {cfg.data.corpus!r} ({key})")
    return [DATASET_NOTEBOOK[key], "05_pooling_ablation", "07_figures", "08_explore",
            AUTHORS_NOTEBOOK, "10_protocol"]


def notebook_parameters(profile: str, notebook: str) -> dict[str, Any]:
    """PROFILE_PARAMETERS for one notebook (by profile name, or its `paper-`/`frozen-` family)."""
    name = Path(profile).stem
    table = PROFILE_PARAMETERS.get(name) or PROFILE_PARAMETERS.get(name.split("-")[0], {})
    return {**table.get("*", {}), **table.get(notebook, {})}


def _count_trained_here(runs_dir: Path) -> int:
    return sum(1 for _ in runs_dir.glob(f"*/{LOCAL_MARKER}")) if runs_dir.is_dir() else 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_caps(cfg: Config, log: Callable[[str], None]) -> str:
    """Cap torch's CPU kernels where bit-identity is promised (synthetic-corpus profiles), unless
    XPOOL_CPU_ISA says otherwise; the kernels this process and the notebooks inherit it. Returns
    the line saying what applies (also recorded in every run's environment.json)."""
    isa = os.environ.get("XPOOL_CPU_ISA", "").strip().lower()
    if not isa and cfg.data.corpus == "synthetic":
        isa = STUDY_ISA
    if isa in ("", "native"):
        return ("CPU kernels: torch's own choice for this CPU (XPOOL_CPU_ISA unset or native); "
                "numbers are bit-identical only on CPUs with the same instruction set")
    if not cap_cpu_isa(isa):
        return (f"CPU kernels: capped at {isa.upper()} for the notebooks, but torch was loaded in "
                f"this process before the cap (its pretraining is not capped): run `xpool "
                f"reproduce` as its own command")
    return (f"CPU kernels: capped at {isa.upper()} (XPOOL_CPU_ISA={isa}) so that the numbers are "
            f"bit-identical on CPUs with and without AVX-512; GPU kernels are not affected")


def _count_finished(runs_dir: Path) -> int:
    return sum(1 for _ in runs_dir.glob("*/metrics.json")) if runs_dir.is_dir() else 0


def reproduce(profile: str = DEFAULT_PROFILE, fresh: bool = False, figures_only: bool = False,
              results_dir: str | Path = "results", notebooks_dir: str | Path = "notebooks",
              only: list[str] | None = None, parameters: Mapping[str, Any] | None = None,
              kernel: str = KERNEL, log: Callable[[str], None] = print) -> int:
    """Run the study of `profile`; returns the exit code (0 success, 1 a notebook failed).

    only: a subset of notebook names (default: all that apply). parameters: extra notebook
    parameters for every notebook (tests use it). results_dir: where `<profile>/` goes.
    """
    if fresh and figures_only:
        raise ConfigError("fresh and figures_only exclude each other: figures_only never trains")
    cfg = load_config(profile)
    out = Path(results_dir) / Path(cfg.profile).name
    nb_dir = Path(notebooks_dir)
    if not nb_dir.is_dir():
        raise XPoolError(f"no notebooks folder at {nb_dir.resolve()}: run `xpool reproduce` from "
                         f"the repository root")
    names = _plan(cfg, only)
    runs_dir = out / "runs"
    if fresh:
        _forget_local_runs(runs_dir, log)
    runs_before = _count_trained_here(runs_dir)
    mode = "figures-only" if figures_only else ("fresh" if fresh else "normal")
    log(f"[reproduce] profile {cfg.profile}: {len(names)} notebooks ({mode}), "
        + (f"{_count_finished(runs_dir)} run records under {runs_dir}, read as they are"
           if figures_only else
           f"{runs_before} finished runs trained by this checkout under {runs_dir} (reused); "
           f"every other run is trained here"))
    log(f"[reproduce] {_cpu_caps(cfg, log)}")

    t0 = time.time()
    cpu0 = _cpu_seconds()
    load_before = _load_average()
    tally = _Tally()
    if cfg.data.corpus == "synthetic":
        _prepare_synthetic(cfg, figures_only, tally, log)
    jobs = _jobs(names, nb_dir, out, profile, figures_only, parameters, kernel)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    again = f"xpool reproduce {profile}" + (" --figures-only" if figures_only else "")
    _run_notebooks(_phases(jobs, figures_only), len(names), tally, out, again, log)
    wall = round(time.time() - t0, 1)
    runs_after = _count_trained_here(runs_dir)
    entry = _record_entry(cfg, mode, tally, figures_only=figures_only, wall=wall,
                          cpu_total=round(_cpu_seconds() - cpu0, 1), runs_before=runs_before,
                          runs_after=runs_after, load_before=load_before,
                          check=_check(out, log) if tally.status == 0 else None)
    _write_record(out / "reproduce_record.json", entry)
    if tally.status == 0:
        _summary(out, wall, runs_before, runs_after, log)
        build_report(out, log=log)  # results/<profile>/report/index.html
    return tally.status


class _Job(NamedTuple):
    """One notebook to execute: its name and the arguments of `run_notebook`."""

    name: str
    src: str
    dst: str
    params: dict[str, Any]
    kernel: str
    cwd: str


@dataclass
class _Tally:
    """What a reproduction did: seconds and CPU seconds per step, exit status, first failure."""

    timings: dict[str, float] = field(default_factory=dict)
    cpu_times: dict[str, float] = field(default_factory=dict)
    status: int = 0
    failure: str | None = None


def _plan(cfg: Config, only: list[str] | None) -> list[str]:
    """The notebooks to run, in order: those that apply to the profile (or `only` those)."""
    names = notebooks_for(cfg)
    if only:
        unknown = sorted(set(only) - set(NOTEBOOKS))
        if unknown:
            raise ConfigError(f"unknown notebooks {unknown}; valid: {list(NOTEBOOKS)}")
        names = [n for n in names if n in only]
    return names


def _forget_local_runs(runs_dir: Path, log: Callable[[str], None]) -> None:
    """`fresh`: the records stay (they are the committed reference until overwritten); without
    their markers every run counts as not trained here and is trained again."""
    if not runs_dir.is_dir():
        return
    log(f"[reproduce] FRESH: every run under {runs_dir} is trained again")
    for marker in runs_dir.glob(f"*/{LOCAL_MARKER}"):
        marker.unlink()


def _prepare_synthetic(cfg: Config, figures_only: bool, tally: _Tally,
                       log: Callable[[str], None]) -> None:
    """Corpus and tiny-CLIP pretraining first, so their (one-off) cost shows on its own line.

    Figures-only needs no model, but it does need the corpus (seconds to generate): the figures
    show its decoded frames, and the MSVD stand-in's note counts its captions.
    """
    # Inside: they load torch, which must come after `_cpu_caps` (see the note at the top).
    from xpool.data.synthetic import ensure_corpus
    from xpool.engine.pretrain import ensure_pretrained

    t = time.time()
    log("[reproduce] synthetic corpus" + ("" if figures_only else " and tiny-CLIP pretraining")
        + " (cached after the first run)")
    c = _cpu_seconds()
    ensure_corpus(cfg)
    if cfg.model.pretrained == "synthetic" and not figures_only:
        ensure_pretrained(cfg)
    tally.timings["prepare"] = round(time.time() - t, 1)
    tally.cpu_times["prepare"] = round(_cpu_seconds() - c, 1)
    log(f"[reproduce] prepared in {tally.timings['prepare']:.1f} s")


def _jobs(names: list[str], nb_dir: Path, out: Path, profile: str, figures_only: bool,
          parameters: Mapping[str, Any] | None, kernel: str) -> list[_Job]:
    """One job per notebook: its source, its executed copy and its parameters."""
    jobs = []
    for name in names:
        params = {"profile": profile, "output_dir": str(out), "figures_only": figures_only,
                  **notebook_parameters(profile, name), **dict(parameters or {})}
        jobs.append(_Job(name, str(nb_dir / f"{name}.ipynb"),
                         str(out / "notebooks" / f"{name}.ipynb"), params, kernel,
                         str(Path.cwd())))
    return jobs


def _phases(jobs: list[_Job], figures_only: bool) -> list[list[_Job]]:
    """The groups of jobs that run together, in order.

    Training notebooks share runs, so they run one after the other. Read-only (figures-only)
    notebooks are independent within a phase (07 and 08 read the tables 01-06 write) and run
    two at a time.
    """
    if not figures_only:
        return [[job] for job in jobs]
    return [[job for job in jobs if NOTEBOOKS[job.name] == phase] for phase in PHASES]


def _run_notebooks(phases: list[list[_Job]], total: int, tally: _Tally, out: Path, again: str,
                   log: Callable[[str], None]) -> None:
    """Run the phases in order until one fails or is interrupted (`again`: the command that
    continues after an interrupt). Notebooks that run one at a time share one kernel."""
    jobs = [job for phase in phases for job in phase]
    if not jobs or any(len(phase) > 1 for phase in phases):
        _run_phases(phases, total, tally, out, again, log, None)
        return
    try:
        with ExitStack() as stack:
            try:
                shared = stack.enter_context(shared_kernel(jobs[0].kernel, jobs[0].cwd))
            except Exception as e:  # no kernel: say so, and which command registers it
                tally.failure = f"the notebook kernel could not start: {kernel_failure(e)}"
                tally.status = 1
                log(f"[reproduce] FAILED: {tally.failure}")
                return
            _run_phases(phases, total, tally, out, again, log, shared)
    except KeyboardInterrupt:  # while the kernel starts or shuts down
        if tally.failure is None:
            tally.failure = "interrupted"
            tally.status = 130


def _run_phases(phases: list[list[_Job]], total: int, tally: _Tally, out: Path, again: str,
                log: Callable[[str], None], shared: SharedKernel | None) -> None:
    def cpu() -> float:  # this process, its finished children, and the shared kernel's tree
        return _cpu_seconds() + (shared.cpu_seconds() if shared else 0.0)

    done = 0
    for phase in phases:
        if not phase:
            continue
        for k, job in enumerate(phase):
            log(f"[reproduce] [{done + k + 1}/{total}] {job.name} ...")
        c = cpu()
        try:
            outcomes = _run_phase(phase, shared)
        except KeyboardInterrupt:
            outcomes = [(phase[0].name, 0.0, INTERRUPTED)]
        if len(phase) == 1:
            tally.cpu_times[phase[0].name] = round(cpu() - c, 1)
        _tally_phase(outcomes, done, total, tally, out, again, log)
        done += len(outcomes)
        if tally.failure:
            break


def _tally_phase(outcomes: list[tuple[str, float, str | None]], done: int, total: int,
                 tally: _Tally, out: Path, again: str, log: Callable[[str], None]) -> None:
    """Log a phase's outcomes and record them; the first failure or an interrupt sets the
    status (an interrupt stops reading the rest)."""
    for i, (name, seconds, error) in enumerate(outcomes, done + 1):
        tally.timings[name] = seconds
        if error == INTERRUPTED:
            tally.failure = f"interrupted during notebook {name}"
            log(f"[reproduce] interrupted during {name}; finished runs are kept: rerun "
                f"`{again}` to continue where it stopped")
            tally.status = 130
            return
        if error and tally.failure is None:
            tally.failure = f"notebook {name} {error}"
            log(f"[reproduce] FAILED: {tally.failure}")
            log(f"[reproduce] the executed copy with the error: "
                f"{out / 'notebooks' / (name + '.ipynb')}")
            tally.status = 1
        elif not error:
            log(f"[reproduce] [{i}/{total}] {name} done in {seconds:.1f} s")


def _run_phase(phase: list[_Job], shared: SharedKernel | None) -> list[tuple[str, float, str | None]]:
    """Execute a phase's notebooks: from this process when alone (in the `shared` kernel where
    given), else from worker processes, each notebook in a kernel of its own."""
    if len(phase) == 1:
        job = phase[0]
        return [(job.name, *run_notebook(job.src, job.dst, job.params, job.kernel, job.cwd,
                                         shared))]
    pool = ProcessPoolExecutor(max_workers=min(FIGURES_WORKERS, len(phase)))
    try:
        futures = [(j.name, pool.submit(run_notebook, j.src, j.dst, j.params, j.kernel, j.cwd))
                   for j in phase]
        return [(n, *f.result()) for n, f in futures]
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _check(out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The reproduction check against the committed results, logged and written to a file."""
    from xpool.reproduction_check import CHECK_FILE, reproduction_check  # pandas: see the top

    report, all_equal = reproduction_check(out)
    log("")
    log(report)
    log(f"[reproduce] reproduction check written to {out / CHECK_FILE}")
    return {"all_equal": all_equal}


def _record_entry(cfg: Config, mode: str, tally: _Tally, *, figures_only: bool, wall: float,
                  cpu_total: float, runs_before: int, runs_after: int,
                  load_before: list[float] | None, check: dict[str, Any] | None) -> dict[str, Any]:
    """This reproduction's entry in `reproduce_record.json`."""
    status = {0: "ok", 130: "interrupted"}.get(tally.status, "failed")
    return {
        "profile": cfg.profile,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "status": status,
        "failure": tally.failure,
        "wall_time_s": wall,
        "notebook_seconds": tally.timings,
        "runs_before": runs_before,
        "runs_after": runs_after,
        # CPU seconds of this process and its notebook kernels (and their workers): on a shared
        # machine wall time alone says little about where the time goes.
        "cpu_time_s": cpu_total,
        "notebook_cpu_seconds": tally.cpu_times,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "cpu": cpu_model(),
        "cpu_isa_cap": os.environ.get("XPOOL_CPU_ISA"),
        "reproduction_check": check,
        # first: no run trained by this checkout before; cached: every run was.
        "kind": ("figures_only" if figures_only else "first" if runs_before == 0
                 else "cached" if runs_after == runs_before else "partial"),
        "python": sys.version.split()[0],
    }


def _write_record(path: Path, entry: dict[str, Any]) -> None:
    """Append `entry` to the record's history and keep the latest of each kind on top."""
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = read_json(path)
        except (OSError, ValueError):
            record = {}
    history = list(record.get("history", []))
    history.append(entry)
    record["history"] = history[-20:]
    record["latest"] = entry
    if entry["status"] == "ok":
        record[f"latest_{entry['kind']}"] = entry
    write_json(path, record)


def _summary(out: Path, wall: float, before: int, after: int,
             log: Callable[[str], None]) -> None:
    tables = sorted(p.name for p in (out / "tables").glob("*.md"))
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    log("")
    log(f"[reproduce] done in {wall:.0f} s ({wall / 60:.1f} min); finished runs: {before} before, "
        f"{after} after")
    log(f"  tables   {out / 'tables'}/: {', '.join(tables) or '(none)'}")
    log(f"  figures  {out / 'figures'}/: {', '.join(figures) or '(none)'}")
    log(f"  notebooks (executed) {out / 'notebooks'}/")
    log(f"  run records {out / 'runs'}/  timings {out / 'reproduce_record.json'}")
