"""Evaluation: embed every test video and caption once, then exact similarities and metrics.

A failing video during evaluation is an error, never skipped: metrics over a silently shrunk
test set would not be comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xpool.config import RESULT_DIRECTIONS, Config, EvalConfig
from xpool.data.corpora import load_corpus
from xpool.data.datasets import EvalSet, VideoClipDataset
from xpool.data.splits import ensure_data, load_split
from xpool.data.transforms import transform_for
from xpool.engine.distributed import cleanup_distributed, init_distributed
from xpool.engine.embed import Embeddings, embed_split, embed_texts, embed_videos
from xpool.engine.features import feature_dim, load_features
from xpool.engine.pretrain import resolve_pretrained
from xpool.engine.setup import pick_device
from xpool.errors import ConfigError, XPoolError
from xpool.exact_gemm import gemm_mode
from xpool.metrics import (
    dual_softmax,
    t2v_metrics,
    t2v_ranks,
    v2t_metrics,
    v2t_ranks,
)
from xpool.model.backbone import build_backbone
from xpool.model.build import build_model, load_model_state, needs_pretrained
from xpool.model.pooling import build_pooling
from xpool.model.retrieval import RetrievalModel
from xpool.sharded import shard_range, sharded_retrieval_metrics
from xpool.similarity import similarity_matrix

__all__ = ["build_eval_embeddings", "evaluate_checkpoint", "evaluate_checkpoint_sharded",
           "evaluate_frozen_mean_pool", "pretrained_model", "result_metrics", "score"]

def score(pooling: torch.nn.Module, emb: Embeddings, cfg: EvalConfig,
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


def result_metrics(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The metric entries of a `score` result (direction -> metric -> value; the DSL ones only
    when eval.dsl is on)."""
    return {k: result[k] for k in RESULT_DIRECTIONS if k in result}


def build_eval_embeddings(cfg: Config, model: RetrievalModel, split: str, device: torch.device,
                          progress: bool = True,
                          video_range: tuple[int, int] | None = None) -> Embeddings:
    """Embed every video and caption of `split` (from the feature cache in frozen mode); float32.

    video_range: (start, stop) keeps only those videos' frames (`embed_split`'s argument; the
    cached features are sliced)."""
    if cfg.model.frozen:
        emb = load_features(cfg, split).to(torch.float32)
        if video_range is not None:
            emb.frame_embeds = emb.frame_embeds[video_range[0]:video_range[1]]
        return emb
    model.eval()
    return embed_split(cfg, model.backbone, split, device, progress, video_range)


def pretrained_model(cfg: Config) -> RetrievalModel:
    """The model of `cfg` on its pretrained backbone weights, resolved first and explicitly:
    with `model.pretrained: synthetic` that trains the tiny CLIP when it is not cached yet. In
    frozen-feature mode the width comes from the cached features of the training split."""
    pretrained = resolve_pretrained(cfg) if needs_pretrained(cfg) else None
    embed_dim = feature_dim(cfg) if cfg.model.frozen else None
    return build_model(cfg, pretrained, embed_dim=embed_dim)


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, split: str = "test",
                        progress: bool = True) -> dict[str, dict[str, float]]:
    """Load a checkpoint (a run's `best.pt` or `last.pt`) and evaluate it on `split`."""
    ensure_data(cfg, progress)
    device = pick_device()
    model = pretrained_model(cfg).to(device)
    load_model_state(model, checkpoint, cfg)
    with gemm_mode(cfg.model.gemm):
        emb = build_eval_embeddings(cfg, model, split, device, progress=progress)
        return result_metrics(score(model.pooling, emb, cfg.eval, device))


def evaluate_checkpoint_sharded(cfg: Config, checkpoint: str | Path, split: str = "test",
                                progress: bool = True) -> dict[str, dict[str, float]]:
    """`evaluate_checkpoint` with the gallery split over the torchrun processes (one process
    without torchrun): each rank embeds the captions and only its own videos (frozen mode: loads
    the cached features and keeps its slice) and `xpool.sharded` computes the exact metrics
    without any rank holding the [T, V] matrix. Raw similarities only: DSL re-scoring normalises
    over whole rows and columns, which a shard does not have."""
    if cfg.eval.v2t_convention != "captions":
        raise ConfigError(f"sharded evaluation ranks each video among individual captions "
                          f"(eval.v2t_convention: captions), got {cfg.eval.v2t_convention!r}; "
                          f"evaluate without --sharded for the 'groups' convention")
    ensure_data(cfg, progress)
    device = pick_device()
    info = init_distributed(device)
    try:
        model = pretrained_model(cfg).to(device)
        load_model_state(model, checkpoint, cfg)
        model.eval()
        num_videos = len(EvalSet(load_split(cfg, split)).video_ids)
        shard = shard_range(num_videos, info.world_size, info.rank)
        with gemm_mode(cfg.model.gemm), torch.no_grad():
            emb = build_eval_embeddings(cfg, model, split, device, progress and info.is_main,
                                        video_range=shard)
            if len(emb.video_ids) != num_videos:
                raise XPoolError(f"the {split} features hold {len(emb.video_ids)} videos, the "
                                 f"split {num_videos}: re-extract them (xpool extract-features)")
            return sharded_retrieval_metrics(
                model.pooling, emb.text_embeds.to(device), emb.frame_embeds.to(device),
                emb.video_of_text, shard, num_videos, chunk_size=cfg.eval.chunk_size)
    finally:
        cleanup_distributed()


@torch.no_grad()
def evaluate_frozen_mean_pool(
    config: Config, checkpoint: str | Path, num_frames: int = 8, batch_size: int = 32
) -> dict[str, float]:
    """Sanity check of the benchmark: text-to-video retrieval on the synthetic test split with
    the frozen pretrained tiny CLIP and mean pooling (uniform frames, L2-normalized frame
    embeddings averaged, cosine against the text embeddings). No training involved.
    """
    corpus = load_corpus("synthetic", config.data_root, "test")
    es = EvalSet(corpus)
    backbone = build_backbone(config.model.backbone, pretrained=str(checkpoint)).eval()
    clips = VideoClipDataset(es.paths, transform_for(backbone, train=False), num_frames)
    cpu = torch.device("cpu")
    with gemm_mode(config.model.gemm):
        frames = embed_videos(backbone, clips, batch_size, cpu)
        # Every caption in one batch, as this check has always encoded them.
        texts = embed_texts(backbone, es.texts, max(1, len(es.texts)), cpu)
        emb = Embeddings(texts, frames, es.video_of_text, list(es.video_ids), list(es.texts))
        result = score(build_pooling("mean", backbone.embed_dim), emb, EvalConfig(dsl=False),
                       cpu)
    out = dict(result["t2v"])
    out["chance_R1"] = 100.0 / len(es.video_ids)
    out["scenes"] = config.synth.scenes
    return out
