"""The study runner: a `Study` turns (overrides, seed) pairs into finished runs.

A `Study` holds what every notebook's `parameters` cell sets (profile, output folder, corpus root,
fine-tune or frozen-feature mode, figures-only, fresh) and turns (overrides, seed) pairs into
finished runs:

- normally through `xpool.engine.train.train(cfg, resume=True)`, which returns a finished run with the
  same resolved config from disk instead of retraining, so notebooks share runs (01 and 05 use the
  same X-Pool / mean / self-attention runs) and an interrupted study continues where it stopped;
- with `figures_only=True` it never trains: it reads the finished record and raises a clear error
  naming the run when one is missing (that is what `make figures` relies on).

Frozen-mode heads of one grid train in parallel, each in a worker process of one pool per process.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from xpool.config import Config, load_config
from xpool.data.splits import ensure_data, eval_split, load_split
from xpool.data.synthetic import ensure_corpus, load_meta
from xpool.determinism import HEAD_THREADS
from xpool.engine.features import extract_features, feature_key, feature_path, verify_features
from xpool.engine.pretrain import cache_path, ensure_pretrained, verify_checkpoint
from xpool.engine.runs import RunRecord
from xpool.engine.setup import torch_threads
from xpool.engine.train import train
from xpool.errors import ConfigError, CorpusError, XPoolError
from xpool.integrity import record_artifact
from xpool.paths import resolve
from xpool.study.collect import RunResult

log = logging.getLogger(__name__)

MODES = ("finetune", "frozen")

# Frozen-feature mode: the backbone is frozen and its features are cached, so only the head and
# the logit scale learn. A head alone needs a larger learning rate and more (cheap) epochs than
# fine-tuning, and there is no augmentation because features are extracted once (the frozen-*
# profiles make the same changes to the paper recipe).
FROZEN_LR_FACTOR = 10.0
FROZEN_EPOCH_FACTOR = 3
# Frozen-mode heads of one grid train this many at a time, each in its own process with
# HEAD_THREADS threads: a head is too small to use two cores, two heads use both. The environment
# variable XPOOL_HEAD_WORKERS overrides it (the test suite sets 1: its runs take about a second,
# less than starting a worker process).
DEFAULT_HEAD_WORKERS = 2
# Relative cost of training one head (the 4-layer temporal transformer is the slowest, the
# parameter-free heads the fastest); only the order of parallel training depends on it.
HEAD_COST = {"self_attention": 3, "xpool": 2, "topk": 1, "attention": 1, "mean": 0}


def head_workers() -> int:
    """Frozen-mode heads trained at a time: `XPOOL_HEAD_WORKERS`, else DEFAULT_HEAD_WORKERS.

    Read when a study opens, not when xpool is imported, so the variable set after the import (by
    a notebook, a test) counts.
    """
    raw = os.environ.get("XPOOL_HEAD_WORKERS", str(DEFAULT_HEAD_WORKERS))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"environment variable XPOOL_HEAD_WORKERS must be a positive integer "
                          f"(parallel frozen-head training), got {raw!r}")
    return int(raw)


class StudyStop(CorpusError):
    """A notebook cannot go on (for example the corpus is missing).

    IPython renders `_render_traceback_` instead of a traceback, so JupyterLab and papermill
    show just the message (what to run to fix it) and stop executing the notebook.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m{type(self).__name__}: {self}\x1b[0m"]


@dataclass
class Study:
    """The shared settings of one notebook's runs. Build it with `open_study`."""

    profile: str
    output_dir: Path
    data_root: str | None = None
    mode: str | None = None
    figures_only: bool = False
    fresh: bool = False
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    # Parallel frozen-head training (see DEFAULT_HEAD_WORKERS); 1 trains one run after the other.
    workers: int = field(default_factory=head_workers)
    # Runs (re)trained by this Study: with `fresh`, a run is retrained once, not at every use.
    _trained: set[Path] = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ configs

    @property
    def tables_dir(self) -> Path:
        return self.output_dir / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.output_dir / "figures"

    @cached_property
    def base(self) -> Config:
        """The profile with the study-wide overrides (no mode changes)."""
        return load_config(self.profile, self._overrides({}))

    @property
    def synthetic(self) -> bool:
        return self.base.data.corpus == "synthetic"

    @property
    def effective_mode(self) -> str:
        return "frozen" if self.base.model.frozen or self.mode == "frozen" else "finetune"

    def _overrides(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        o: dict[str, Any] = dict(self.overrides)
        if self.data_root is not None:
            o["data.root"] = str(self.data_root)
        o.update(extra)
        return o

    def _mode_overrides(self, cfg: Config) -> dict[str, Any]:
        if self.mode is None or self.mode == "finetune" and not cfg.model.frozen:
            return {}
        if self.mode == "finetune":
            raise ConfigError(f"mode='finetune' but profile {self.profile!r} is a frozen-feature "
                              f"profile (model.frozen: true); use its paper-* counterpart")
        if cfg.model.frozen:
            return {}
        return {"model.frozen": True, "data.train_augment": False,
                "train.lr_new": cfg.train.lr_new * FROZEN_LR_FACTOR,
                "train.epochs": cfg.train.epochs * FROZEN_EPOCH_FACTOR}

    def config(self, overrides: Mapping[str, Any] | None = None, seed: int | None = None) -> Config:
        """The resolved config of one run: profile + study overrides + `overrides` + mode + seed."""
        extra = dict(overrides or {})
        if seed is not None:
            extra["train.seed"] = int(seed)
        cfg = load_config(self.profile, self._overrides(extra))
        mode = self._mode_overrides(cfg)
        if mode:
            # Explicit overrides win over the mode's defaults (e.g. an epoch count chosen here).
            cfg = load_config(self.profile, self._overrides({**mode, **extra}))
        cfg.output.results_dir = str(self.output_dir.parent)
        return cfg

    # ------------------------------------------------------------------ data

    def require_corpus(self, overrides: Mapping[str, Any] | None = None) -> Path:
        """Make sure the corpus (and for synthetic profiles the pretrained tiny CLIP) exists.

        Synthetic corpora are generated here (cached). A missing real corpus stops the notebook
        with a message naming the command that downloads it, not a traceback.
        """
        cfg = self.config(overrides)
        if self.figures_only:
            return cfg.data_root
        if cfg.data.corpus == "synthetic":
            root = ensure_corpus(cfg, progress=self.progress)
            self._record_corpus(cfg)
            if cfg.model.pretrained == "synthetic":
                ensure_pretrained(cfg)
                self._record_pretrained(cfg)
            return root
        try:
            load_split(cfg, "test")
        except CorpusError as e:
            raise StudyStop(
                f"the {cfg.data.corpus} corpus is not available at {cfg.data_root}: {e}\n"
                f"Download it (for example `xpool download {cfg.data.corpus} --root "
                f"{cfg.data_root}`), or set the notebook's data_root parameter to where it is."
            ) from None
        return cfg.data_root

    # ------------------------------------------------------------------ runs

    def run(self, overrides: Mapping[str, Any] | None = None, seed: int | None = None,
            labels: Mapping[str, Any] | None = None) -> RunResult:
        """Train (or read) one run. With figures_only, only read, and fail if it is missing."""
        cfg = self.config(overrides, seed)
        record = RunRecord.for_config(cfg)
        if self.figures_only and not record.finished:
            raise XPoolError(
                f"figures_only: run {record.run_dir} (pooling {cfg.model.pooling}, seed "
                f"{cfg.train.seed}, overrides {dict(overrides or {})}) has no finished "
                f"record; run `make reproduce PROFILE={self.profile}` (or this notebook with "
                f"figures_only=False) first"
            )
        if self._needs_training(record):
            record = self._train(cfg)
        return RunResult(record, cfg, dict(labels or {}))

    def _needs_training(self, record: RunRecord) -> bool:
        """Figures-only reads every record as it is. Otherwise a run is reused only if this
        checkout trained it (its local marker): committed records are the reference the
        reproduction check compares against, not a cache."""
        if self.figures_only:
            return False
        if self.fresh:
            return record.run_dir not in self._trained
        return not record.trained_here

    def _retrain(self, record: RunRecord) -> bool:
        """Whether training starts over: fresh, or a finished record this checkout did not make
        (a committed one). A run this checkout started and did not finish resumes."""
        return self.fresh or (record.finished and not record.trained_here)

    def _train(self, cfg: Config) -> RunRecord:
        """Train one run, printing one line per run (tqdm bars would bloat executed notebooks)."""
        t = time.time()
        retrain = self._retrain(RunRecord.for_config(cfg))
        if cfg.model.frozen:
            self._prepare_frozen(cfg)
            record = RunRecord(Path(_train_head(cfg, retrain)))
        else:
            record = train(cfg, resume=not retrain, fresh=retrain, progress=self.progress)
            record.mark_trained_here()
        self._trained.add(record.run_dir)
        self._report(record, time.time() - t)
        return record

    def _report(self, record: RunRecord, seconds: float) -> None:
        # A log record, not a print: executed notebooks show results, not run ids (enable with
        # logging.basicConfig(level="INFO")).
        if self.progress:
            m = record.metrics()
            log.info("%s: t2v R@1 %.1f, v2t R@1 %.1f (%.1f s)", record.run_dir.name,
                     m["t2v"]["R1"], m["v2t"]["R1"], seconds)

    def _prepare_frozen(self, cfg: Config) -> None:
        """Pretraining (synthetic) and cached features of every split a frozen run reads, with
        every thread: the backbone pass is the heavy part of a frozen run."""
        if cfg.model.pretrained == "synthetic":
            # Before extraction: pretraining needs gradients, extraction runs without them.
            ensure_pretrained(cfg, progress=self.progress)
            self._record_pretrained(cfg)
        if cfg.data.corpus == "synthetic":
            ensure_data(cfg, progress=self.progress)  # generated on first use, then recorded
            self._record_corpus(cfg)
        for split in sorted({"train", eval_split(cfg), "test"}):
            if not feature_path(cfg, split).is_file() and self.progress:
                log.info("extracting frozen features of the %s split (%s, %d frames)", split,
                         cfg.data_root, cfg.data.num_frames)
            extract_features(cfg, split, progress=False)
            record_artifact(self.output_dir, "features", feature_key(cfg, split),
                            verify_features(feature_path(cfg, split)))

    # What decides the numbers, for the reproduction check (xpool/integrity.py).

    def _record_corpus(self, cfg: Config) -> None:
        meta = load_meta(cfg.data_root)
        record_artifact(self.output_dir, "corpus", meta["hash"],
                        {"corpus_sha256": meta["corpus_sha256"],
                         "videos": len(meta["video_sha256"])})

    def _record_pretrained(self, cfg: Config) -> None:
        out = cache_path(cfg)
        record_artifact(self.output_dir, "pretrained", out.name, verify_checkpoint(out))

    def _train_heads_in_parallel(self, cfgs: Sequence[Config]) -> None:
        """Train the frozen runs among `cfgs` that need it, `workers` at a time (each in its own
        process). Results equal one-at-a-time training: every run is seeded by its own config."""
        todo: dict[Path, Config] = {}
        for cfg in cfgs:
            record = RunRecord.for_config(cfg)
            if cfg.model.frozen and self._needs_training(record):
                todo.setdefault(record.run_dir, cfg)
        if len(todo) < 2 or self.workers < 2:
            return
        for cfg in todo.values():
            self._prepare_frozen(cfg)
        # Longest first, so that no long run starts last while the other worker sits idle.
        order = sorted(todo, key=lambda d: HEAD_COST.get(todo[d].model.pooling, 0), reverse=True)
        t = time.time()
        pool = _head_pool(self.workers)
        futures = {pool.submit(_train_head, todo[d], self._retrain(RunRecord(d))): d
                   for d in order}
        for future in as_completed(futures):
            record = RunRecord(Path(future.result()))
            self._trained.add(record.run_dir)
            self._report(record, record.metrics()["wall_time_s"])
        if self.progress:
            log.info("%d runs trained %d at a time in %.1f s", len(todo),
                     min(self.workers, len(todo)), time.time() - t)

    def grid(self, variants: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
             seeds: Sequence[int]) -> list[RunResult]:
        """Every (labels, overrides) variant for every seed, seeds outermost so that an
        interrupted study has complete comparisons for the first seeds. Frozen-mode runs train
        `workers` at a time."""
        if not seeds:
            raise ConfigError("seeds must name at least one seed")
        jobs = [(overrides, seed, labels) for seed in seeds for labels, overrides in variants]
        if not self.figures_only:
            self._train_heads_in_parallel([self.config(o, s) for o, s, _ in jobs])
        return [self.run(overrides, seed, labels) for overrides, seed, labels in jobs]


# One pool of head workers per process, kept for every grid of a notebook: a spawned worker pays
# for importing torch and xpool (seconds of CPU each), which the study's grids would otherwise pay
# once per grid. Workers hold no state between runs: every run is seeded by its own config.
_HEAD_POOL: dict[int, Any] = {}


def _ignore_sigint() -> None:
    """Head-worker initializer: leave Ctrl-C to the parent. Jupyter interrupts the kernel's whole
    process group when it shuts a kernel down, and idle workers would each print a
    KeyboardInterrupt traceback into the reproduce log; the parent stops the pool instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _head_pool(workers: int) -> Any:
    """The process's ProcessPoolExecutor with `workers` head workers (created on first use)."""
    if workers not in _HEAD_POOL:
        for old in _HEAD_POOL.values():
            old.shutdown()
        _HEAD_POOL.clear()
        # spawn, not fork: a forked child of a process whose OpenMP pool has run can deadlock.
        _HEAD_POOL[workers] = ProcessPoolExecutor(max_workers=workers,
                                                  mp_context=get_context("spawn"),
                                                  initializer=_ignore_sigint)
    return _HEAD_POOL[workers]


def _train_head(cfg: Config, fresh: bool) -> str:
    """Train one frozen-mode run from cached features with HEAD_THREADS threads; returns its run
    directory. Module-level so that a worker process can run it. A head works on tiny tensors,
    where one thread is faster than two (no synchronisation per op)."""
    with torch_threads(HEAD_THREADS):
        record = train(cfg, resume=not fresh, fresh=fresh, progress=False)
    record.mark_trained_here()
    return str(record.run_dir)


def results_folder(profile: str, output_dir: str | Path | None = None) -> Path:
    """A notebook's results folder: `output_dir` (relative: against the project root) or the
    profile's `results/<profile>` under the project root."""
    return resolve(output_dir) if output_dir else load_config(profile).profile_dir


def open_study(profile: str, output_dir: str | Path | None = None, data_root: str | None = None,
               mode: str | None = None, figures_only: bool = False, fresh: bool = False,
               progress: bool = True, overrides: Mapping[str, Any] | None = None,
               workers: int | None = None) -> Study:
    """A Study from a notebook's parameters.

    output_dir: the profile's results folder (`tables/`, `figures/`, `runs/` go under it); by
    default `results/<profile>`. Runs are stored under `<output_dir>/runs`, and run records know
    their profile by name, so the folder must be named after the profile.
    mode: None (as the profile says), "finetune" or "frozen" (frozen CLIP features, only the
    head trains: see FROZEN_LR_FACTOR). workers: frozen-mode heads trained at a time (None:
    `head_workers()`, read now).
    """
    if workers is None:
        workers = head_workers()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if mode is not None and mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES} or None, got {mode!r}")
    cfg = load_config(profile, dict(overrides or {}))
    out = resolve(output_dir) if output_dir is not None else cfg.profile_dir
    if out.name != Path(cfg.profile).name:
        raise ConfigError(
            f"output_dir {out} must be a folder named after the profile ({cfg.profile!r}), e.g. "
            f"{out / cfg.profile}: run records live under <output_dir>/runs"
        )
    return Study(profile=profile, output_dir=out, data_root=data_root, mode=mode,
                 figures_only=figures_only, fresh=fresh, progress=progress,
                 overrides=dict(overrides or {}), workers=workers)
