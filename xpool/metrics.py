"""Retrieval metrics: text-to-video and video-to-text ranks, R@K, MdR, MnR, dual-softmax.

Contract (docs/architecture.md, "Metric contract"):

- ``sims`` is a [T, V] matrix: row t holds caption t's scores against every test video.
- ``video_of_text`` is a [T] integer array: the column index of caption t's own video.
- Ranks count from 1, and ties count against the query: a rank is the number of candidates
  whose score is greater than or equal to the ground truth's score. A collapsed model with a
  constant similarity matrix therefore gets the worst possible rank, never the best.
- A NaN ground-truth score also gets the worst rank (a NaN compares false with everything,
  which would otherwise give rank 0).
- Video-to-text has two conventions (``V2T_CONVENTIONS``), equal when every video has one
  caption and always equal at R@1:

  * ``"groups"``: the authors' (``modules/metrics.py: v2t_metrics``) and CLIP4Clip's. Each
    video ranks the *caption groups* of all V videos, a group scored by its best caption for
    that video; the rank is its own group's place among V.
  * ``"captions"``: each video ranks all T captions; the rank is the place of its best own
    caption among T (so other captions of its own video count against it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xpool.config import DIRECTIONS
from xpool.errors import XPoolError

__all__ = [
    "V2T_CONVENTIONS",
    "dual_softmax",
    "rank_metrics",
    "t2v_metrics",
    "t2v_ranks",
    "v2t_metrics",
    "v2t_ranks",
]


V2T_CONVENTIONS = ("groups", "captions")


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise XPoolError(f"{name} must be numeric, got an object array")
    return arr


def _check_inputs(sims: Any, video_of_text: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(sims, "sims")
    if s.ndim != 2:
        raise XPoolError(f"sims must be a [T, V] matrix, got shape {tuple(s.shape)}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    v = _as_numpy(video_of_text, "video_of_text")
    if v.ndim != 1 or v.shape[0] != s.shape[0]:
        raise XPoolError(
            f"video_of_text must have one entry per caption (row of sims): shape {tuple(v.shape)} "
            f"for sims of shape {tuple(s.shape)}"
        )
    if v.size and not np.issubdtype(v.dtype, np.integer):
        if not np.all(np.equal(np.mod(v, 1), 0)):
            raise XPoolError("video_of_text must hold integer video indices")
        v = v.astype(np.int64)
    v = v.astype(np.int64, copy=False)
    if v.size and (v.min() < 0 or v.max() >= s.shape[1]):
        raise XPoolError(
            f"video_of_text holds indices outside [0, {s.shape[1]}): min {v.min()}, max {v.max()}"
        )
    return s, v


def t2v_ranks(sims: Any, video_of_text: Any) -> np.ndarray:
    """Rank (from 1) of each caption's own video among all videos; ties count against the query.

    Args:
        sims: [T, V] scores (torch tensor or numpy array).
        video_of_text: [T] index of each caption's video.

    Returns:
        int64 array [T].
    """
    s, v = _check_inputs(sims, video_of_text)
    num_texts, num_videos = s.shape
    gt = s[np.arange(num_texts), v]
    ranks = np.count_nonzero(s >= gt[:, None], axis=1).astype(np.int64)
    ranks[np.isnan(gt)] = num_videos
    return ranks


def v2t_ranks(sims: Any, video_of_text: Any, convention: str = "captions") -> np.ndarray:
    """Video-to-text rank (from 1) of each video, by ``convention`` (module docstring).

    ``"captions"``: the rank of each video's best-placed own caption among all captions.

    Each video is a query over every caption (a column of ``sims``). The rank of a caption is the
    number of captions scoring >= it in that column; the video's rank is the best (smallest) rank
    among its own captions, which is the rank of its highest-scoring own caption.

    Raises:
        XPoolError: if a video has no caption (its rank would be undefined).
    """
    if convention not in V2T_CONVENTIONS:
        raise XPoolError(f"unknown v2t convention {convention!r}; expected one of {V2T_CONVENTIONS}")
    s, v = _check_inputs(sims, video_of_text)
    num_texts, num_videos = s.shape
    counts = np.bincount(v, minlength=num_videos)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)
        raise XPoolError(
            f"video-to-text retrieval needs at least one caption per video; {missing.size} of "
            f"{num_videos} videos have none (first indices: {missing[:5].tolist()}). Drop those "
            "videos (columns) before computing video-to-text metrics."
        )
    if convention == "groups":
        return _v2t_group_ranks(s, v, num_videos)
    own = s[np.arange(num_texts), v].astype(np.float64)
    # NaN own scores must not win the max: they are treated as the worst possible score.
    own = np.where(np.isnan(own), -np.inf, own)
    best = np.full(num_videos, -np.inf)
    np.maximum.at(best, v, own)
    ranks = np.count_nonzero(s >= best[None, :].astype(s.dtype), axis=0).astype(np.int64)
    # Every own caption NaN (or -inf): nothing reliable was scored, give the worst rank.
    ranks[~np.isfinite(best)] = num_texts
    return ranks


def _v2t_group_ranks(s: np.ndarray, v: np.ndarray, num_videos: int) -> np.ndarray:
    # group[g, u]: the best score of video g's captions against video u (NaN -> -inf, as the
    # authors' code does before its max).
    vals = np.where(np.isnan(s), -np.inf, s.astype(np.float64))
    group = np.full((num_videos, num_videos), -np.inf)
    np.maximum.at(group, v, vals)
    own = np.diagonal(group)  # own[u] = group[u, u]
    ranks = np.count_nonzero(group >= own[None, :], axis=0).astype(np.int64)
    ranks[~np.isfinite(own)] = num_videos
    return ranks


def rank_metrics(ranks: Any) -> dict[str, float]:
    """R@1, R@5, R@10 (percent), MdR (numpy median) and MnR (mean) of 1-based ranks."""
    r = _as_numpy(ranks, "ranks").astype(np.float64).ravel()
    if r.size == 0:
        raise XPoolError("rank_metrics needs at least one rank")
    return {
        "R1": float(100.0 * np.mean(r <= 1)),
        "R5": float(100.0 * np.mean(r <= 5)),
        "R10": float(100.0 * np.mean(r <= 10)),
        "MdR": float(np.median(r)),
        "MnR": float(np.mean(r)),
    }


def t2v_metrics(sims: Any, video_of_text: Any) -> dict[str, float]:
    """Text-to-video R1, R5, R10, MdR, MnR for a [T, V] similarity matrix."""
    return rank_metrics(t2v_ranks(sims, video_of_text))


def v2t_metrics(sims: Any, video_of_text: Any, convention: str = "captions") -> dict[str, float]:
    """Video-to-text R1, R5, R10, MdR, MnR under ``convention`` (``"groups"`` or ``"captions"``)."""
    return rank_metrics(v2t_ranks(sims, video_of_text, convention))


def dual_softmax(sims: Any, temperature: float = 100.0, direction: str = "t2v") -> Any:
    """Dual-softmax (DSL) re-scoring of a [T, V] matrix, as used in CAMoE and X-Pool's evaluation.

    Each score is multiplied by a prior over the *other* side of the pair, so that a candidate
    which many other queries also prefer is pushed down:

    - ``direction="t2v"`` (texts query videos): ``sims * softmax(sims * temperature, axis=0)``,
      the prior says how strongly the video prefers this caption over every other caption;
    - ``direction="v2t"`` (videos query texts): ``sims * softmax(sims * temperature, axis=1)``,
      how strongly the caption prefers this video over every other video.

    (A prior over the query's own candidates would be monotone in the score and change no rank.)
    It uses the other queries of the test set, so it is a transductive trick: callers report it
    in separate columns. Returns the same type as the input (torch tensor or numpy array).
    """
    if direction not in DIRECTIONS:
        raise XPoolError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    axis = 0 if direction == "t2v" else 1
    if isinstance(sims, torch.Tensor):
        return sims * torch.softmax(sims * temperature, dim=axis)
    s = np.asarray(sims)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.ndim != 2:
        raise XPoolError(f"sims must be a [T, V] matrix, got shape {tuple(s.shape)}")
    logits = s * temperature
    logits = logits - logits.max(axis=axis, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=axis, keepdims=True)
    return s * prior
