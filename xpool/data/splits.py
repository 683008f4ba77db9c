"""The corpus of each split a config uses, and which split a run evaluates on.

MSR-VTT and the synthetic corpus have no validation split: `val` is `data.val_videos` training
videos held out with a fixed seed and removed from `train`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpool.config import Config
from xpool.data.corpora import Corpus, load_corpus
from xpool.data.synthetic import ensure_corpus
from xpool.errors import XPoolError

__all__ = ["ensure_data", "eval_split", "load_split"]


def ensure_data(cfg: Config, progress: bool = True) -> None:
    """Generate the synthetic corpus when the config uses it (cached; real corpora are
    downloaded explicitly with `xpool download`)."""
    if cfg.data.corpus == "synthetic" and cfg.data.root is None:
        ensure_corpus(cfg, progress=progress)


def eval_split(cfg: Config) -> str:
    """The split evaluated during training, to choose the checkpoint: `val` under
    `train.selection: val`, else `test` (the authors' protocol)."""
    return "val" if cfg.train.selection == "val" else "test"


def load_split(cfg: Config, split: str) -> Corpus:
    """The corpus of a split. For corpora without a validation split (MSR-VTT, synthetic),
    `val` is `data.val_videos` training videos held out (fixed seed) and removed from `train`."""
    native_val = cfg.data.corpus in ("msvd", "lsmdc")
    kwargs: dict[str, Any] = {"missing": cfg.data.missing, "videos_dir": cfg.data.videos_dir}
    if cfg.data.corpus == "lsmdc":
        kwargs["captions"] = cfg.data.lsmdc_captions
    if cfg.data.corpus in ("msrvtt", "synthetic"):
        kwargs["train_list"] = cfg.data.train_list
    if split == "val" and native_val:
        return load_corpus(cfg.data.corpus, cfg.data_root, "val", **kwargs)
    if split not in ("val", "train"):
        return load_corpus(cfg.data.corpus, cfg.data_root, split, **kwargs)
    train = load_corpus(cfg.data.corpus, cfg.data_root, "train", **kwargs)
    if native_val or cfg.data.val_videos == 0:
        if split == "val":
            raise XPoolError(
                f"{cfg.data.corpus} has no validation split: set data.val_videos=N to hold out N "
                f"training videos for selection: val"
            )
        return train
    ids = train.video_ids
    if cfg.data.val_videos >= len(ids):
        raise XPoolError(f"data.val_videos={cfg.data.val_videos} >= {len(ids)} training videos")
    held = set(np.random.default_rng(0).choice(ids, cfg.data.val_videos, replace=False).tolist())
    keep = [v for v in ids if (v in held) == (split == "val")]
    return train.subset(keep)
