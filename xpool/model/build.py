"""The one constructor of a retrieval model from a config, and loading a run's checkpoint into it.

`build_model(cfg, pretrained)` takes the backbone weights already resolved: it never pretrains
or downloads anything on its own behalf beyond what `build_backbone` does for the value it is
given. `model.pretrained: synthetic` names the in-study tiny CLIP, which the engine trains or
finds in its cache (`xpool.engine.pretrain.resolve_pretrained`) before calling this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xpool.config import Config
from xpool.errors import ConfigError, XPoolError
from xpool.io import torch_load
from xpool.model.backbone import build_backbone
from xpool.model.pooling import build_pooling
from xpool.model.retrieval import RetrievalModel

__all__ = ["MODEL_SECTIONS", "build_model", "checkpoint_mismatch", "load_model_state",
           "needs_pretrained", "pooling_options"]

# Config sections that decide a model's architecture or what its weights mean.
MODEL_SECTIONS = ("model.", "data.num_frames")


def pooling_options(cfg: Config) -> dict[str, Any]:
    """The options `build_pooling` takes for the configured head."""
    m = cfg.model
    return {
        "mean": {},
        # 77 positions, CLIP's text context, as CLIP4Clip's frame_position_embeddings.
        "self_attention": {"num_layers": m.sa_layers, "num_heads": m.sa_heads,
                           "max_frames": max(77, cfg.data.num_frames)},
        "topk": {"k": m.topk},
        "attention": {"temperature": m.attention_temperature},
        "xpool": {"num_heads": m.num_heads, "dropout": m.dropout, "residual": m.residual},
    }[m.pooling]


def _init_from_clip_text(cfg: Config) -> bool:
    return cfg.model.pooling == "self_attention" and cfg.model.sa_init == "clip_text"


def needs_pretrained(cfg: Config) -> bool:
    """Whether building the model of `cfg` reads backbone weights: always with a backbone; in
    frozen-feature mode only for a self-attention head initialised from CLIP's text layers."""
    return not cfg.model.frozen or _init_from_clip_text(cfg)


def build_model(cfg: Config, pretrained: str | None, embed_dim: int | None = None,
                quick_gelu: bool | None = None) -> RetrievalModel:
    """Backbone + pooling head of `cfg` (backbone-free in frozen-feature mode).

    pretrained: the resolved backbone weights, what `build_backbone(pretrained=)` takes (never
    the unresolved `synthetic`). embed_dim: the feature width, required in frozen-feature mode.
    quick_gelu: passed to `build_backbone` (None decides from the weights).
    """
    if pretrained == "synthetic":
        raise ConfigError("build_model needs the pretrained weights resolved: pass "
                          "xpool.engine.pretrain.resolve_pretrained(cfg), not 'synthetic'")
    # The order of construction is part of the result: each module draws its initial weights
    # from torch's global RNG, so the head comes first in frozen mode, the backbone first else.
    if cfg.model.frozen:
        if embed_dim is None:
            raise XPoolError("frozen-feature mode needs embed_dim (the cached features' width)")
        pooling = build_pooling(cfg.model.pooling, embed_dim, **pooling_options(cfg))
        if _init_from_clip_text(cfg):
            # Frozen mode has no backbone in the model; build it once to read its text layers.
            clip = build_backbone(cfg.model.backbone, pretrained=pretrained, quick_gelu=quick_gelu)
            pooling.init_from_clip_text(clip.model)
        return RetrievalModel(None, pooling, embed_dim=embed_dim)
    backbone = build_backbone(cfg.model.backbone, pretrained=pretrained, quick_gelu=quick_gelu)
    pooling = build_pooling(cfg.model.pooling, backbone.embed_dim, **pooling_options(cfg))
    if _init_from_clip_text(cfg):
        pooling.init_from_clip_text(backbone.model)
    return RetrievalModel(backbone, pooling)


def load_model_state(model: RetrievalModel, path: str | Path,
                     cfg: Config | None = None) -> dict[str, Any]:
    """Load a run checkpoint (`best.pt`, `last.pt`) into `model`; returns the checkpoint.

    Weights that do not fit `model` raise an XPoolError naming the config keys (model section)
    in which the checkpoint's stored config differs from `cfg`."""
    path = Path(path)
    ckpt = torch_load(path, "checkpoint", "pass the best.pt or last.pt of a run, or retrain the "
                      "run (`xpool train PROFILE ... --fresh`)")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise XPoolError(f"checkpoint {path} is not an xpool run checkpoint (no 'model' state "
                         f"dict); pass the best.pt or last.pt of a run")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise XPoolError(checkpoint_mismatch(path, ckpt.get("config"), e, cfg)) from None
    return ckpt


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


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
