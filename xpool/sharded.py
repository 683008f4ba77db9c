"""Exact retrieval metrics with the video gallery split over `torch.distributed` ranks.

Every rank holds all caption embeddings (T x D, small) and one contiguous shard of the videos
(``shard_range``). It scores its shard with the fast exact path (``xpool.similarity``), one text
chunk at a time, and never sees another rank's scores: the metrics need only a few numbers per
query, which the ranks add up.

- Text to video. A caption's rank is the number of videos scoring >= its own video (ties count
  against the query, as in ``xpool.metrics``). Per text chunk, the rank that owns a caption's
  video reads the ground-truth score; one all-reduce (sum, the other ranks add zeros) gives it to
  every rank; each rank counts its candidates scoring >= it; a second all-reduce sums the counts.
  Traffic per chunk: 2 x Tc numbers, whatever the gallery size.
- Video to text. A video's column (its scores against every caption) lives wholly on the rank
  that owns the video, so its rank (that of its best own caption among all captions) is computed
  locally: a first pass over the text chunks finds each video's best own caption, a second counts
  the captions scoring >= it (skipped when all texts fit one chunk: that chunk is kept). The
  per-video ranks are summed into one [V] vector (each rank fills its own slice).

Launch with ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on GPU; see
``xpool.engine.distributed.init_distributed``); without a process group the functions run as one
rank.
NaN scores follow ``xpool.metrics``: a NaN ground truth gets the worst rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.metrics import rank_metrics
from xpool.similarity import DEFAULT_MEMORY_BUDGET, similarity_chunks

__all__ = ["shard_range", "sharded_ranks", "sharded_retrieval_metrics"]

Blocks = Callable[[], Iterable[tuple[int, Tensor]]]


def shard_range(num_videos: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous video shard; sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise XPoolError(f"rank {rank} is outside a world of size {world_size}")
    base, extra = divmod(num_videos, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum(x: Tensor) -> Tensor:
    if _world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def sharded_ranks(
    blocks: Blocks,
    video_of_text: Sequence[int] | np.ndarray | Tensor,
    shard: tuple[int, int],
    num_videos: int,
    directions: Sequence[str] = ("t2v", "v2t"),
) -> dict[str, np.ndarray]:
    """Exact t2v ranks [T] and v2t ranks [V] from per-rank score blocks (collective call).

    Args:
        blocks: called once per pass; yields (first text index, [Tc, V_shard] scores of those
            texts against this rank's videos), covering every text in order. Every rank must
            yield the same text chunks.
        video_of_text: [T] global index of each caption's video.
        shard: this rank's [start, stop) of global video indices.
        num_videos: gallery size V over all ranks.
        directions: any of "t2v", "v2t".

    Returns:
        {"t2v": int64 [T], "v2t": int64 [V]} (the directions asked for), equal on every rank.
    """
    bad = set(directions) - {"t2v", "v2t"}
    if bad or not directions:
        raise XPoolError(f"directions must be a non-empty subset of ('t2v', 'v2t'), got {directions}")
    vot = torch.as_tensor(np.asarray(video_of_text), dtype=torch.long)
    num_texts = vot.shape[0]
    v_lo, v_hi = shard
    if not 0 <= v_lo <= v_hi <= num_videos:
        raise XPoolError(f"shard {shard} is not inside [0, {num_videos}]")
    if num_texts and (int(vot.min()) < 0 or int(vot.max()) >= num_videos):
        raise XPoolError(f"video_of_text holds indices outside [0, {num_videos})")
    local = (vot >= v_lo) & (vot < v_hi)  # captions whose video this rank holds
    n_local = v_hi - v_lo
    want_t2v, want_v2t = "t2v" in directions, "v2t" in directions
    t2v = torch.zeros(num_texts, dtype=torch.long)
    best = np.full(n_local, -np.inf)
    best_text = np.full(n_local, -1, dtype=np.int64)
    kept: list[tuple[int, Tensor]] | None = None
    covered = n_chunks = 0
    for s0, block in blocks():
        if s0 != covered or block.shape[1] != n_local:
            raise XPoolError(f"score blocks must cover the texts in order with {n_local} columns; "
                             f"got a block at {s0} (expected {covered}) of shape {tuple(block.shape)}")
        tc = block.shape[0]
        covered += tc
        n_chunks += 1
        rows = torch.arange(s0, s0 + tc)
        mine = local[s0 : s0 + tc]
        cols = (vot[s0 : s0 + tc] - v_lo).clamp(0, max(n_local - 1, 0))
        own = torch.zeros(tc, dtype=block.dtype, device=block.device)
        if n_local:
            picked = block[torch.arange(tc, device=block.device), cols.to(block.device)]
            own = torch.where(mine.to(block.device), picked, own)
        if want_t2v:
            gt = _sum(own.clone())  # every caption's own score, on every rank
            count = (block >= gt[:, None]).sum(dim=1)
            t2v[s0 : s0 + tc] = _sum(count).cpu()
            nan = torch.isnan(gt).cpu()
            t2v[rows[nan]] = num_videos
        if want_v2t and n_local:
            # Best own caption per local video; NaN never wins (treated as -inf, as metrics.py).
            own64 = np.nan_to_num(own.double().cpu().numpy(), nan=-np.inf)
            cols_np = cols.numpy()
            for i in np.flatnonzero(mine.numpy()):
                c = cols_np[i]
                if own64[i] > best[c]:
                    best[c], best_text[c] = own64[i], s0 + i
        # One chunk holds every text: keep it for the v2t counts; otherwise recompute them.
        kept = [(s0, block)] if want_v2t and n_chunks == 1 else None
    if covered != num_texts:
        raise XPoolError(f"score blocks covered {covered} texts, video_of_text has {num_texts}")
    out: dict[str, np.ndarray] = {}
    if want_t2v:
        out["t2v"] = t2v.numpy()
    if want_v2t:
        if torch.any(torch.bincount(vot, minlength=num_videos) == 0):
            raise XPoolError("video-to-text retrieval needs at least one caption per video")
        counts = torch.zeros(n_local, dtype=torch.long)
        passes = kept if kept is not None else blocks()
        best_f = torch.from_numpy(best).float()
        best_rows = torch.from_numpy(best_text)
        for s0, block in passes if n_local else ():
            ge = block.cpu() >= best_f[None, :]
            # The best own caption counts itself once, whatever a recomputation rounds it to.
            rows = best_rows - s0
            hit = (rows >= 0) & (rows < block.shape[0])
            ge[rows[hit], torch.nonzero(hit).flatten()] = False
            counts += ge.sum(dim=0) + hit.long()
        counts[torch.from_numpy(~np.isfinite(best))] = num_texts
        v2t = torch.zeros(num_videos, dtype=torch.long)
        v2t[v_lo:v_hi] = counts
        device = "cuda" if _uses_nccl() else "cpu"
        out["v2t"] = _sum(v2t.to(device)).cpu().numpy()
    return out


def _uses_nccl() -> bool:
    return _world()[1] > 1 and dist.get_backend() == "nccl"


def sharded_retrieval_metrics(
    pooling: nn.Module,
    text_embeds: Tensor,
    frame_shard: Tensor,
    video_of_text: Sequence[int] | np.ndarray | Tensor,
    shard: tuple[int, int],
    num_videos: int,
    directions: Sequence[str] = ("t2v", "v2t"),
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, dict[str, float]]:
    """R@1/5/10, MdR, MnR per direction with this rank's videos ``frame_shard`` (collective call).

    Args:
        pooling: the head (same weights on every rank).
        text_embeds: [T, D] every caption, on every rank.
        frame_shard: [V_shard, F, D] the videos ``shard`` (global [start, stop)) of this rank.
        video_of_text: [T] global video index of each caption.
        num_videos: the whole gallery's size.
        chunk_size: texts per chunk; pass the same value on every rank (``None`` derives it from
            ``memory_budget`` and the shard size, which can differ between ranks).
    """
    if frame_shard.shape[0] != shard[1] - shard[0]:
        raise XPoolError(f"frame_shard has {frame_shard.shape[0]} videos, shard {shard} needs "
                         f"{shard[1] - shard[0]}")
    if chunk_size is None:
        # Ranks must agree on the text chunks: size them for the largest shard, so that one
        # chunk's [Tc, V_shard] scores take at most a quarter of the budget (the tiles inside
        # the fast path have their own bound).
        _, world = _world()
        largest = -(-num_videos // world)
        chunk_size = max(1, memory_budget // (16 * max(1, largest)))

    def blocks() -> Iterable[tuple[int, Tensor]]:
        if frame_shard.shape[0] == 0:
            t = text_embeds
            step = chunk_size or max(1, t.shape[0])
            for s0 in range(0, t.shape[0], step):
                yield s0, t.new_zeros(min(step, t.shape[0] - s0), 0)
            return
        yield from similarity_chunks(pooling, text_embeds, frame_shard, chunk_size, memory_budget)

    ranks = sharded_ranks(blocks, video_of_text, shard, num_videos, directions)
    return {d: rank_metrics(r) for d, r in ranks.items()}
