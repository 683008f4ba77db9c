"""Embedding a split with the CLIP towers: every caption and every video once.

`Embeddings` is what scoring needs and what the frozen-feature cache stores: the same five fields
(float32 when computed or loaded for scoring; fp16 in the cache and in a run's saved test
embeddings). A video that fails to decode here raises: metrics over a silently shrunk test set
would not be comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.datasets import EvalSet, VideoClipDataset
from xpool.data.frame_cache import FrameCache
from xpool.data.splits import load_split
from xpool.data.transforms import transform_for
from xpool.errors import FileReadError
from xpool.io import torch_load, torch_save
from xpool.model.backbone import ClipBackbone
from xpool.paths import resolve

__all__ = ["Embeddings", "embed_split", "embed_texts", "embed_videos", "frame_cache"]

_FIELDS = ("text_embeds", "frame_embeds", "video_of_text", "video_ids", "texts")


@dataclass
class Embeddings:
    """Every caption's and video's raw embeddings of a split, and the caption -> video map."""

    text_embeds: torch.Tensor  # [T, D]
    frame_embeds: torch.Tensor  # [V, F, D]
    video_of_text: np.ndarray  # [T], index into video_ids
    video_ids: list[str]
    texts: list[str]

    @property
    def dim(self) -> int:
        """The embedding width D."""
        return int(self.text_embeds.shape[1])

    def to(self, dtype: torch.dtype) -> Embeddings:
        """The same embeddings with both tensors in `dtype` (scoring takes float32)."""
        return Embeddings(self.text_embeds.to(dtype), self.frame_embeds.to(dtype),
                          self.video_of_text, self.video_ids, self.texts)

    def save(self, path: Path) -> None:
        """Write them in fp16 (a run's `test_embeddings.pt`)."""
        torch_save({"text_embeds": self.text_embeds.half(),
                    "frame_embeds": self.frame_embeds.half(),
                    "video_of_text": torch.from_numpy(self.video_of_text),
                    "video_ids": self.video_ids,
                    "texts": self.texts}, path)

    @classmethod
    def load(cls, path: Path) -> Embeddings:
        """Read what `save` wrote, as float32 (tensors and lists only: nothing else is
        unpickled)."""
        path = Path(path)
        d = torch_load(path, "test embeddings", f"retrain the run in {path.parent} "
                       f"(`xpool train PROFILE ... --fresh`) to rewrite them")
        if not isinstance(d, dict) or any(k not in d for k in _FIELDS):
            raise FileReadError(f"{path} is not a test-embeddings file (needs {list(_FIELDS)}); "
                                f"retrain the run in {path.parent} to rewrite it")
        return cls(d["text_embeds"].float(), d["frame_embeds"].float(), d["video_of_text"].numpy(),
                   list(d["video_ids"]), list(d["texts"]))


@torch.no_grad()
def embed_texts(backbone: ClipBackbone, texts: list[str], batch_size: int, device: torch.device,
                progress: bool = False) -> torch.Tensor:
    """Text embeddings [T, D] (float32, on the CPU) in batches."""
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc="embed captions", disable=not progress,
                  leave=False):
        tokens = backbone.tokenize(texts[i : i + batch_size]).to(device)
        out.append(backbone.encode_text(tokens).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_videos(backbone: ClipBackbone, dataset: Dataset, batch_size: int, device: torch.device,
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
        out.append(backbone.encode_frames(frames.to(device)).float().cpu())
    return torch.cat(out)


def frame_cache(cfg: Config, size: int) -> FrameCache | None:
    """The corpus's decoded-frame cache at `size` px when `data.frame_cache` is on."""
    if not cfg.data.frame_cache:
        return None
    return FrameCache(resolve("cache") / "frames" / cfg.data.corpus, cfg.data.num_frames, size)


def embed_split(cfg: Config, backbone: ClipBackbone, split: str, device: torch.device,
                progress: bool = True,
                video_range: tuple[int, int] | None = None) -> Embeddings:
    """Embed every video (test transform, uniform frames) and caption of `split` (float32).

    video_range: (start, stop) embeds only those videos (a rank's shard of the gallery, in
    `video_ids` order); `frame_embeds` then holds just them, while `video_ids` and
    `video_of_text` still describe the whole split."""
    corpus = load_split(cfg, split)
    es = EvalSet(corpus)
    start, stop = video_range or (0, len(es.video_ids))
    transform = transform_for(backbone, train=False, antialias=cfg.data.antialias)
    clips = VideoClipDataset([corpus.videos[v] for v in es.video_ids[start:stop]], transform,
                             cfg.data.num_frames, frame_cache=frame_cache(cfg, backbone.image_size),
                             rule=cfg.data.sampling_rule)
    frames = embed_videos(backbone, clips, cfg.eval.batch_size, device, cfg.data.num_workers,
                          progress)
    texts = embed_texts(backbone, es.texts, cfg.eval.batch_size, device, progress)
    return Embeddings(texts, frames, es.video_of_text, list(es.video_ids), list(es.texts))
