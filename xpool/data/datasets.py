"""Torch datasets: training pairs, evaluation sets and a plain video-clip dataset.

Training (`TrainDataset`): one item per caption, i.e. per (video, caption) pair, like the authors.
A video that fails to decode does not stop training: its item carries ``"error"`` instead of
frames, `collate_train` leaves it out of the batch and lists it under ``batch["skipped"]`` so the
training loop can count and report it. A batch therefore never contains garbage.

Randomness (frame sampling and crops/flips) is a pure function of (seed, epoch, index): call
``set_epoch(epoch)`` before iterating an epoch. The epoch lives in shared memory, so it reaches
DataLoader workers, persistent ones included; resuming at any epoch reproduces its batches exactly.

Evaluation (`EvalSet`, `VideoClipDataset`): all videos of a split and all captions with the
caption -> video mapping. A video that fails to decode here raises: metrics over a silently
shrunk test set would be wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xpool.data.corpora import Corpus
from xpool.data.frame_cache import FrameCache
from xpool.data.transforms import VideoTransform
from xpool.data.video import SAMPLING_MODES, SAMPLING_RULES, sample_frames
from xpool.errors import VideoDecodeError

__all__ = ["TrainDataset", "collate_train", "EvalSet", "VideoClipDataset"]

_log = logging.getLogger(__name__)
_warned_videos: set[str] = set()  # per process: warn once per broken video, not once per caption


def _tokens_of(tokenize: Callable[[list[str]], torch.Tensor], text: str) -> torch.Tensor:
    tokens = torch.as_tensor(tokenize([text]))
    if tokens.ndim == 2:
        tokens = tokens[0]
    return tokens.long()


class TrainDataset(Dataset):
    """(frames, caption tokens) pairs, one per caption of ``corpus``."""

    def __init__(
        self,
        corpus: Corpus,
        tokenize: Callable[[list[str]], torch.Tensor],
        transform: VideoTransform,
        num_frames: int,
        sampling: str = "uniform",
        frame_cache: FrameCache | None = None,
        seed: int = 0,
        rule: str = "authors",
    ) -> None:
        if rule not in SAMPLING_RULES:
            raise ValueError(f"rule must be one of {SAMPLING_RULES}, got {rule!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if frame_cache is not None and frame_cache.num_frames != num_frames:
            raise ValueError(
                f"frame cache holds {frame_cache.num_frames} frames per video, dataset wants {num_frames}"
            )
        if frame_cache is not None and sampling != "uniform":
            _log.warning("frame cache stores uniformly sampled frames: sampling=%r is not applied", sampling)
        self.corpus_name = corpus.name
        self.captions = list(corpus.captions)
        self.videos = dict(corpus.videos)
        self.tokenize = tokenize
        self.transform = transform
        self.num_frames = int(num_frames)
        self.sampling = sampling
        self.rule = rule
        self.frame_cache = frame_cache
        self.seed = int(seed)
        # Shared memory so that set_epoch() reaches (persistent) DataLoader worker processes.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random frame sampling and crops the next items use."""
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        """The generator for item ``index`` in the current epoch: depends on (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        caption = self.captions[index]
        path = self.videos[caption.video_id]
        rng = self.rng(index)
        try:
            if self.frame_cache is not None:
                frames = self.frame_cache.get(path)
            else:
                frames, _ = sample_frames(path, self.num_frames, mode=self.sampling, rng=rng,
                                          rule=self.rule)
        except VideoDecodeError as exc:
            if caption.video_id not in _warned_videos:
                _warned_videos.add(caption.video_id)
                _log.warning("skipping video %s: %s", caption.video_id, exc)
            return {"error": str(exc), "video_id": caption.video_id, "index": int(index)}
        return {
            "frames": self.transform(frames, rng),
            "tokens": _tokens_of(self.tokenize, caption.text),
            "text": caption.text,
            "video_id": caption.video_id,
            "index": int(index),
        }


def collate_train(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; list the skipped ones.

    Returns ``frames`` [B, F, 3, S, S], ``tokens`` [B, L], ``text``, ``video_id``, ``index`` [B],
    ``skipped`` (video ids that failed to decode) and ``errors`` (their messages). B may be 0 when
    every item of a batch failed (frames and tokens are then empty tensors): skip such a batch.
    """
    good = [it for it in items if "error" not in it]
    bad = [it for it in items if "error" in it]
    if good:
        frames = torch.stack([it["frames"] for it in good])
        tokens = torch.stack([it["tokens"] for it in good])
    else:
        frames = torch.empty(0)
        tokens = torch.empty(0, dtype=torch.long)
    return {
        "frames": frames,
        "tokens": tokens,
        "text": [it["text"] for it in good],
        "video_id": [it["video_id"] for it in good],
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "skipped": [it["video_id"] for it in bad],
        "errors": [it["error"] for it in bad],
    }


class EvalSet:
    """All videos and all captions of a split, with the caption -> video index mapping.

    Plain lists and arrays, no reference to the corpus: ``video_ids`` (sorted), ``paths`` (same
    order), ``texts``, ``caption_ids`` and ``video_of_text`` (int64 [T], index into ``video_ids``).
    """

    def __init__(self, corpus: Corpus) -> None:
        self.name = corpus.name
        self.split = corpus.split
        self.video_ids: list[str] = corpus.video_ids
        self.paths: list[Path] = [corpus.videos[v] for v in self.video_ids]
        position = {v: i for i, v in enumerate(self.video_ids)}
        self.texts: list[str] = [c.text for c in corpus.captions]
        self.caption_ids: list[str] = [c.caption_id for c in corpus.captions]
        self.video_of_text = np.array([position[c.video_id] for c in corpus.captions], dtype=np.int64)

    def __repr__(self) -> str:
        return f"EvalSet({self.name}/{self.split}: {self.num_videos} videos, {self.num_texts} texts)"

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_texts(self) -> int:
        return len(self.texts)


class VideoClipDataset(Dataset):
    """Frames ``[F, 3, S, S]`` of each video (uniform sampling, ``rule`` as in
    ``xpool.data.video``); decode failures raise."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: VideoTransform,
        num_frames: int,
        frame_cache: FrameCache | None = None,
        rule: str = "authors",
    ) -> None:
        if rule not in SAMPLING_RULES:
            raise ValueError(f"rule must be one of {SAMPLING_RULES}, got {rule!r}")
        if frame_cache is not None and frame_cache.num_frames != num_frames:
            raise ValueError(
                f"frame cache holds {frame_cache.num_frames} frames per video, dataset wants {num_frames}"
            )
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.num_frames = int(num_frames)
        self.frame_cache = frame_cache
        self.rule = rule

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        if self.frame_cache is not None:
            frames = self.frame_cache.get(path)
        else:
            frames, _ = sample_frames(path, self.num_frames, mode="uniform", rule=self.rule)
        return self.transform(frames)
