"""Evaluation: embed every test video and caption once, then exact similarities and metrics.

A failing video during evaluation is an error, never skipped: metrics over a silently shrunk
test set would not be comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xpool.config import Config, EvalConfig
from xpool.metrics import dual_softmax, t2v_metrics, t2v_ranks, v2t_metrics, v2t_ranks
from xpool.model.retrieval import RetrievalModel
from xpool.similarity import similarity_matrix


@dataclass
class EvalEmbeddings:
    """Everything needed to score a split: raw embeddings and the caption -> video map."""

    text_embeds: torch.Tensor  # [T, D]
    frame_embeds: torch.Tensor  # [V, F, D]
    video_of_text: np.ndarray  # [T]
    video_ids: list[str]
    texts: list[str]

    def save(self, path: Path) -> None:
        from xpool.io import torch_save

        torch_save(
            {
                "text_embeds": self.text_embeds.half(),
                "frame_embeds": self.frame_embeds.half(),
                "video_of_text": torch.from_numpy(self.video_of_text),
                "video_ids": self.video_ids,
                "texts": self.texts,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> EvalEmbeddings:
        """Read what `save` wrote (tensors and lists only: nothing else is unpickled)."""
        from xpool.io import torch_load

        path = Path(path)
        d = torch_load(path, "test embeddings", f"retrain the run in {path.parent} "
                       f"(`xpool train PROFILE ... --fresh`) to rewrite them")
        need = ("text_embeds", "frame_embeds", "video_of_text", "video_ids", "texts")
        if not isinstance(d, dict) or any(k not in d for k in need):
            from xpool.errors import FileReadError

            raise FileReadError(f"{path} is not a test-embeddings file (needs {list(need)}); "
                                f"retrain the run in {path.parent} to rewrite it")
        return cls(
            d["text_embeds"].float(),
            d["frame_embeds"].float(),
            d["video_of_text"].numpy(),
            list(d["video_ids"]),
            list(d["texts"]),
        )


@torch.no_grad()
def embed_texts(model: RetrievalModel, texts: list[str], batch_size: int, device: torch.device,
                progress: bool = False) -> torch.Tensor:
    """Text embeddings [T, D] (float32, on the CPU) in batches."""
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc="embed captions", disable=not progress,
                  leave=False):
        tokens = model.backbone.tokenize(texts[i : i + batch_size]).to(device)
        out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_videos(model: RetrievalModel, dataset, batch_size: int, device: torch.device,
                 num_workers: int = 0, progress: bool = False) -> torch.Tensor:
    """Frame embeddings [V, F, D] (float32, on the CPU) for every clip of `dataset`."""
    # Its own generator: evaluation must not advance the global RNG that dropout draws from,
    # or runs that evaluate (rank 0, uninterrupted) and runs that don't would drift apart.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    out = []
    for frames in tqdm(loader, desc="embed videos", disable=not progress, leave=False):
        if isinstance(frames, dict):
            frames = frames["frames"]
        out.append(model.encode_frames(frames.to(device)).float().cpu())
    return torch.cat(out)


def score(pooling: torch.nn.Module, emb: EvalEmbeddings, cfg: EvalConfig,
          device: torch.device | None = None) -> dict[str, Any]:
    """Metrics of both directions (plus DSL re-scoring in separate entries) and per-query ranks."""
    was_training = pooling.training
    pooling.eval()
    try:
        dev = device or next(pooling.parameters(), torch.empty(0)).device
        sims = similarity_matrix(pooling, emb.text_embeds.to(dev), emb.frame_embeds.to(dev),
                                 chunk_size=cfg.chunk_size).float().cpu()
    finally:
        pooling.train(was_training)
    result: dict[str, Any] = {
        "t2v": t2v_metrics(sims, emb.video_of_text),
        "v2t": v2t_metrics(sims, emb.video_of_text, cfg.v2t_convention),
        "ranks": {
            "t2v": t2v_ranks(sims, emb.video_of_text).tolist(),
            "v2t": v2t_ranks(sims, emb.video_of_text, cfg.v2t_convention).tolist(),
        },
        "num_texts": int(sims.shape[0]),
        "num_videos": int(sims.shape[1]),
        "v2t_convention": cfg.v2t_convention,
    }
    if cfg.dsl:
        t2v_dsl = dual_softmax(sims, cfg.dsl_temperature, "t2v")
        v2t_dsl = dual_softmax(sims, cfg.dsl_temperature, "v2t")
        result["t2v_dsl"] = t2v_metrics(t2v_dsl, emb.video_of_text)
        result["v2t_dsl"] = v2t_metrics(v2t_dsl, emb.video_of_text, cfg.v2t_convention)
    return result


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Config sections that decide a model's architecture or what its weights mean.
MODEL_SECTIONS = ("model.", "data.num_frames")


def checkpoint_mismatch(path: str | Path, stored: Any, cause: BaseException,
                        cfg: Config | None = None) -> str:
    """Why a checkpoint's weights do not fit the model of the current config: the config keys
    that differ between the config stored with the checkpoint and `cfg`."""
    first = str(cause).splitlines()[0][:200]
    if not isinstance(stored, dict):
        return (f"checkpoint {path} does not fit the model of this config ({first}) and stores "
                f"no config to compare; pass the profile and overrides it was trained with")
    if cfg is None:
        return f"checkpoint {path} does not fit the model of this config ({first})"
    mine, theirs = _flatten(cfg.to_dict()), _flatten(stored)
    keys = sorted(k for k in set(mine) | set(theirs)
                  if k.startswith(MODEL_SECTIONS) and mine.get(k) != theirs.get(k))
    if not keys:
        return (f"checkpoint {path} does not fit the model of this config ({first}), although "
                f"the model settings stored with it are the same")
    diffs = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, config {mine.get(k)!r}" for k in keys)
    overrides = " ".join(f"{k}={theirs.get(k)}" for k in keys if k in theirs)
    return (f"checkpoint {path} was trained with a different model config; differing keys: "
            f"{diffs}. Evaluate it with those overrides (e.g. `xpool eval "
            f"{stored.get('profile', 'PROFILE')} {overrides} --checkpoint {path}`)")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, split: str = "test",
                        progress: bool = True) -> dict[str, dict[str, float]]:
    """Load a checkpoint (a run's `best.pt` or `last.pt`) and evaluate it on `split`."""
    from xpool.train import (
        build_eval_embeddings,
        ensure_data,
        load_model_state,
        make_model,
        pick_device,
    )

    ensure_data(cfg, progress)
    device = pick_device()
    model = make_model(cfg).to(device)
    load_model_state(model, checkpoint, cfg)
    emb = build_eval_embeddings(cfg, model, split, device, progress=progress)
    result = score(model.pooling, emb, cfg.eval, device)
    return {k: v for k, v in result.items() if k in ("t2v", "v2t", "t2v_dsl", "v2t_dsl")}
