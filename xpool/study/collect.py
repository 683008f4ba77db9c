"""Finished runs as data: run records to DataFrames of metrics, per-query ranks, saved test
embeddings with their pooling head, and training curves. Nothing here trains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xpool import reporting
from xpool.config import RESULT_DIRECTIONS, Config, dataset_key
from xpool.engine.embed import Embeddings
from xpool.engine.runs import RunRecord
from xpool.errors import XPoolError
from xpool.exact_gemm import gemm_mode
from xpool.io import read_json, torch_load
from xpool.model.build import pooling_options
from xpool.model.pooling import build_pooling
from xpool.paths import resolve
from xpool.similarity import similarity_matrix


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


@dataclass
class RunOutputs:
    """A finished run's saved test embeddings and pooling head: enough to score any test query
    and read X-Pool's attention without the backbone."""

    result: RunResult
    emb: Embeddings
    head: torch.nn.Module  # the pooling head, in eval mode

    @property
    def config(self) -> Config:
        return self.result.config

    def scores(self, text_embed: Any) -> np.ndarray:
        """Similarity of one text embedding [D] (or [1, D]) to every test video: [V]."""
        t = torch.as_tensor(text_embed, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad(), gemm_mode(self.config.model.gemm):
            return similarity_matrix(self.head, t, self.emb.frame_embeds)[0].float().numpy()

    def attention(self, text_embed: Any, video_index: int) -> np.ndarray | None:
        """X-Pool's attention of a text over one video's frames [F] (None for other heads)."""
        if self.config.model.pooling != "xpool":
            return None
        t = torch.as_tensor(text_embed, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad(), gemm_mode(self.config.model.gemm):
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
    run_dir = result.record.run_dir
    for name in ("test_embeddings.pt", "pooling_head.pt"):
        if not (run_dir / name).is_file():
            raise XPoolError(f"run {run_dir} has no {name}: rerun it (make reproduce FRESH=1)")
    emb = Embeddings.load(run_dir / "test_embeddings.pt")
    cfg = result.config
    head = build_pooling(cfg.model.pooling, int(emb.text_embeds.shape[1]), **pooling_options(cfg))
    head.load_state_dict(torch_load(run_dir / "pooling_head.pt", "pooling head"))
    head.eval()
    return RunOutputs(result, emb, head)


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
