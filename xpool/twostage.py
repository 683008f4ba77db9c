"""Two-stage retrieval for large galleries: a text-agnostic shortlist, then an exact X-Pool rerank.

Stage 1 (shortlist): every video is mean-pooled once (mean of its frame embeddings, then
L2-normalized), and each query keeps the K videos whose pooled embedding has the largest cosine
with it. Three interchangeable indexes find those K:

- ``"exact"``: torch matrix product and ``topk`` over query chunks (exact, O(T V D));
- ``"flat"``: FAISS ``IndexFlatIP`` (exact inner product, the same candidates as "exact" up to
  ties and rounding);
- ``"ivf"``: FAISS ``IndexIVFFlat`` (approximate: the gallery is split into ``nlist`` k-means
  cells and a query searches the ``nprobe`` nearest cells).

Stage 2 (rerank): the K candidates of each query are scored exactly with the text-conditioned
head through ``xpool.similarity.GalleryScorer`` (per-video factors computed once, then O(F D)
per pair), and the top ``top`` of them are returned. With K >= V the result is the exhaustive
X-Pool ranking. A video outside a query's shortlist is never returned for it: that is the
recall the shortlist costs, measured by ``bench/twostage.py``.

FAISS is optional (the ``scale`` extra: ``pip install -e .[scale]``); it is imported only when
an index of kind "flat" or "ivf" is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.similarity import DEFAULT_MEMORY_BUDGET, GalleryScorer

__all__ = ["INDEX_KINDS", "ShortlistIndex", "TwoStageSearch", "mean_pooled", "two_stage_search"]

INDEX_KINDS = ("exact", "flat", "ivf")


def mean_pooled(frame_embeds: Tensor) -> Tensor:
    """Text-agnostic video embeddings: mean over frames, L2-normalized. [V, F, D] -> [V, D]."""
    if frame_embeds.dim() != 3:
        raise XPoolError(f"frame_embeds must be [V, F, D], got shape {tuple(frame_embeds.shape)}")
    return F.normalize(frame_embeds.float().mean(dim=1), dim=-1)


def _faiss() -> Any:
    # Imported here, not at module level: FAISS is an optional extra and the exact index (and
    # the rest of the package) must work without it.
    try:
        import faiss
    except ImportError as exc:
        raise XPoolError("index kinds 'flat' and 'ivf' need FAISS: pip install -e '.[scale]' "
                         "(or pip install faiss-cpu); kind 'exact' needs nothing extra") from exc
    return faiss


@dataclass
class ShortlistIndex:
    """A searchable set of text-agnostic video embeddings (see ``build``)."""

    kind: str
    gallery: Tensor  # [V, D] normalized, float32
    faiss_index: Any = None
    nlist: int | None = None
    nprobe: int | None = None

    @classmethod
    def build(cls, gallery: Tensor, kind: str = "exact", nlist: int | None = None,
              nprobe: int = 16, seed: int = 0) -> ShortlistIndex:
        """Index ``gallery`` [V, D]; for "ivf", ``nlist`` cells (default ~4 sqrt(V)), ``nprobe``."""
        if kind not in INDEX_KINDS:
            raise XPoolError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        if gallery.dim() != 2 or gallery.shape[0] == 0:
            raise XPoolError(f"gallery must be a non-empty [V, D] matrix, got {tuple(gallery.shape)}")
        g = gallery.detach().float().cpu().contiguous()
        if kind == "exact":
            return cls(kind, g)
        faiss = _faiss()
        data = np.ascontiguousarray(g.numpy())
        dim = data.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
            index.add(data)
            return cls(kind, g, index)
        cells = nlist or max(1, min(data.shape[0] // 39, int(4 * data.shape[0] ** 0.5)))
        if nprobe < 1 or cells < 1:
            raise XPoolError(f"nlist and nprobe must be >= 1, got {cells}, {nprobe}")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed  # k-means initialisation: the same index every build
        index.train(data)
        index.add(data)
        index.nprobe = min(nprobe, cells)
        return cls(kind, g, index, cells, index.nprobe)

    def search(self, queries: Tensor, k: int, query_chunk: int = 1024) -> Tensor:
        """[T, min(k, V)] candidate video indices per query, best first (-1: no more found)."""
        if k < 1:
            raise XPoolError(f"shortlist size k must be >= 1, got {k}")
        k = min(k, self.gallery.shape[0])
        q = F.normalize(queries.detach().float().cpu(), dim=-1)
        if self.kind == "exact":
            parts = [(q[i : i + query_chunk] @ self.gallery.T).topk(k, dim=1).indices
                     for i in range(0, q.shape[0], query_chunk)]
            return torch.cat(parts) if parts else torch.empty(0, k, dtype=torch.long)
        _, idx = self.faiss_index.search(np.ascontiguousarray(q.numpy()), k)
        return torch.from_numpy(idx.astype(np.int64))


class TwoStageSearch:
    """A gallery prepared for two-stage search: the shortlist index and the rerank factors.

    Building costs one pass over the gallery (mean pooling, the index, X-Pool's per-video
    factors); each ``search`` then costs the shortlist plus O(K F D) per query.
    """

    def __init__(self, pooling: nn.Module, frame_embeds: Tensor, kind: str = "exact",
                 nlist: int | None = None, nprobe: int = 16,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.index = ShortlistIndex.build(mean_pooled(frame_embeds), kind, nlist, nprobe)
        self.scorer = GalleryScorer(pooling, frame_embeds, memory_budget)

    def search(self, text_embeds: Tensor, k: int, top: int = 10) -> tuple[Tensor, Tensor]:
        """(scores [T, top], video indices [T, top]) of the reranked shortlist, best first.

        ``top`` is capped at the shortlist size; slots the shortlist could not fill have index -1
        and score -inf.
        """
        if top < 1:
            raise XPoolError(f"top must be >= 1, got {top}")
        candidates = self.index.search(text_embeds, k)
        scores = self.scorer.score(text_embeds, candidates)
        best, order = scores.topk(min(top, candidates.shape[1]), dim=1)
        picked = torch.gather(candidates, 1, order.cpu())
        return best, picked.masked_fill(torch.isinf(best).cpu() & (best < 0).cpu(), -1)


def two_stage_search(pooling: nn.Module, text_embeds: Tensor, frame_embeds: Tensor, k: int = 100,
                     top: int = 10, kind: str = "exact", nprobe: int = 16) -> tuple[Tensor, Tensor]:
    """One-call two-stage search (what ``xpool search`` calls for large galleries).

    Args:
        pooling: the X-Pool (or other) head.
        text_embeds: [T, D] query embeddings.
        frame_embeds: [V, F, D] the gallery's frame embeddings.
        k: shortlist size per query (``bench/twostage.py`` measures what each K costs).
        top: results per query.
        kind: shortlist index, one of ``INDEX_KINDS``.

    Returns:
        (scores [T, top], video indices [T, top]), best first, scores exact X-Pool cosines.
    """
    return TwoStageSearch(pooling, frame_embeds, kind, nprobe=nprobe).search(text_embeds, k, top)
