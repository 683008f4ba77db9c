"""Top-k and parameter-free attention pooling's exact similarities: per (text, video) the pooled
vector is a combination of normalized frames, so its norm is a quadratic form with the per-video
frame Gram matrix, and the text . frame cosines come from one GEMM per tile."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xpool.model.pooling import AttentionPooling, TopKPooling
from xpool.similarity.base import NORM_EPS, tiles

__all__ = ["frame_weighting_similarity"]


def frame_weighting_similarity(
    head: TopKPooling | AttentionPooling,
    t: Tensor,
    e: Tensor,
    chunk_size: int | None,
    memory_budget: int,
) -> Tensor:
    """topk / attention: cosine from frame cosines and the per-video Gram of normalized frames."""
    num_texts, (num_videos, num_frames, dim) = t.shape[0], e.shape
    t_hat = F.normalize(t, dim=-1)
    e_hat = F.normalize(e, dim=-1)
    gram = e_hat @ e_hat.transpose(1, 2)  # [V, F, F]
    frames = e_hat.reshape(num_videos * num_frames, dim)
    is_topk = isinstance(head, TopKPooling)
    k = min(head.k, num_frames) if is_topk else num_frames
    chunk, block = tiles(
        num_texts,
        num_videos,
        num_frames,
        4 * num_frames + k * k,
        chunk_size,
        memory_budget,
    )
    gram_flat = gram.reshape(num_videos, num_frames * num_frames)
    out = torch.empty(num_texts, num_videos, dtype=torch.float32, device=t.device)
    for s0 in range(0, num_texts, chunk):
        tc = t_hat[s0 : s0 + chunk]
        n = tc.shape[0]
        for v0 in range(0, num_videos, block):
            v1 = min(v0 + block, num_videos)
            nv = v1 - v0
            cos = (frames[v0 * num_frames : v1 * num_frames] @ tc.T).view(nv, num_frames, n)
            if is_topk:
                values, idx = cos.topk(k, dim=1)  # [Vb, k, Tc]
                num = values.sum(dim=1) / k
                pair_idx = (idx.unsqueeze(2) * num_frames + idx.unsqueeze(1)).view(nv, -1)
                sq = torch.gather(gram_flat[v0:v1], 1, pair_idx).view(nv, k * k, n).sum(1)
                norm = (sq.clamp_min(0.0).sqrt() / k).clamp_min(NORM_EPS)
            else:
                w = torch.softmax(cos / head.temperature, dim=1)
                num = (w * cos).sum(dim=1)
                sq = (torch.bmm(gram[v0:v1], w) * w).sum(dim=1)
                norm = sq.clamp_min(0.0).sqrt().clamp_min(NORM_EPS)
            out[s0 : s0 + n, v0:v1] = (num / norm).T
    return out
