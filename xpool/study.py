"""Studies: grids of training runs, collected into DataFrames and written as tables.

The notebooks are thin drivers over this module. A `Study` holds what every notebook's
`parameters` cell sets (profile, output folder, corpus root, fine-tune or frozen-feature mode,
figures-only, fresh) and turns (overrides, seed) pairs into finished runs:

- normally through `xpool.train.train(cfg, resume=True)`, which returns a finished run with the
  same resolved config from disk instead of retraining, so notebooks share runs (01 and 05 use the
  same X-Pool / mean / self-attention runs) and an interrupted study continues where it stopped;
- with `figures_only=True` it never trains: it reads the finished record and raises a clear error
  naming the run when one is missing (that is what `make figures` relies on).

The study functions (`dataset_study`, `pooling_ablation`, `xpool_ablations`, `subregion_study`)
return DataFrames and write `tables/*.csv` + `*.md` under the study's output folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpool import reporting
from xpool.config import POOLINGS, Config, load_config
from xpool.engine.runs import RunRecord
from xpool.errors import ConfigError, CorpusError, XPoolError
from xpool.integrity import record_artifact
from xpool.io import read_json, torch_load
from xpool.paths import resolve

log = logging.getLogger(__name__)

MODES = ("finetune", "frozen")
# Heads with no trained parameter that changes a ranking when the backbone is frozen.
PARAMETER_FREE = ("mean", "topk", "attention")
# The three heads of the paper's main tables.
PAPER_POOLINGS = ("xpool", "mean", "self_attention")
RESULT_DIRECTIONS = ("t2v", "v2t", "t2v_dsl", "v2t_dsl")

# Frozen-feature mode: the backbone is frozen and its features are cached, so only the head and
# the logit scale learn. A head alone needs a larger learning rate and more (cheap) epochs than
# fine-tuning, and there is no augmentation because features are extracted once (the frozen-*
# profiles make the same changes to the paper recipe).
FROZEN_LR_FACTOR = 10.0
FROZEN_EPOCH_FACTOR = 3
# Threads while a frozen-mode head trains (see Study._train).
HEAD_THREADS = 1


def _env_workers(default: int = 2) -> int:
    raw = os.environ.get("XPOOL_HEAD_WORKERS", str(default))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"environment variable XPOOL_HEAD_WORKERS must be a positive integer "
                          f"(parallel frozen-head training), got {raw!r}")
    return int(raw)


# Frozen-mode heads of one grid train this many at a time, each in its own process with
# HEAD_THREADS threads: a head is too small to use two cores, two heads use both. The environment
# variable XPOOL_HEAD_WORKERS overrides it (the test suite sets 1: its runs take about a second,
# less than starting a worker process).
HEAD_WORKERS = _env_workers()
# Relative cost of training one head (the 4-layer temporal transformer is the slowest, the
# parameter-free heads the fastest); only the order of parallel training depends on it.
HEAD_COST = {"self_attention": 3, "xpool": 2, "topk": 1, "attention": 1, "mean": 0}

# Synthetic stand-ins for the real datasets (profiles whose corpus is synthetic): the same
# protocol on a corpus with that dataset's caption structure. Values: (overrides, description).
STANDINS: dict[str, tuple[dict[str, Any], str]] = {
    "msrvtt9k": ({}, "the 9k-style training list, one caption per test video (as 1k-A)"),
    "msrvtt7k": ({"data.train_list": "7k", "model.dropout": 0.4},
                 "the 7k-style training list (7,010/9,000 of the training videos), one caption "
                 "per test video, dropout 0.4 as the authors' 7k setting"),
    "msvd": ({"model.dropout": 0.4},
             "many captions per test video, dropout 0.4 as the authors' MSVD setting"),
    "lsmdc": ({"synth.captions_per_video": 1},
              "one caption per clip in training and test, as LSMDC"),
}
# MSVD stand-in when the generator cannot write several captions per test video: evaluate on
# training-split videos held out from training (a quarter, at most 100), with all their captions.
MSVD_HELDOUT_FRACTION = 0.25
MSVD_HELDOUT_MAX = 100


class StudyStop(CorpusError):
    """A notebook cannot go on (for example the corpus is missing).

    IPython renders `_render_traceback_` instead of a traceback, so JupyterLab and papermill
    show just the message (what to run to fix it) and stop executing the notebook.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m{type(self).__name__}: {self}\x1b[0m"]


def dataset_key(cfg: Config) -> str | None:
    """Which paper dataset a config trains on (`msrvtt9k`, ...), None for the synthetic corpus."""
    if cfg.data.corpus == "msrvtt":
        return f"msrvtt{cfg.data.train_list}"
    if cfg.data.corpus in ("msvd", "lsmdc"):
        return cfg.data.corpus
    return None


@dataclass
class RunResult:
    """One finished run with the labels the study attached to it."""

    record: RunRecord
    config: Config
    labels: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics()

    def ranks(self, direction: str = "t2v") -> np.ndarray:
        """Per-query test ranks of this run (`test_ranks.json`)."""
        path = self.record.run_dir / "test_ranks.json"
        if not path.is_file():
            raise XPoolError(f"run {self.record.run_dir} has no test_ranks.json (per-query ranks)")
        return np.asarray(read_json(path)[direction])


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
    # Parallel frozen-head training (see HEAD_WORKERS); 1 trains one run after the other.
    workers: int = HEAD_WORKERS
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
            from xpool.data.synthetic import ensure_corpus
            from xpool.engine.pretrain import ensure_pretrained

            root = ensure_corpus(cfg, progress=self.progress)
            self._record_corpus(cfg)
            if cfg.model.pretrained == "synthetic":
                ensure_pretrained(cfg)
                self._record_pretrained(cfg)
            return root
        from xpool.data.splits import load_split

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
        import time

        from xpool.engine.train import train

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
        from xpool.engine.features import (
            extract_features,
            feature_key,
            feature_path,
            verify_features,
        )

        if cfg.model.pretrained == "synthetic":
            from xpool.engine.pretrain import ensure_pretrained

            # Before extraction: pretraining needs gradients, extraction runs without them.
            ensure_pretrained(cfg, progress=self.progress)
            self._record_pretrained(cfg)
        if cfg.data.corpus == "synthetic":
            self._record_corpus(cfg)
        eval_split = "val" if cfg.train.selection == "val" else "test"
        for split in sorted({"train", eval_split, "test"}):
            if not feature_path(cfg, split).is_file() and self.progress:
                log.info("extracting frozen features of the %s split (%s, %d frames)", split,
                         cfg.data_root, cfg.data.num_frames)
            extract_features(cfg, split, progress=False)
            record_artifact(self.output_dir, "features", feature_key(cfg, split),
                            verify_features(feature_path(cfg, split)))

    # What decides the numbers, for the reproduction check (xpool/integrity.py).

    def _record_corpus(self, cfg: Config) -> None:
        from xpool.data.synthetic import load_meta

        meta = load_meta(cfg.data_root)
        record_artifact(self.output_dir, "corpus", meta["hash"],
                        {"corpus_sha256": meta["corpus_sha256"],
                         "videos": len(meta["video_sha256"])})

    def _record_pretrained(self, cfg: Config) -> None:
        from xpool.engine.pretrain import cache_path, verify_checkpoint

        out = cache_path(cfg)
        record_artifact(self.output_dir, "pretrained", out.name, verify_checkpoint(out))

    def _train_heads_in_parallel(self, cfgs: Sequence[Config]) -> None:
        """Train the frozen runs among `cfgs` that need it, `workers` at a time (each in its own
        process). Results equal one-at-a-time training: every run is seeded by its own config."""
        import time
        from concurrent.futures import as_completed

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
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _head_pool(workers: int) -> Any:
    """The process's ProcessPoolExecutor with `workers` head workers (created on first use)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

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
    from xpool.engine.setup import torch_threads
    from xpool.engine.train import train

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
               workers: int = HEAD_WORKERS) -> Study:
    """A Study from a notebook's parameters.

    output_dir: the profile's results folder (`tables/`, `figures/`, `runs/` go under it); by
    default `results/<profile>`. Runs are stored under `<output_dir>/runs`, and run records know
    their profile by name, so the folder must be named after the profile.
    mode: None (as the profile says), "finetune" or "frozen" (frozen CLIP features, only the
    head trains: see FROZEN_LR_FACTOR). workers: frozen-mode heads trained at a time.
    """
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


# ----------------------------------------------------------------------------------------------
# Collecting metrics


def metrics_frame(results: Sequence[RunResult], directions: Sequence[str] = RESULT_DIRECTIONS,
                  source: str = "test") -> pd.DataFrame:
    """One row per (run, direction): labels, dataset, pooling, seed, selection, mode, metrics.

    source="test": the run's final test metrics (`metrics.json`). source="selected_eval": the
    evaluation at the selected step from the run's own evaluation log (the MSVD stand-in's
    multi-caption held-out set).
    """
    rows = []
    for r in results:
        m = r.metrics
        values = m if source == "test" else _selected_eval(r)
        for d in directions:
            if d not in values:
                continue
            rows.append({
                **r.labels,
                "dataset": dataset_key(r.config) or "synthetic",
                "pooling": r.config.model.pooling,
                "seed": int(m["seed"]),
                "direction": d,
                **{k: float(values[d][k]) for k in reporting.METRICS},
                "selection": m["selection"],
                "mode": "frozen" if r.config.model.frozen else "finetune",
                "run_id": r.record.run_dir.name,
            })
    return pd.DataFrame(rows)


def _selected_eval(r: RunResult) -> dict[str, Any]:
    best = r.metrics["best_step"]
    for e in r.record.evaluations():
        if e["step"] == best:
            return e
    raise XPoolError(f"run {r.record.run_dir}: no evaluation at its selected step {best}")


def ranks_by_method(results: Sequence[RunResult], key: str, direction: str = "t2v",
                    seeds: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """method (the `key` label or config pooling) -> [S, Q] ranks over the seeds all share."""
    by: dict[str, dict[int, np.ndarray]] = {}
    for r in results:
        name = r.labels.get(key, r.config.model.pooling)
        by.setdefault(name, {})[r.config.train.seed] = r.ranks(direction)
    common = set.intersection(*(set(v) for v in by.values())) if by else set()
    if seeds is not None:
        common &= set(seeds)
    if not common:
        raise XPoolError("paired bootstrap: no seed is shared by every method")
    order = sorted(common)
    return {name: np.stack([v[s] for s in order]) for name, v in by.items()}


# ----------------------------------------------------------------------------------------------
# The paper's result tables (notebooks 01-04)


@dataclass
class DatasetResult:
    """What a dataset notebook shows: the table, its markdown, the raw runs and the protocol."""

    dataset: str
    real: bool
    table: pd.DataFrame
    markdown: str
    runs: pd.DataFrame
    protocol: dict[str, Any]


def _has_synth_field(name: str) -> bool:
    from xpool.config import SynthConfig

    return name in {f.name for f in dataclasses.fields(SynthConfig)}


def standin_overrides(dataset: str, base: Config) -> tuple[dict[str, Any], str, str]:
    """(overrides, description, metric source) of the synthetic stand-in for `dataset` on the
    synthetic profile `base`."""
    if dataset not in STANDINS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(STANDINS)}")
    overrides, desc = STANDINS[dataset]
    overrides = dict(overrides)
    source = "test"
    if dataset == "msvd":
        if _has_synth_field("test_captions_per_video"):
            overrides["synth.test_captions_per_video"] = 4
            desc += ": 4 captions per test video"
        else:
            # The generator writes one caption per test video; MSVD's structure (all captions of
            # a test video are queries) is reproduced on training-split videos held out from
            # training, evaluated with all their captions, the checkpoint chosen on that same set
            # (the authors' test-split selection).
            held = min(MSVD_HELDOUT_MAX, max(2, int(base.synth.num_train * MSVD_HELDOUT_FRACTION)))
            overrides.update({"train.selection": "val", "data.val_videos": held})
            desc += (f": evaluated on {held} training-split videos held out from "
                     f"training, with all their captions; checkpoint chosen on that set")
            source = "selected_eval"
    return overrides, desc, source


def dataset_study(study: Study, dataset: str, seeds: Sequence[int],
                  poolings: Sequence[str] = PAPER_POOLINGS, write: bool = True) -> DatasetResult:
    """The paper's result table for `dataset` (X-Pool, mean, self-attention by default).

    With a real-corpus profile the profile must be that dataset, and the paper's numbers and the
    differences stand beside ours. With a synthetic profile the same protocol runs on a stand-in
    with the dataset's caption structure, titled as not comparable to the paper.
    """
    base = study.base
    real_key = dataset_key(base)
    if real_key is not None and real_key != dataset:
        raise ConfigError(
            f"this notebook is {reporting.DATASETS[dataset]} but profile {study.profile!r} trains "
            f"on {real_key}; use the notebook of that dataset or a matching profile"
        )
    real = real_key is not None
    if real:
        overrides, desc, source = {}, reporting.DATASETS[dataset], "test"
    else:
        overrides, desc, source = standin_overrides(dataset, base)
    study.require_corpus(overrides)
    variants = [({}, {**overrides, "model.pooling": p}) for p in poolings]
    results = study.grid(variants, seeds)
    runs = metrics_frame(results, source=source)
    if source == "selected_eval":
        # Selected on the set it is evaluated on, as the authors select on the test split.
        runs["selection"] = "held-out set (evaluated there)"
    table = reporting.results_table(runs, dataset if real else None)
    mode = study.effective_mode
    selection = _selection_phrase(results, source)
    if real:
        title = f"{reporting.DATASETS[dataset]}: text-video retrieval ({mode}; {selection})"
        notes = [
            f"Mean ± std over seeds {', '.join(map(str, seeds))}; selection: "
            f"{', '.join(sorted(runs['selection'].unique()))} (the checkpoint kept is the best on "
            f"that split). Δ = ours - paper. DSL: dual-softmax re-scoring, reported separately.",
            "Paper numbers are X-Pool (Gorti et al., CVPR 2022) and the CLIP4Clip baselines it "
            "compares against; each row names its source. '—': no published number.",
        ]
    else:
        title = (f"Synthetic stand-in for {reporting.DATASETS[dataset]} ({mode}; {selection}): "
                 f"NOT comparable to the paper's numbers")
        notes = [
            f"Synthetic benchmark (profile {study.profile}) with {desc}.",
            f"Mean ± std over seeds {', '.join(map(str, seeds))}; selection: "
            f"{', '.join(sorted(runs['selection'].unique()))}. DSL: dual-softmax re-scoring.",
            "The paper's numbers are for real videos and CLIP ViT-B/32; none are shown here "
            "because nothing about this corpus makes them comparable.",
        ]
    if source == "selected_eval":
        notes.append(_msvd_heldout_note(results))
    from xpool.recipe import recipe_notes

    # The v2t convention always; for real corpora also every deviation from the authors' recipe.
    notes += recipe_notes([r.config for r in results], real=real)
    notes += frozen_spread_note(mode, poolings)
    md = reporting.results_markdown(table, title, notes)
    protocol = {"dataset": dataset, "real": real, "description": desc, "mode": mode,
                "seeds": list(seeds), "poolings": list(poolings), "profile": study.profile,
                "metric_source": source}
    if write:
        name = f"results_{dataset}"
        reporting.write_table(table, study.tables_dir, name, md)
        reporting.write_table(runs, study.tables_dir, f"{name}_runs",
                              reporting.frame_markdown(runs, f"{title}: every run"))
    return DatasetResult(dataset, real, table, md, runs, protocol)


def _selection_phrase(results: Sequence[RunResult], source: str) -> str:
    """How the table's checkpoints were chosen, for its title (xpool.protocol, notebook 10)."""
    from xpool.protocol import describe_selection

    phrases = []
    for r in results:
        n = len(list(r.record.evals_dir.glob("eval_*.json")))
        if source == "selected_eval":
            phrase = (f"checkpoint: best of {n} evaluations on the held-out set the table reports, "
                      f"as choosing on the test split")
        else:
            phrase = describe_selection(r.config, n)
        if phrase not in phrases:
            phrases.append(phrase)
    return "; ".join(phrases)


def _msvd_heldout_note(results: Sequence[RunResult]) -> str:
    """How many held-out captions also describe another held-out video (they are ambiguous:
    the generator only guarantees unique captions within the test split)."""
    from xpool.data.splits import load_split
    from xpool.data.synthetic import is_subsequence, parse_caption

    cfg = results[0].config
    try:
        corpus = load_split(cfg, "val")
    except XPoolError:
        return "Held-out evaluation set: its corpus is not on disk, ambiguity not counted."
    specs = _synthetic_specs(cfg)
    scenes = {v: specs[v].scenes for v in corpus.videos}
    ambiguous = 0
    for c in corpus.captions:
        try:
            cap = parse_caption(c.text)
        except ValueError:  # a corpus written by another generator version
            return "Held-out evaluation set: captions not parseable, ambiguity not counted."
        if any(is_subsequence(cap, s) for v, s in scenes.items() if v != c.video_id):
            ambiguous += 1
    return (f"Held-out evaluation set: {corpus.num_videos} videos, {corpus.num_captions} captions; "
            f"{ambiguous} captions also describe another held-out video (ambiguous queries, "
            f"which lower every strategy's text-to-video recall alike).")


# ----------------------------------------------------------------------------------------------
# Pooling ablation (notebook 05)


@dataclass
class AblationResult:
    """Runs, per-strategy summary and the paired bootstrap against X-Pool."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    bootstrap: pd.DataFrame
    markdown: str
    results: list[RunResult]


ABLATION_COLUMNS = ["dataset", "pooling", "seed", "direction", *reporting.METRICS, "selection",
                    "mode", "run_id"]


def pooling_ablation(study: Study, seeds: Sequence[int], poolings: Sequence[str] = POOLINGS,
                     n_boot: int = 10_000, write: bool = True) -> AblationResult:
    """Every pooling strategy trained the same way over `seeds`, each compared with X-Pool by a
    paired bootstrap over the same test queries (both directions)."""
    if "xpool" not in poolings:
        raise ConfigError("the pooling ablation compares against X-Pool: include 'xpool'")
    study.require_corpus()
    results = study.grid([({"variant": p}, {"model.pooling": p}) for p in poolings], seeds)
    runs = metrics_frame(results, directions=reporting.DIRECTIONS)
    runs = runs[ABLATION_COLUMNS]
    summary = reporting.summarize(runs, ["pooling", "direction"])
    boot = _bootstrap_both(results, "pooling", "xpool", n_boot)
    md = _ablation_markdown(
        summary, boot, "pooling",
        f"Pooling ablation ({_dataset_title(study)}, {study.effective_mode})", seeds, n_boot,
        mode=study.effective_mode)
    if write:
        reporting.write_table(runs, study.tables_dir, "pooling_ablation", md)
        reporting.write_table(boot, study.tables_dir, "pooling_bootstrap",
                              reporting.bootstrap_markdown(boot, n_boot))
    return AblationResult(runs, summary, boot, md, results)


def _dataset_title(study: Study) -> str:
    key = dataset_key(study.base)
    if key is None:
        return f"synthetic benchmark, K={study.base.synth.scenes} scenes per video"
    return reporting.DATASETS[key]


def _bootstrap_both(results: Sequence[RunResult], key: str, baseline: str,
                    n_boot: int) -> pd.DataFrame:
    frames = []
    for direction in reporting.DIRECTIONS:
        ranks = ranks_by_method(results, key, direction)
        b = reporting.bootstrap_against(ranks, baseline=baseline, n_boot=n_boot)
        if key != "pooling":
            b = b.rename(columns={"pooling": key})
        b.insert(1, "direction", direction)
        b["seeds"] = " ".join(map(str, sorted({r.config.train.seed for r in results})))
        frames.append(b)
    return pd.concat(frames, ignore_index=True)


def frozen_spread_note(mode: str, poolings: Sequence[str]) -> list[str]:
    """The note that explains "± 0.0" where it appears: in frozen mode the parameter-free heads
    (mean, top-k, parameter-free attention) have nothing a seed changes that moves a ranking."""
    free = [reporting.POOLING_LABELS.get(p, p) for p in reporting.POOLING_ORDER
            if p in PARAMETER_FREE and p in set(poolings)]
    if mode != "frozen" or not free:
        return []
    return [f"Frozen mode: {', '.join(free)} pooling {'has' if len(free) == 1 else 'have'} no "
            f"trained parameter that changes a ranking (only the logit scale learns, and it does "
            f"not reorder the videos), so a seed cannot change their numbers: their ± 0.0 is "
            f"exact, not a missing spread."]


def _ablation_markdown(summary: pd.DataFrame, boot: pd.DataFrame, key: str, title: str,
                       seeds: Sequence[int], n_boot: int, mode: str = "finetune") -> str:
    baseline = "X-Pool" if key == "pooling" else "default"
    header = [key, "direction", *reporting.METRICS, "seeds", "ΔR@1 vs " + baseline + " [95% CI]"]
    rows = []
    for _, r in summary.iterrows():
        n = int(r["n_seeds"])
        b = boot[(boot[key] == r[key]) & (boot["direction"] == r["direction"])]
        if len(b):
            cmp = f"{b['diff_R1'].iloc[0]:+.1f} [{b['lo'].iloc[0]:+.1f}, {b['hi'].iloc[0]:+.1f}]"
        else:
            cmp = "(baseline)"
        label = reporting.POOLING_LABELS.get(r[key], r[key]) if key == "pooling" else r[key]
        rows.append([label, r["direction"],
                     *[reporting.fmt_mean_std(r[f"{m}_mean"], r[f"{m}_std"], n)
                       for m in reporting.METRICS], r["seeds"], cmp])
    notes = [
        f"Mean ± std over seeds {', '.join(map(str, seeds))}.",
        f"ΔR@1: R@1 of the row minus R@1 of {baseline} on the same test queries (each query's hit "
        "averaged over the shared seeds), with a 95% paired bootstrap interval over queries "
        f"({n_boot:,} resamples). An interval that excludes 0 is a difference the test set "
        "resolves.",
    ]
    if key == "pooling":
        notes += frozen_spread_note(mode, summary["pooling"].unique())
    return reporting._markdown(title, header, rows, notes)


def xpool_ablations(study: Study, seeds: Sequence[int], frames: Sequence[int] = (),
                    heads: Sequence[int] = (8,), residual: bool = True, n_boot: int = 10_000,
                    write: bool = True) -> AblationResult:
    """X-Pool variants against the default head: without the residual FC (`residual=True` adds
    that variant), other head counts, other numbers of frames; paired bootstrap vs the default."""
    study.require_corpus()
    cfg = study.config({"model.pooling": "xpool"})
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"variant": "default"}, {"model.pooling": "xpool"})]
    if residual:
        variants.append(({"variant": "no residual FC"},
                         {"model.pooling": "xpool", "model.residual": False}))
    for h in heads:
        if h != cfg.model.num_heads:
            variants.append(({"variant": f"{h} heads"},
                             {"model.pooling": "xpool", "model.num_heads": int(h)}))
    for f in frames:
        if f != cfg.data.num_frames:
            variants.append(({"variant": f"{f} frames"},
                             {"model.pooling": "xpool", "data.num_frames": int(f)}))
    results = study.grid(variants, seeds)
    runs = metrics_frame(results, directions=reporting.DIRECTIONS)
    runs = runs[["variant", *ABLATION_COLUMNS]]
    summary = reporting.summarize(runs, ["variant", "direction"])
    boot = _bootstrap_both(results, "variant", "default", n_boot)
    title = (f"X-Pool ablations ({_dataset_title(study)}, {study.effective_mode}; default: "
             f"{cfg.model.num_heads} head(s), residual FC, {cfg.data.num_frames} frames)")
    md = _ablation_markdown(summary, boot, "variant", title, seeds, n_boot)
    if write:
        reporting.write_table(runs, study.tables_dir, "xpool_ablation", md)
    return AblationResult(runs, summary, boot, md, results)


# ----------------------------------------------------------------------------------------------
# Sub-region study (notebook 06)


@dataclass
class SubregionResult:
    """R@1 against K: every run, and the per-(pooling, K) summary with bootstrap intervals."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


SUBREGION_COLUMNS = ["pooling", "K", "seed", *reporting.METRICS, "selection", "mode", "run_id"]


def subregion_study(study: Study, ks: Sequence[int], seeds: Sequence[int],
                    poolings: Sequence[str] = POOLINGS, n_boot: int = 2_000,
                    write: bool = True) -> SubregionResult:
    """Every pooling strategy on synthetic corpora with K scenes per video, for each K."""
    if not study.synthetic:
        raise ConfigError("the sub-region study needs a synthetic profile (it varies synth.scenes)")
    for k in ks:
        study.require_corpus({"synth.scenes": int(k)})
    # One grid over every K, so parallel frozen-mode training has the whole study to balance.
    results = study.grid([({"K": int(k)}, {"synth.scenes": int(k), "model.pooling": p})
                          for k in ks for p in poolings], seeds)
    runs = metrics_frame(results, directions=("t2v",))
    runs = runs[SUBREGION_COLUMNS]
    rows = []
    for (p, k), g in runs.groupby(["pooling", "K"], sort=False):
        rs = [r for r in results if r.config.model.pooling == p and r.labels["K"] == k]
        mean, lo, hi = reporting.bootstrap_interval(np.stack([r.ranks("t2v") for r in rs]),
                                                    n_boot=n_boot)
        rows.append({"pooling": p, "K": int(k), "n_seeds": len(g),
                     "R1_mean": float(g["R1"].mean()), "R1_std": reporting._std(g["R1"]),
                     "R1_lo": lo, "R1_hi": hi, "mode": g["mode"].iloc[0]})
    summary = pd.DataFrame(rows)
    md = _subregion_markdown(summary, study, seeds)
    if write:
        reporting.write_table(runs, study.tables_dir, "subregion_study", md)
        reporting.write_table(summary, study.tables_dir, "subregion_summary", md)
    return SubregionResult(runs, summary, md)


def _subregion_markdown(summary: pd.DataFrame, study: Study, seeds: Sequence[int]) -> str:
    ks = sorted(summary["K"].unique())
    order = sorted(summary["pooling"].unique(), key=reporting._pooling_sort_key)
    header = ["pooling", *[f"K={k}" for k in ks]]
    rows = []
    for p in order:
        cells = [reporting.POOLING_LABELS.get(p, p)]
        for k in ks:
            s = summary[(summary["pooling"] == p) & (summary["K"] == k)]
            if s.empty:
                cells.append("—")
            else:
                s = s.iloc[0]
                cells.append(f"{s['R1_mean']:.1f} [{s['R1_lo']:.1f}, {s['R1_hi']:.1f}]")
        rows.append(cells)
    notes = [
        f"Text-to-video R@1 (%) on the synthetic benchmark with K scenes per video (captions name "
        f"an in-order proper subset of the scenes when K > 1), mode: {study.effective_mode}.",
        f"Cell: mean over seeds {', '.join(map(str, seeds))} [95% bootstrap interval over test "
        "queries, each query's hit averaged over seeds].",
    ]
    return reporting._markdown("Sub-region study: R@1 against K", header, rows, notes)


# ----------------------------------------------------------------------------------------------
# Records behind the tables (figures notebook 07, explorer 08)


def results_from_table(output_dir: str | Path, table: str) -> list[RunResult]:
    """The finished runs a written table refers to (its `run_id` column), in table order."""
    out = resolve(output_dir)
    df = reporting.read_table(out / "tables", table)
    if "run_id" not in df.columns:
        raise XPoolError(f"table {table} has no run_id column")
    results = []
    for run_id in dict.fromkeys(df["run_id"]):
        record = RunRecord(out / "runs" / run_id)
        if not record.finished:
            raise XPoolError(f"table {table} refers to run {record.run_dir}, which has no finished "
                             f"record: rerun `make reproduce`")
        row = df[df["run_id"] == run_id].iloc[0]
        labels = {k: row[k] for k in ("variant", "K") if k in df.columns}
        results.append(RunResult(record, record.config(), labels))
    return results


# ----------------------------------------------------------------------------------------------
# Qualitative: attention, top-5, frame strips, training curves (notebooks 07, 08)


@dataclass
class RunOutputs:
    """A finished run's saved test embeddings and pooling head: enough to score any test query
    and read X-Pool's attention without the backbone."""

    result: RunResult
    emb: Any  # xpool.evaluate.EvalEmbeddings
    head: Any  # the pooling head, in eval mode

    @property
    def config(self) -> Config:
        return self.result.config

    def scores(self, text_embed: Any) -> np.ndarray:
        """Similarity of one text embedding [D] (or [1, D]) to every test video: [V]."""
        import torch

        from xpool.similarity import similarity_matrix

        t = torch.as_tensor(text_embed, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad():
            return similarity_matrix(self.head, t, self.emb.frame_embeds)[0].float().numpy()

    def attention(self, text_embed: Any, video_index: int) -> np.ndarray | None:
        """X-Pool's attention of a text over one video's frames [F] (None for other heads)."""
        import torch

        if self.config.model.pooling != "xpool":
            return None
        t = torch.as_tensor(text_embed, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad():
            _, attn = self.head(t, self.emb.frame_embeds[video_index : video_index + 1],
                                return_attention=True)
        return attn[0, 0].numpy()

    def top_k(self, text_embed: Any, k: int = 5, gt: int | None = None) -> list[dict[str, Any]]:
        """The k best videos: dicts with index, video_id, score, is_gt (rank order)."""
        s = self.scores(text_embed)
        order = np.argsort(-s, kind="stable")[:k]
        return [{"index": int(i), "video_id": self.emb.video_ids[i], "score": float(s[i]),
                 "is_gt": gt is not None and int(i) == gt} for i in order]


def load_outputs(result: RunResult) -> RunOutputs:
    """Load `test_embeddings.pt` and `pooling_head.pt` of a finished run."""

    from xpool.engine.embed import Embeddings as EvalEmbeddings
    from xpool.model.build import pooling_options
    from xpool.model.pooling import build_pooling

    run_dir = result.record.run_dir
    for name in ("test_embeddings.pt", "pooling_head.pt"):
        if not (run_dir / name).is_file():
            raise XPoolError(f"run {run_dir} has no {name}: rerun it (make reproduce FRESH=1)")
    emb = EvalEmbeddings.load(run_dir / "test_embeddings.pt")
    cfg = result.config
    head = build_pooling(cfg.model.pooling, int(emb.text_embeds.shape[1]), **pooling_options(cfg))
    head.load_state_dict(torch_load(run_dir / "pooling_head.pt", "pooling head"))
    head.eval()
    return RunOutputs(result, emb, head)


def _synthetic_specs(cfg: Config) -> dict[str, Any]:
    from xpool.data.synthetic import build_specs

    key = cfg.fingerprint(["synth"])
    if key not in _SPEC_CACHE:
        _SPEC_CACHE[key] = {s.video_id: s for s in build_specs(cfg.synth)}
    return _SPEC_CACHE[key]


_SPEC_CACHE: dict[str, dict[str, Any]] = {}


def video_frames(cfg: Config, video_id: str, num_frames: int | None = None) -> np.ndarray:
    """The frames the model saw of a test video, uint8 [F, H, W, 3].

    Decoded from the corpus when it is on disk. A synthetic corpus that is not (a fresh clone
    running `make figures`) is re-rendered from its generator, which is deterministic: the same
    pictures up to the H.264 encoding.
    """
    from xpool.data.video import sample_frames, sample_indices

    f = num_frames or cfg.data.num_frames
    path = None
    if cfg.data.corpus == "synthetic":
        path = cfg.data_root / "videos" / f"{video_id}.mp4"
    else:
        from xpool.data.splits import load_split

        path = load_split(cfg, "test").videos.get(video_id)
    if path is not None and Path(path).is_file():
        return sample_frames(path, f, rule=cfg.data.sampling_rule)[0]
    if cfg.data.corpus != "synthetic":
        raise CorpusError(f"video {video_id} is not on disk under {cfg.data_root}")
    from xpool.data.synthetic import render_video

    frames = render_video(_synthetic_specs(cfg)[video_id], cfg.synth)
    return frames[sample_indices(len(frames), f, rule=cfg.data.sampling_rule)]


def named_frames(cfg: Config, video_id: str, caption: str,
                 num_frames: int | None = None) -> np.ndarray | None:
    """For a synthetic video: which sampled frames show a scene the caption names ([F] bool);
    None for real corpora or a caption that is not about this video."""
    if cfg.data.corpus != "synthetic":
        return None
    from xpool.data.synthetic import parse_caption
    from xpool.data.video import sample_indices

    spec = _synthetic_specs(cfg).get(video_id)
    if spec is None:
        return None
    try:
        named = {spec.scenes.index(s) for s in parse_caption(caption)}
    except ValueError:  # free text, or a scene this video does not have
        return None
    total = len(spec.scenes) * cfg.synth.frames_per_scene
    idx = sample_indices(total, num_frames or cfg.data.num_frames, rule=cfg.data.sampling_rule)
    return np.array([int(i) // cfg.synth.frames_per_scene in named for i in idx])


def pick_query(out: RunOutputs) -> int:
    """A representative query for the qualitative figures, by a fixed rule: the first test
    caption (in test order) that names only part of its video and whose video X-Pool ranks
    first; else the first caption naming part of its video; else caption 0."""
    ranks = out.result.ranks("t2v")
    partial = []
    for i, text in enumerate(out.emb.texts):
        vid = out.emb.video_ids[int(out.emb.video_of_text[i])]
        mask = named_frames(out.config, vid, text)
        if mask is not None and not mask.all():
            partial.append(i)
            if ranks[i] == 1:
                return i
    return partial[0] if partial else 0


def attention_mass(out: RunOutputs) -> pd.DataFrame:
    """Per test caption: X-Pool's attention mass on the frames of the scenes it names, against
    the share of those frames (what mean pooling gives them). Synthetic corpora only."""
    rows = []
    for i, text in enumerate(out.emb.texts):
        v = int(out.emb.video_of_text[i])
        mask = named_frames(out.config, out.emb.video_ids[v], text)
        a = out.attention(out.emb.text_embeds[i], v)
        if mask is None or a is None:
            continue
        rows.append({"query": i, "named_scenes_frames": int(mask.sum()),
                     "uniform_share": float(mask.mean()), "attention_mass": float(a[mask].sum()),
                     "argmax_on_named": bool(mask[int(np.argmax(a))])})
    return pd.DataFrame(rows)


def attention_figure(out: RunOutputs, query: int) -> Any:
    """The paper's attention figure for test caption `query`: its video's frames and X-Pool's
    weight on each (frames of the scenes the caption names outlined)."""
    from xpool.reporting import plot_attention

    v = int(out.emb.video_of_text[query])
    vid, text = out.emb.video_ids[v], out.emb.texts[query]
    weights = out.attention(out.emb.text_embeds[query], v)
    if weights is None:
        raise XPoolError(f"run {out.result.record.run_dir.name} is not an X-Pool run")
    return plot_attention(text, video_frames(out.config, vid), weights,
                          highlight=named_frames(out.config, vid, text),
                          title=f"X-Pool attention over the frames of {vid} for the query\n{text!r}")


def top5_figure(out: RunOutputs, query: int | None = None, text_embed: Any = None,
                text: str | None = None, k: int = 5) -> Any:
    """The top-k videos of a test caption (or of any text embedding) as frame strips."""
    from xpool.reporting import plot_top5

    gt = None
    if query is not None:
        text_embed, text = out.emb.text_embeds[query], out.emb.texts[query]
        gt = int(out.emb.video_of_text[query])
    hits = out.top_k(text_embed, k, gt)
    for h in hits:
        h["frames"] = video_frames(out.config, h["video_id"])
    pooling = reporting.POOLING_LABELS.get(out.config.model.pooling, out.config.model.pooling)
    note = "" if gt is None or any(h["is_gt"] for h in hits) else \
        f" (ground truth {out.emb.video_ids[gt]} not in the top {k})"
    return plot_top5(text or "", hits, title=f"{pooling}: top-{k} videos for {text!r}{note}")


def training_curves(results: Sequence[RunResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(loss per step, evaluation R@1 per step) of runs, labelled `<pooling> seed <s>` (or the
    run's variant label)."""
    curves, evals = [], []
    for r in results:
        label = r.labels.get("variant") or reporting.POOLING_LABELS.get(
            r.config.model.pooling, r.config.model.pooling)
        label = f"{label} (seed {r.config.train.seed})"
        for row in r.record.train_log():
            if row.get("loss") not in (None, "", "nan"):
                curves.append({"label": label, "step": int(row["step"]),
                               "loss": float(row["loss"])})
        for e in r.record.evaluations():
            evals.append({"label": label, "step": int(e["step"]), "R1": float(e["t2v"]["R1"])})
    return pd.DataFrame(curves), pd.DataFrame(evals)


class Explorer:
    """Interactive retrieval over a run's test set (notebook 08).

    Test captions are scored from the saved embeddings; free text needs the run's text encoder:
    the fine-tuned checkpoint (`checkpoints/best.pt`, kept locally, not committed) or, in
    frozen-feature mode, the frozen backbone.
    """

    def __init__(self, result: RunResult):
        self.out = load_outputs(result)
        self._model = None

    @property
    def captions(self) -> list[str]:
        return list(self.out.emb.texts)

    def text_encoder_status(self) -> str | None:
        """None when free text can be encoded, else why not."""
        cfg = self.out.config
        if cfg.model.frozen:
            from xpool.engine.pretrain import CHECKPOINT, cache_path

            ckpt = cache_path(cfg) / CHECKPOINT
            if cfg.model.pretrained == "synthetic" and not ckpt.is_file():
                return f"the pretrained tiny CLIP is not at {ckpt} (run make reproduce)"
            return None
        if not self.out.result.record.best_checkpoint.is_file():
            return (f"the run's checkpoint {self.out.result.record.best_checkpoint} is not here "
                    f"(checkpoints are not committed; make reproduce recreates it)")
        return None

    def encode(self, text: str) -> Any:
        """A text embedding [D]: the saved one for a test caption, else the run's encoder."""
        import torch

        if text in self.out.emb.texts:
            return self.out.emb.text_embeds[self.out.emb.texts.index(text)]
        why = self.text_encoder_status()
        if why is not None:
            raise XPoolError(f"cannot encode free text: {why}; pick a test caption instead")
        if self._model is None:
            from xpool.engine.evaluate import pretrained_model as make_model
            from xpool.model.build import load_model_state

            cfg = self.out.config
            if cfg.model.frozen:
                cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, frozen=False))
                self._model = make_model(cfg)
            else:
                self._model = make_model(cfg)
                load_model_state(self._model, self.out.result.record.best_checkpoint)
            self._model.eval()
        with torch.no_grad():
            tokens = self._model.backbone.tokenize([text])
            return self._model.encode_text(tokens)[0].float()

    def vocabulary(self) -> dict[str, tuple[str, ...]] | None:
        """The words the tiny CLIP learned, by kind (synthetic corpus only; else None)."""
        if self.out.config.data.corpus != "synthetic":
            return None
        return synthetic_vocabulary()

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` outside the synthetic vocabulary (empty for real corpora)."""
        if self.vocabulary() is None:
            return []
        known = {w for words in synthetic_vocabulary().values() for p in words
                 for w in p.split()} | CAPTION_GLUE
        return [w for w in _words(text) if w not in known]

    def vocabulary_note(self, text: str) -> str | None:
        """Why a free-text query may not mean what it says to this model, or None."""
        unknown = self.unknown_words(text)
        if not unknown:
            return None
        kinds = "; ".join(f"{kind}: {', '.join(words)}"
                          for kind, words in synthetic_vocabulary().items())
        return (f"the tiny CLIP of this study only learned captions of synthetic scenes "
                f"(\"a large aqua triangle moving down on stripes\"); it has never seen "
                f"{', '.join(repr(w) for w in unknown)}. Its vocabulary: {kinds}.")

    def show(self, text: str, k: int = 5) -> list[Any]:
        """The figures of `labelled_figures`, without their labels."""
        return [fig for _, fig in self.labelled_figures(text, k)]

    def labelled_figures(self, text: str, k: int = 5) -> list[tuple[str, Any]]:
        """(label, figure) for a query: the top-k frame strips and, for X-Pool, the attention
        over the best video's frames (the ground truth's, for a test caption). A free-text query
        with no word of the synthetic vocabulary raises XPoolError naming the vocabulary,
        instead of a top-k that would look confident and mean nothing."""
        figs: list[tuple[str, Any]] = []
        text = text.strip()
        if not text:
            raise XPoolError("empty query: type a caption or pick a test caption")
        content = [w for w in _words(text) if w not in CAPTION_GLUE]
        if text not in self.out.emb.texts and self.vocabulary() is not None \
                and len(self.unknown_words(text)) >= len(content):
            raise XPoolError(f"no word of this query is known: {self.vocabulary_note(text)}")
        if text in self.out.emb.texts:
            q = self.out.emb.texts.index(text)
            figs.append((f"top-{k} videos", top5_figure(self.out, query=q, k=k)))
            if self.out.config.model.pooling == "xpool":
                vid = self.out.emb.video_ids[int(self.out.emb.video_of_text[q])]
                figs.append((f"attention over the frames of {vid} (ground truth)",
                             attention_figure(self.out, q)))
            return figs
        t = self.encode(text)
        figs.append((f"top-{k} videos", top5_figure(self.out, text_embed=t, text=text, k=k)))
        best = self.out.top_k(t, 1)[0]
        a = self.out.attention(t, best["index"])
        if a is not None:
            from xpool.reporting import plot_attention

            figs.append((f"attention over the frames of the best match {best['video_id']}",
                         plot_attention(text, video_frames(self.out.config, best["video_id"]), a,
                                        title=f"attention over the best match {best['video_id']}")))
        return figs


# Words of synthetic captions that name no attribute ("a large ... moving up on dots then ...").
CAPTION_GLUE = frozenset({"a", "an", "moving", "on", "then"})


def synthetic_vocabulary() -> dict[str, tuple[str, ...]]:
    """The synthetic benchmark's attribute words, by kind (what the tiny CLIP can understand)."""
    from xpool.data import synthetic as sy

    return {"shape": tuple(sy.SHAPES), "colour": tuple(sy.COLOURS), "size": tuple(sy.SIZES),
            "motion": tuple(sy.MOTIONS),
            "background": tuple(sy._BACKGROUND_PHRASE[b] for b in sy.BACKGROUNDS)}


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+", text.lower())


def explorer_widget(explorer: Explorer, k: int = 5, query: str | None = None) -> Any:
    """An ipywidgets UI: pick a test caption or type any text and press Enter (or "search"),
    see the top-k videos as frame strips and X-Pool's attention over the frames.

    It opens showing `query` (default: the first caption). The dropdown shows the test caption
    being displayed, or is blank while the output is a typed query; the line above the output
    always names the query that produced it.
    """
    import html

    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import HTML

    captions = explorer.captions[:500]
    query = query or (captions[0] if captions else "")
    # continuous_update=False: the value (and so a search) changes on Enter, not per keystroke.
    box = w.Combobox(options=captions, placeholder="type a query and press Enter, or pick one",
                     ensure_option=False, continuous_update=False,
                     layout=w.Layout(width="80%"), description="query")
    pick = w.Dropdown(options=captions, value=None, description="test caption",
                      layout=w.Layout(width="80%"))
    button = w.Button(description="search", button_style="primary")
    out = w.Output()
    why = explorer.text_encoder_status()
    status = w.HTML("free text: available" if why is None else
                    f"free text: unavailable ({html.escape(why)}); test captions work")
    showing = w.HTML()
    syncing = [False]  # set while one control mirrors the other, so a query runs once

    def run(text: str) -> None:
        text = (text or "").strip()
        syncing[0] = True
        try:
            box.value = text
            pick.value = text if text in captions else None
        finally:
            syncing[0] = False
        showing.value = f"showing: <b>{html.escape(text)}</b>"
        # Outputs are set on the widget's state, not captured with `with out:`: capturing while
        # the cell that builds the widget runs made headless (papermill) runs hang now and then.
        out.outputs = ()
        try:
            note = None if text in captions else explorer.vocabulary_note(text)
            if note:
                out.append_stdout(f"note: {note}\n")
            for label, fig in explorer.labelled_figures(text, k=k):
                out.append_display_data(
                    HTML(f'<div class="xpool-figure-label">{html.escape(label)}</div>'))
                out.append_display_data(fig)
                plt.close(fig)
        except XPoolError as e:
            out.append_stdout(f"error: {e}\n")

    def on_pick(change: dict[str, Any]) -> None:
        if not syncing[0] and change["new"] is not None:
            run(change["new"])

    def on_box(change: dict[str, Any]) -> None:
        if not syncing[0] and change["new"].strip():
            run(change["new"])

    button.on_click(lambda _: run(box.value or pick.value or ""))
    pick.observe(on_pick, names="value")
    box.observe(on_box, names="value")
    if query:
        run(query)
    return w.VBox([pick, w.HBox([box, button]), status, showing, out])


def render_figures(output_dir: str | Path, data_root: str | None = None,
                   seed: int | None = None, log: Any = print) -> dict[str, Path]:
    """Every figure of the study from saved runs and tables (no training): attention weights,
    top-5 retrieval and training curves from the pooling ablation's runs of one seed (default:
    the first), the ablation plot, and the sub-region plot when that study ran. Also writes
    `tables/attention_mass.*` for synthetic corpora. Returns name -> path."""
    out = resolve(output_dir)
    figs = out / "figures"
    paths: dict[str, Path] = {}
    abl = results_from_table(out, "pooling_ablation")
    if data_root is not None:
        for r in abl:
            r.config = dataclasses.replace(r.config, data=dataclasses.replace(r.config.data,
                                                                              root=data_root))
    seeds = sorted({r.config.train.seed for r in abl})
    s = seeds[0] if seed is None else int(seed)
    xr = [r for r in abl if r.config.model.pooling == "xpool" and r.config.train.seed == s]
    if not xr:
        raise XPoolError(f"no X-Pool run with seed {s} in the pooling ablation (seeds {seeds})")
    o = load_outputs(xr[0])
    q = pick_query(o)
    log(f"qualitative figures: run {xr[0].record.run_dir.name}, test query {q}: "
        f"{o.emb.texts[q]!r}")
    paths["attention_weights"] = reporting.save_figure(attention_figure(o, q),
                                                       figs / "attention_weights.png")
    paths["top5_retrieval"] = reporting.save_figure(top5_figure(o, q), figs / "top5_retrieval.png")
    mass = attention_mass(o)
    if not mass.empty:
        summary = pd.DataFrame([{
            "run_id": xr[0].record.run_dir.name, "queries": len(mass),
            "mean_attention_on_named_frames": mass["attention_mass"].mean(),
            "mean_share_of_named_frames": mass["uniform_share"].mean(),
            "argmax_frame_named": mass["argmax_on_named"].mean(),
        }])
        reporting.write_table(summary, out / "tables", "attention_mass", reporting.frame_markdown(
            summary, "X-Pool attention on the frames of the scenes a caption names",
            ["mean_share_of_named_frames is what uniform (mean) pooling would put there; "
             "argmax_frame_named: share of test captions whose most-attended frame shows a "
             "scene the caption names."], digits=3))
    curves, evals = training_curves([r for r in abl if r.config.train.seed == s])
    paths["training_curves"] = reporting.save_figure(
        reporting.plot_training_curves(curves, evals, f"training, seed {s}"),
        figs / "training_curves.png")
    runs = reporting.read_table(out / "tables", "pooling_ablation")
    boot = reporting.read_table(out / "tables", "pooling_bootstrap")
    paths["pooling_ablation"] = reporting.save_figure(
        reporting.plot_pooling_ablation(runs, boot[boot["direction"] == "t2v"],
                                        "pooling ablation (text-to-video)"),
        figs / "pooling_ablation.png")
    if (out / "tables" / "subregion_summary.csv").is_file():
        paths["subregion_r1_vs_k"] = reporting.save_figure(
            reporting.plot_subregion(reporting.read_table(out / "tables", "subregion_summary"),
                                     reporting.read_table(out / "tables", "subregion_study"),
                                     "text-to-video R@1 against K, scenes per video"),
            figs / "subregion_r1_vs_k.png")
    else:
        log("no sub-region study in this profile (it needs the synthetic benchmark): skipped")
    import matplotlib.pyplot as plt

    plt.close("all")
    return paths


def explorer_for(output_dir: str | Path, pooling: str = "xpool", seed: int | None = None,
                 data_root: str | None = None) -> Explorer:
    """An Explorer over the pooling ablation's run of `pooling` (first seed by default)."""
    abl = [r for r in results_from_table(output_dir, "pooling_ablation")
           if r.config.model.pooling == pooling]
    if not abl:
        raise XPoolError(f"no {pooling} run in the pooling ablation of {output_dir}")
    if seed is not None:
        abl = [r for r in abl if r.config.train.seed == int(seed)]
        if not abl:
            raise XPoolError(f"no {pooling} run with seed {seed} in {output_dir}")
    r = abl[0]
    if data_root is not None:
        r.config = dataclasses.replace(r.config, data=dataclasses.replace(r.config.data,
                                                                          root=data_root))
    return Explorer(r)
