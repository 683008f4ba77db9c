"""Exact text-video similarity for evaluation, in bounded memory.

Derivation and memory budget: docs/architecture.md, "Fast exact similarity".

``similarity_matrix(pooling, text_embeds [T, D], frame_embeds [V, F, D]) -> [T, V]`` returns the
cosine between each raw text embedding and the video embedding the head pools for it: the same
numbers as ``plain_similarity_matrix`` (pool with the head's forward, L2-normalize, dot) up to
float rounding, but without ever forming the [V, T, D] pooled tensor.

Both functions evaluate the head in eval mode (dropout off), under ``torch.no_grad``, and restore
the head's train/eval state afterwards. Computation is float32 on the head's device.

X-Pool (factored computation). With attention weights a_k of a (text, video) pair (k runs over
heads x frames; each head's weights sum to 1), the head's output is an affine function of a
handful of per-frame vectors with pair-specific scalar coefficients:

- u_k = out_proj restricted to head h applied to v_f, plus out_proj's bias / H, so that
  o = sum_k a_k u_k (the bias is spread over the heads because each head's a sums to 1).
- layer_norm2: with centred u~_k, o - mean(o) = sum_k a_k u~_k and var(o) = a^T G a / D with
  G = U~ U~^T (a per-video Gram matrix). With c = a / sigma2, y = sum_k c_k (g2 * u~_k) + b2.
- residual FC (eval: dropout is the identity): z = y + W y + b = sum_k c_k Z_k + z0 with
  Z_k = (I + W)(g2 * u~_k), z0 = (I + W) b2 + b.
- layer_norm3 and the cosine: mean/variance of z, t . out and |out|^2 are linear or quadratic
  forms in c with per-video Gram matrices and vectors, computed once per video.

Per pair that leaves O(K^2) work; per text chunk the heavy parts are two GEMMs of the texts
against all V*K per-frame vectors (attention logits and text . basis), both [V*K, D] x [D, Tc].
For one head the key projection is folded into the query (q . (W_k e + b_k) = (W_k^T q) . e + a
per-text constant that the softmax ignores), so keys are the layer-normed frames themselves,
and the text . basis dots come through the keys too (the basis is affine in them).
``residual=False`` (no residual FC) is the same computation with the layer_norm3 step left out.

Work is chunked over texts (chunks sized from ``memory_budget``, default 512 MB: what
``similarity_chunks`` yields) and, inside a chunk, tiled over (texts, videos) in tiles of a few
MB whose buffers are reused, so the half-dozen passes over a tile's [Vt, K, Tt] temporaries run
in cache (``factored.xpool_plan``). Peak memory is the per-frame vectors (O(V * F * D)), one tile's
temporaries and the [T, V] output: never O(T * V * D).

Precision: float32 throughout; on random and CLIP-like inputs the fast and plain results differ
by ~1e-7 (tests hold them within 1e-5 with identical ranks). The variances come from quadratic
forms (a^T G a) rather than from the pooled vector itself, so a pair whose pooled vector nearly
cancels (|o| much smaller than its frames' |u|, which needs frames pointing in opposite
directions) loses relative precision faster than the plain path would.

``topk`` and ``attention`` are handled the same way: per (text, video) the pooled vector is a
combination of normalized frames, so its norm is a quadratic form with the per-video frame Gram
matrix; the text . frame cosines come from one GEMM per tile. Text-agnostic heads (``mean``,
``self_attention``) pool once per video and need one matrix product.

Layout: ``matrix`` (the public functions), ``factored`` (X-Pool), ``weighting`` (top-k and
attention) and ``base`` (checks, eval-mode guard, tile sizing).
"""

from xpool.similarity.base import DEFAULT_MEMORY_BUDGET
from xpool.similarity.matrix import (
    GalleryScorer,
    plain_similarity_matrix,
    similarity_chunks,
    similarity_matrix,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GalleryScorer",
    "plain_similarity_matrix",
    "similarity_chunks",
    "similarity_matrix",
]
