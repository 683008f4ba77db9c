"""The public similarity functions: the plain reference path, the fast exact matrix and its chunks,
and the rerank scorer; each dispatches to the head's exact path."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.model.pooling import AttentionPooling, TopKPooling, XPool
from xpool.similarity.base import DEFAULT_MEMORY_BUDGET, check_chunk, check_inputs, eval_mode
from xpool.similarity.factored import XPoolFactors, xpool_chunks, xpool_similarity
from xpool.similarity.weighting import frame_weighting_similarity

__all__ = ["GalleryScorer", "plain_similarity_matrix", "similarity_chunks", "similarity_matrix"]


def _text_agnostic(pooling: nn.Module, t: Tensor, e: Tensor, chunk_size: int | None = None,
                   video_chunk: int = 1024) -> Tensor:
    """Pool each video once (in video chunks, to bound the head's own temporaries), then one
    matmul per chunk of ``chunk_size`` texts (all texts when None).

    Per chunk, not one product sliced afterwards: a BLAS may block a [T, D] x [D, V] product
    differently for another T, so rows computed in chunks need not equal the rows of one
    product to the last bit (measured on an AMD EPYC), and ``similarity_chunks`` promises the
    numbers of ``similarity_matrix`` with the same ``chunk_size``."""
    if e.shape[0] == 0 or t.shape[0] == 0:
        return t.new_zeros(t.shape[0], e.shape[0])
    t_hat, pooled = F.normalize(t, dim=-1), _pool_each_video(pooling, e, video_chunk)
    if chunk_size is None or chunk_size >= t.shape[0]:
        return t_hat @ pooled.T
    return torch.cat([t_hat[i : i + chunk_size] @ pooled.T for i in range(0, len(t), chunk_size)])


def _pool_each_video(pooling: nn.Module, e: Tensor, video_chunk: int = 1024) -> Tensor:
    """[V, D] unit vectors a text-agnostic head pools for each video, in video chunks (to bound
    the head's own temporaries). The head ignores the text: one dummy row keeps the call
    signature."""
    probe = e[:1, 0]
    pooled = torch.cat(
        [pooling(probe, e[i : i + video_chunk]) for i in range(0, e.shape[0], video_chunk)]
    )
    return F.normalize(pooled, dim=-1)


def plain_similarity_matrix(
    pooling: nn.Module,
    text_embeds: Tensor,
    frame_embeds: Tensor,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Reference computation: the head's forward over text chunks, L2-normalize, dot. [T, V].

    For text-conditioned heads each chunk forms the [V, chunk, D] pooled tensor; ``chunk_size``
    defaults to what fits ``memory_budget`` bytes (about six such tensors alive at a time).
    """
    check_chunk(chunk_size)
    t, e = check_inputs(pooling, text_embeds, frame_embeds)
    num_texts, num_videos = t.shape[0], e.shape[0]
    with eval_mode(pooling):
        if not pooling.text_conditioned:
            return _text_agnostic(pooling, t, e, chunk_size)
        if chunk_size is None:
            per_text = 6 * num_videos * t.shape[1] * 4
            chunk_size = max(1, memory_budget // max(per_text, 1))
        out = torch.empty(num_texts, num_videos, dtype=torch.float32, device=t.device)
        for start in range(0, num_texts, chunk_size):
            tc = t[start : start + chunk_size]
            pooled = F.normalize(pooling(tc, e), dim=-1)  # [V, Tc, D]
            out[start : start + chunk_size] = torch.einsum(
                "vtd,td->tv", pooled, F.normalize(tc, dim=-1)
            )
        return out


def similarity_matrix(
    pooling: nn.Module,
    text_embeds: Tensor,
    frame_embeds: Tensor,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """Exact cosine similarities [T, V] between texts and the videos pooled for them.

    Args:
        pooling: a head from ``build_pooling`` (evaluated in eval mode: dropout off).
        text_embeds: [T, D] raw text embeddings.
        frame_embeds: [V, F, D] raw frame embeddings.
        chunk_size: texts per chunk; ``None`` picks it from ``memory_budget``.
        memory_budget: bound in bytes on the per-chunk temporaries when ``chunk_size`` is None.

    Returns:
        float32 [T, V] on the head's device. X-Pool, top-k and attention heads use the factored
        computations described in this module's docstring; any other text-conditioned module
        falls back to ``plain_similarity_matrix``.
    """
    check_chunk(chunk_size)
    t, e = check_inputs(pooling, text_embeds, frame_embeds)
    with eval_mode(pooling):
        if not pooling.text_conditioned:
            return _text_agnostic(pooling, t, e, chunk_size)
        if isinstance(pooling, XPool):
            return xpool_similarity(pooling, t, e, chunk_size, memory_budget)
        if isinstance(pooling, TopKPooling | AttentionPooling):
            return frame_weighting_similarity(pooling, t, e, chunk_size, memory_budget)
    return plain_similarity_matrix(pooling, t, e, chunk_size, memory_budget)


def similarity_chunks(
    pooling: nn.Module,
    text_embeds: Tensor,
    frame_embeds: Tensor,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[int, Tensor]]:
    """``similarity_matrix`` one text chunk at a time: yields (first text index, [Tc, V]).

    The same numbers as ``similarity_matrix`` with the same ``chunk_size``, but only one chunk's
    rows are alive at a time, so a caller that reduces each chunk (ranks, top-k) never holds
    [T, V]. The per-video factors are computed once for all chunks. ``chunk_size=None`` picks
    the chunk from ``memory_budget`` (X-Pool) or yields all texts at once (other heads).
    """
    check_chunk(chunk_size)
    t, e = check_inputs(pooling, text_embeds, frame_embeds)
    if isinstance(pooling, XPool):
        with eval_mode(pooling):
            # The generator is consumed inside the context, so the head stays in eval mode.
            yield from xpool_chunks(pooling, t, e, chunk_size, memory_budget)
        return
    step = chunk_size or max(1, t.shape[0])
    for s0 in range(0, t.shape[0], step):
        yield s0, similarity_matrix(pooling, t[s0 : s0 + step], e, None, memory_budget)


class GalleryScorer:
    """Exact scores of chosen (text, video) pairs against a fixed gallery: a shortlist's rerank.

    The per-video factors of the fast path (O(V F D^2), the costly part) are computed once here;
    each ``score`` call then costs O(F D) per pair, so reranking K candidates per query is
    O(T K F D) however large the gallery. The scores are the cosines ``similarity_matrix`` gives
    for the same pairs (equal up to float rounding: the products have other shapes).
    X-Pool uses the factored pair computation, text-agnostic heads pool each video once, and
    other heads score each query's candidates with ``similarity_matrix``.
    """

    def __init__(self, pooling: nn.Module, frame_embeds: Tensor,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        _, e = check_inputs(pooling, frame_embeds.new_zeros(1, frame_embeds.shape[-1]), frame_embeds)
        self.pooling, self.frames, self.memory_budget = pooling, e, memory_budget
        self.num_videos = e.shape[0]
        self._factors: XPoolFactors | None = None
        self._pooled: Tensor | None = None
        with eval_mode(pooling):
            if isinstance(pooling, XPool):
                self._factors = XPoolFactors(pooling, e)
            elif not pooling.text_conditioned:
                self._pooled = _pool_each_video(pooling, e)

    def score(self, text_embeds: Tensor, candidates: Tensor) -> Tensor:
        """[T, K] cosines of text i with video ``candidates[i, k]`` (-inf where the index is -1)."""
        t, _ = check_inputs(self.pooling, text_embeds, self.frames[:0])
        cand = torch.as_tensor(candidates, dtype=torch.long, device=t.device)
        if cand.dim() != 2 or cand.shape[0] != t.shape[0]:
            raise XPoolError(f"candidates must be [T, K] with T = {t.shape[0]}, got {tuple(cand.shape)}")
        if cand.numel() and (int(cand.max()) >= self.num_videos or int(cand.min()) < -1):
            raise XPoolError(f"candidates hold indices outside [0, {self.num_videos}) (-1 = none)")
        valid = cand >= 0
        idx = cand.clamp_min(0)
        num_texts, k = cand.shape
        out = torch.empty(num_texts, k, dtype=torch.float32, device=t.device)
        with eval_mode(self.pooling):
            if self._factors is not None:
                f = self._factors
                # Gathered per-pair keys and bases dominate: about 3 x F x D floats per pair.
                per_text = max(1, 3 * f.basis * f.dim * 4 * k)
                step = max(1, self.memory_budget // per_text)
                for s0 in range(0, num_texts, step):
                    tc = t[s0 : s0 + step]
                    texts = f.texts(tc)
                    rows = torch.arange(tc.shape[0], device=t.device).repeat_interleave(k)
                    flat = f.pairs(texts, rows, idx[s0 : s0 + step].reshape(-1))
                    out[s0 : s0 + step] = flat.view(tc.shape[0], k)
            elif self._pooled is not None:
                out = torch.einsum("td,tkd->tk", F.normalize(t, dim=-1), self._pooled[idx])
            else:
                for i in range(num_texts):
                    out[i] = similarity_matrix(self.pooling, t[i : i + 1], self.frames[idx[i]])[0]
        return out.masked_fill(~valid, -torch.inf)
