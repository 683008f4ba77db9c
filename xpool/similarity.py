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
in cache (``_xpool_plan``). Peak memory is the per-frame vectors (O(V * F * D)), one tile's
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
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.model.pooling import AttentionPooling, TopKPooling, XPool

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GalleryScorer",
    "plain_similarity_matrix",
    "similarity_chunks",
    "similarity_matrix",
]

# Default bound on the per-chunk temporaries (bytes); the inputs and the [T, V] output come on top.
DEFAULT_MEMORY_BUDGET = 512 * 1024**2

_NORM_EPS = 1e-12  # F.normalize's default eps: the plain path divides by max(norm, eps)
# A GEMM with very few rows runs far below peak: video blocks have at least this many rows.
_MIN_GEMM_ROWS = 256


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _check(pooling: nn.Module, text_embeds: Tensor, frame_embeds: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(pooling, nn.Module) or not hasattr(pooling, "text_conditioned"):
        raise XPoolError(
            f"pooling must be a head from xpool.model.pooling.build_pooling, got {type(pooling)}"
        )
    if text_embeds.dim() != 2:
        raise XPoolError(f"text_embeds must be [T, D], got shape {tuple(text_embeds.shape)}")
    if frame_embeds.dim() != 3:
        raise XPoolError(f"frame_embeds must be [V, F, D], got shape {tuple(frame_embeds.shape)}")
    if text_embeds.shape[1] != frame_embeds.shape[2]:
        raise XPoolError(
            f"embedding sizes differ: text {text_embeds.shape[1]}, frames {frame_embeds.shape[2]}"
        )
    param = next(iter(pooling.parameters()), None)
    device = param.device if param is not None else text_embeds.device
    return (
        text_embeds.detach().to(device=device, dtype=torch.float32),
        frame_embeds.detach().to(device=device, dtype=torch.float32),
    )


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise XPoolError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


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
    # The head ignores the text; one dummy row keeps the call signature.
    probe = t[:1]
    pooled = torch.cat(
        [pooling(probe, e[i : i + video_chunk]) for i in range(0, e.shape[0], video_chunk)]
    )
    t_hat, pooled = F.normalize(t, dim=-1), F.normalize(pooled, dim=-1)
    if chunk_size is None or chunk_size >= t.shape[0]:
        return t_hat @ pooled.T
    return torch.cat([t_hat[i : i + chunk_size] @ pooled.T for i in range(0, len(t), chunk_size)])


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
    _check_chunk(chunk_size)
    t, e = _check(pooling, text_embeds, frame_embeds)
    num_texts, num_videos = t.shape[0], e.shape[0]
    with _eval_mode(pooling):
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
    _check_chunk(chunk_size)
    t, e = _check(pooling, text_embeds, frame_embeds)
    with _eval_mode(pooling):
        if not pooling.text_conditioned:
            return _text_agnostic(pooling, t, e, chunk_size)
        if isinstance(pooling, XPool):
            return _xpool_similarity(pooling, t, e, chunk_size, memory_budget)
        if isinstance(pooling, TopKPooling | AttentionPooling):
            return _frame_weighting_similarity(pooling, t, e, chunk_size, memory_budget)
    return plain_similarity_matrix(pooling, t, e, chunk_size, memory_budget)


def _tiles(
    num_texts: int,
    num_videos: int,
    basis: int,
    per_pair_floats: int,
    chunk_size: int | None,
    memory_budget: int,
) -> tuple[int, int]:
    """Pick (texts per chunk, videos per block) so a tile's temporaries fit ``memory_budget``.

    Tiles are as large as the budget allows (the top-k and attention heads; X-Pool uses this for
    its chunks only, see ``_xpool_plan``): every tile costs a few tensor operations, and on a
    busy machine each parallel operation can stall for a scheduler time slice.
    """
    pairs = max(1, memory_budget // (4 * max(1, per_pair_floats)))
    if chunk_size is None:
        chunk_size = max(64, pairs // max(1, num_videos))
    chunk_size = max(1, min(chunk_size, max(num_texts, 1)))
    video_block = max(1, min(num_videos, pairs // chunk_size))
    video_block = max(video_block, min(num_videos, -(-_MIN_GEMM_ROWS // max(1, basis))))
    return chunk_size, video_block


class _Texts(NamedTuple):
    """Per-chunk text quantities of the X-Pool path (``_XPoolFactors.texts``)."""

    q: Tensor  # one head: [Tc, D] folded queries; several heads: [H, hd, Tc]
    tp: Tensor | None  # one head: [Tc, D] the texts through the basis map (P t^), else None
    t_hat: Tensor | None  # several heads: [Tc, D] unit texts (the text . basis GEMM), else None
    vecs: Tensor  # [3, Tc]: r . t^, out0 . t^, b3 . t^ (t^ = t / |t|)

    def rows(self, a: int, b: int) -> _Texts:
        """Texts a:b of the chunk."""
        if self.tp is not None:
            return _Texts(self.q[a:b], self.tp[a:b], None, self.vecs[:, a:b])
        assert self.t_hat is not None
        return _Texts(self.q[..., a:b], None, self.t_hat[a:b], self.vecs[:, a:b])


# X-Pool tiles: at most _TILE_TEXTS texts, and as many videos as keep the per-pair temporaries
# within _TILE_BYTES. A tile's logits, dots and forms are read by half a dozen passes: at a few
# MB they stay in cache, and their buffers are reused (a fresh large tensor costs a page fault
# per 4 kB). About 25k pairs per tile (F = 12) also keeps the per-pair [Vt, Tt] operations under
# torch's parallel grain (32768 elements): they run inline, without a parallel region that on a
# busy machine can wait for a scheduler slice.
_TILE_TEXTS = 256  # a multiple of 16: GEMM output rows not 64-byte aligned run up to 25% slower
_TILE_BYTES = 8 * 2**20
# Bytes of per-pair forms gathered over video tiles before the per-pair steps run on them.
_STATS_BYTES = 16 * 2**20
# Rows of the per-video basis GEMM per block (its output, about 4 kB a row, stays in cache).
_BASIS_ROWS = 1024


def _xpool_plan(num_texts: int, num_videos: int, basis: int, num_forms: int,
                chunk_size: int | None, memory_budget: int) -> tuple[int, int, int]:
    """(texts per chunk, texts per tile, videos per tile) of the X-Pool path.

    Chunks (what ``similarity_chunks`` yields) are sized from ``memory_budget`` as for the other
    heads; inside a chunk, tiles of ``_TILE_TEXTS`` texts and as many videos as keep the tile's
    temporaries (about 3K + M + 8 floats per pair) within ``_TILE_BYTES`` and ``memory_budget``.
    """
    chunk, _ = _tiles(num_texts, num_videos, basis, basis * (num_forms // basis + 6) + 8,
                      chunk_size, memory_budget)
    tile_texts = min(chunk, _TILE_TEXTS)
    per_pair = 4 * (3 * basis + num_forms + 8)
    pairs = max(1, min(_TILE_BYTES, memory_budget) // per_pair)
    tile_videos = max(pairs // tile_texts, -(-_MIN_GEMM_ROWS // max(1, basis)))
    return chunk, tile_texts, _even(num_videos, tile_videos)


def _even(total: int, most: int) -> int:
    """The step that splits ``total`` into as few near-equal parts of at most ``most`` as it can
    (no small remainder tile)."""
    parts = -(-max(total, 1) // max(most, 1))
    return -(-max(total, 1) // parts)


def _centred(x: Tensor) -> Tensor:
    """Each row minus its mean (over the last dimension)."""
    return x - x.mean(dim=-1, keepdim=True)


def _gram(x: Tensor) -> Tensor:
    """[N, K, D] -> [N, K, K]: the Gram matrix of each stack of rows."""
    return torch.bmm(x, x.transpose(1, 2))


class _XPoolFactors:
    """Per-video quantities of the factored X-Pool similarity (computed once per call).

    ``forms`` [V, M + 1, K] stacks, per video, the Gram matrices of the quadratic forms (G / D,
    G_P, G_Z / D, with the constant factors of ``_finish`` folded in), the vectors of the linear
    forms (2 P p0, 2 g_Z / D, 2 P b3; without the residual FC: G / D, G_P and 2 P b2), and a row
    of ones (the sum of a tile's unnormalised one-head weights).
    """

    def __init__(self, head: XPool, e: Tensor) -> None:
        num_videos, num_frames, dim = e.shape
        heads, hd = head.num_heads, head.head_dim
        self.num_videos, self.num_frames, self.dim = num_videos, num_frames, dim
        self.heads, self.head, self.residual = heads, head, head.residual
        self.basis = kb = heads * num_frames
        self.merged = heads == 1
        self.eps2 = head.layer_norm2.eps
        self.scale = scale = 1.0 / math.sqrt(hd)
        # Several heads: the per-frame output basis, for a tile's text . basis GEMM.
        self.out_basis: Tensor | None = None
        e1 = head.layer_norm1(e)  # [V, F, D]
        wv, bv = head.v_proj.weight, head.v_proj.bias
        wo, bo = head.out_proj.weight, head.out_proj.bias
        g2, b2 = head.layer_norm2.weight, head.layer_norm2.bias
        eye = torch.eye(dim, device=e.device, dtype=e.dtype)
        if head.residual:
            assert head.linear_proj is not None and head.layer_norm3 is not None
            w_lin, b_lin = head.linear_proj.weight, head.linear_proj.bias
            g3, b3 = head.layer_norm3.weight, head.layer_norm3.bias
            # Centring over D and the gains are linear maps of each row: fold them into the
            # weight matrices (x @ _centred(A) == _centred(x @ A)), so each basis is one GEMM.
            w_z = _centred(g2[:, None] * (eye + w_lin.T))  # z = centred(q_basis (I + W^T))
            z0 = _centred(b2 + w_lin @ b2 + b_lin)
            out0 = z0 * g3  # out = (sum_k c_k out_basis_k + out0) / sigma3 + b3
            # The linear forms as products with z: 2 P p0, 2 g_Z / D, 2 P b3 (P = z * g3).
            lin_map = torch.stack([2.0 * g3 * out0, (2.0 / dim) * z0, 2.0 * g3 * b3], dim=1)
            self.c3 = float(z0 @ z0) / dim + head.layer_norm3.eps
            self.out0_b3 = 2.0 * float(out0 @ b3)
            self.b3_sq = float(b3 @ b3)
        else:
            out0, b3 = b2, torch.zeros_like(b2)  # out = sum_k c_k out_basis_k + b2
            lin_map = (2.0 * g2 * b2)[:, None]  # 2 P b2 as a product with u_c (P = u_c * g2)
        self.out0_sq = float(out0 @ out0)
        if heads == 1:
            # Keys are folded into the query (see module docstring): logits = q' . e1.
            self.keys = e1.reshape(num_videos * num_frames, dim)
            w_u, b_u = _centred((wo @ wv).T), _centred(wo @ bv + bo)
            if head.residual:
                # z = u_c W_z = keys (W_u W_z) + b_u W_z: both bases and the linear forms come
                # from one GEMM over the keys, [u_c | z | z lin_map].
                w_uz, b_uz = w_u @ w_z, b_u @ w_z
                w_all = torch.cat([w_u, w_uz, w_uz @ lin_map], dim=1)
                b_all = torch.cat([b_u, b_uz, b_uz @ lin_map])
                # out_basis is affine in the keys (keys P + r), so the text . basis dots come
                # from the keys too, keys @ (P t), next to the logits keys @ q' (see ``tile``).
                text_map, text_bias = w_uz * g3, b_uz * g3
            else:
                w_all = torch.cat([w_u, w_u @ lin_map], dim=1)
                b_all = torch.cat([b_u, b_u @ lin_map])
                text_map, text_bias = w_u * g2, b_u * g2
            # Rows of 16-float multiples: an odd width (2D + 3) halves this GEMM's speed.
            pad = -w_all.shape[1] % 16
            w_all = F.pad(w_all, (0, pad))
            b_all = F.pad(b_all, (0, pad))
            # Text side, one GEMM: q' = (ln1(t) W_q^T + b_q) W_k / sqrt(hd) (key bias dropped:
            # a per-text constant in the logits) = (t A_q) / sigma(t) + c_q with layer_norm1's
            # centring and gain folded into A_q; the dots use t^ = t / |t|, so outputs are cosines.
            ln1 = head.layer_norm1
            w_qk = head.q_proj.weight.T @ head.k_proj.weight * scale
            a_q = ln1.weight[:, None] * w_qk
            # [D, 2D + 16]: A_q, P, then the per-text vectors (r, out0, b3) and zeros (16-aligned).
            text_weight = torch.cat([a_q - a_q.mean(dim=0), text_map.T,
                                     torch.stack([text_bias, out0, b3], dim=1)], dim=1)
            self.text_weight = F.pad(text_weight, (0, -text_weight.shape[1] % 16))
            self.text_width = self.text_weight.shape[1]
            self.text_const = ln1.bias @ w_qk + head.q_proj.bias @ head.k_proj.weight * scale
            self.eps1 = ln1.eps
            # Per block of videos, so the GEMM's output stays in cache for the Gram products.
            block = max(1, _BASIS_ROWS // num_frames)
            buf = e.new_empty(min(block, num_videos) * num_frames * w_all.shape[1])
            bases = (
                (v0, torch.addmm(b_all, self.keys[v0 * kb : (v0 + block) * kb], w_all,
                                 out=buf[: min(block, num_videos - v0) * kb * w_all.shape[1]]
                                 .view(-1, w_all.shape[1])))
                for v0 in range(0, num_videos, block)
            )
        else:
            k = head.k_proj(e1).view(num_videos, num_frames, heads, hd)
            # [H, V*F, hd] so that each head's logits are one GEMM.
            self.keys = k.permute(2, 0, 1, 3).reshape(heads, num_videos * num_frames, hd)
            v = head.v_proj(e1).view(num_videos, num_frames, heads, hd)
            u = torch.einsum("vfhd,ehd->vhfe", v, wo.view(dim, heads, hd)) + bo / heads
            u_c = _centred(u.reshape(num_videos * kb, dim))
            basis = torch.cat([u_c, u_c @ w_z], dim=1) if head.residual else u_c
            tail = basis[:, -dim:] @ lin_map
            bases = iter([(0, torch.cat([basis, tail], dim=1))])
            self.text_vecs = torch.stack([torch.zeros_like(bo), out0, b3], dim=1)  # [D, 3]
            self.text_width = 0
            self.out_basis = basis[:, -dim:] * (g3 if head.residual else g2)
        self.n_quad = 3 if head.residual else 2
        # [V, M, K]: the bmm of this with the attention weights gives every quadratic and linear
        # form a pair needs (the Gram matrices are symmetric, so no transposes).
        n_lin, lin_at = lin_map.shape[1], dim * (2 if head.residual else 1)
        self.forms = e.new_empty(num_videos, self.n_quad * kb + n_lin + 1, kb)
        gain = g3 if head.residual else g2
        gained = e.new_empty(min(max(1, _BASIS_ROWS // num_frames), num_videos) * kb * dim)
        for v0, both in bases:
            n = both.shape[0] // kb
            u3 = both[:, :dim].view(n, kb, dim)
            scaled = gained[: n * kb * dim].view(n, kb, dim) if n * kb * dim <= len(gained) else None
            lin = both[:, lin_at : lin_at + n_lin].view(n, kb, n_lin).transpose(1, 2)
            if head.residual:
                z3 = both[:, dim : 2 * dim].view(n, kb, dim)
                p3 = torch.mul(z3, gain, out=scaled)
                quads = [_gram(u3).div_(dim), _gram(p3), _gram(z3).div_(dim)]
            else:
                quads = [_gram(u3).div_(dim), _gram(torch.mul(u3, gain, out=scaled))]
            ones = u3.new_ones(n, 1, kb)
            torch.cat([*quads, lin, ones], dim=1, out=self.forms[v0 : v0 + n])

    def texts(self, t: Tensor, buf: Tensor | None = None) -> _Texts:
        """Per-chunk text quantities (see ``_Texts``); one head: in ``buf`` when given (flat,
        at least Tc x ``text_weight.shape[1]`` floats), so chunks do not fault in fresh pages."""
        inv_norm = 1.0 / t.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        n, dim = t.shape[0], self.dim
        if self.merged:
            width = self.text_weight.shape[1]
            out = None if buf is None else buf[: n * width].view(n, width)
            # Queries before layer_norm1's scale, P t, the per-text vectors: scaled in place.
            prod = torch.mm(t, self.text_weight, out=out)
            inv_sigma = torch.rsqrt(t.var(dim=-1, unbiased=False, keepdim=True) + self.eps1)
            q = prod[:, :dim].mul_(inv_sigma).add_(self.text_const)
            vecs = prod[:, 2 * dim : 2 * dim + 3].mul_(inv_norm).T.contiguous()
            return _Texts(q, prod[:, dim : 2 * dim].mul_(inv_norm), None, vecs)
        head, hd = self.head, dim // self.heads
        q = head.q_proj(head.layer_norm1(t)) * self.scale
        vecs = (t @ self.text_vecs).mul_(inv_norm).T.contiguous()
        return _Texts(q.view(n, self.heads, hd).permute(1, 2, 0), None, t * inv_norm, vecs)

    def buffers(self, tile_texts: int, tile_videos: int) -> tuple[Tensor, Tensor, Tensor]:
        """Flat buffers for one tile's logits, text . basis dots and forms, reused by every tile."""
        n = tile_texts * tile_videos
        new = self.forms.new_empty
        return new(self.basis * n), new(self.basis * n), new(self.forms.shape[1] * n)

    def tile(self, texts: _Texts, v0: int, v1: int, stats: Tensor,
             bufs: tuple[Tensor, Tensor, Tensor]) -> None:
        """The per-pair forms of the texts against videos v0:v1, into ``stats`` [Vt, R, Tt] (a
        view; rows: the quadratic forms, the linear forms and s, the text . output dot), which
        ``finish`` turns into cosines for all videos of a text tile at once."""
        nv, nf, kb, tt = v1 - v0, self.num_frames, self.basis, texts.vecs.shape[1]
        logits_buf, dots_buf = (b[: nv * kb * tt].view(-1, tt) for b in bufs[:2])
        forms_buf = bufs[2]
        if texts.tp is not None:
            # Attention logits and text . basis dots: two GEMMs against the same keys (one
            # merged GEMM would interleave them, and every pass below is slower on strided rows).
            keys = self.keys[v0 * nf : v1 * nf]
            a = torch.mm(keys, texts.q.T, out=logits_buf).view(nv, nf, tt)
            # Softmax weights left unnormalised (max 1; their sum s is the forms' last row): the
            # forms are homogeneous in them, so ``_finish`` divides by s once per pair. (Also,
            # torch.softmax over a non-last dim rounds differently with the thread count.)
            a.sub_(a.amax(dim=1, keepdim=True)).exp_()
            dots = torch.mm(keys, texts.tp.T, out=dots_buf).view(nv, nf, tt)
        else:
            logits = torch.bmm(self.keys[:, v0 * nf : v1 * nf], texts.q,
                               out=logits_buf.view(self.heads, nv * nf, tt))
            a = logits.view(self.heads, nv, nf, tt)
            a.sub_(a.amax(dim=2, keepdim=True)).exp_()
            a = a.div_(a.sum(dim=2, keepdim=True)).transpose(0, 1).reshape(nv, kb, tt)
            assert self.out_basis is not None and texts.t_hat is not None
            dots = torch.mm(self.out_basis[v0 * kb : v1 * kb], texts.t_hat.T, out=dots_buf)
            dots = dots.view(nv, kb, tt)
        m, nq = self.forms.shape[1], self.n_quad
        torch.sum(dots.mul_(a), dim=1, out=stats[:, -1])
        forms = torch.bmm(self.forms[v0:v1], a, out=forms_buf[: nv * m * tt].view(nv, m, tt))
        # The Gram rows are contracted with the weights once more; the vectors' rows already are.
        torch.sum(forms[:, : nq * kb].view(nv, nq, kb, tt).mul_(a.unsqueeze(1)), dim=2,
                  out=stats[:, :nq])
        stats[:, nq:-1].copy_(forms[:, nq * kb :])

    def finish(self, stats: Tensor, vecs: Tensor, out: Tensor) -> None:
        """Cosines from ``tile``'s forms [V, R, Tt] into ``out`` [V, Tt] (a view)."""
        rows, nq = stats.unbind(1), self.n_quad
        s = rows[-2] if self.merged else None  # the row of ones: sum of unnormalised weights
        self._finish(rows[-1], rows[:nq], rows[nq:-2], s, vecs, out)

    def _finish(self, dot: Tensor, quad: tuple[Tensor, ...], lin: tuple[Tensor, ...],
                s: Tensor | None, vecs: Tensor, out: Tensor | None = None) -> Tensor:
        """Cosine of each pair from its forms (see ``forms``; 1 / D and 2 are folded in there).

        The weights sum to 1 (``s`` None) or to s: every form is then s (linear) or s^2
        (quadratic) times its normalised value, and r2 = 1 / (s sigma2) absorbs the factors.
        """
        t_r, t_out0, t_b3 = vecs.unbind(0)
        if s is None:
            r2 = (quad[0] + self.eps2).rsqrt_()
            num = dot.add_(t_r)  # each head's weights sum to 1: the offset r counts once
        else:
            r2 = torch.addcmul(quad[0], s, s, value=self.eps2).rsqrt_()
            num = torch.addcmul(dot, s, t_r)
        num = torch.addcmul(t_out0, num, r2)  # t . out before layer_norm3
        sq = torch.addcmul(lin[0], quad[1], r2).mul_(r2).add_(self.out0_sq)
        if self.residual:
            inv3 = torch.addcmul(lin[1], quad[2], r2).mul_(r2).add_(self.c3).rsqrt_()
            num = torch.addcmul(t_b3, num, inv3)
            sq = torch.addcmul(torch.mul(lin[2], r2).add_(self.out0_b3), sq, inv3)
            sq = sq.mul_(inv3).add_(self.b3_sq)
        # max(|out|, eps) as the plain path's F.normalize: sqrt(max(|out|^2, eps^2)).
        inv = sq.clamp_min_(_NORM_EPS * _NORM_EPS).rsqrt_()
        return torch.mul(num, inv, out=out) if out is not None else num.mul_(inv)

    def pairs(self, texts: _Texts, text_idx: Tensor, video_idx: Tensor) -> Tensor:
        """Cosines of the pairs (texts[text_idx[p]], video video_idx[p]): [P]."""
        nf, kb, heads = self.num_frames, self.basis, self.heads
        n = video_idx.shape[0]
        if heads == 1:
            assert texts.tp is not None
            keys = self.keys.view(self.num_videos, nf, self.dim).index_select(0, video_idx)
            rhs = torch.stack([texts.q.index_select(0, text_idx),
                               texts.tp.index_select(0, text_idx)], dim=2)
            prod = torch.bmm(keys, rhs)  # [P, F, 2]: logits and text . basis dots
            a = torch.softmax(prod[..., 0], dim=1)  # [P, K]
            dot = (prod[..., 1] * a).sum(dim=1)
        else:
            hd = self.keys.shape[-1]
            keys = self.keys.view(heads, self.num_videos, nf, hd).index_select(1, video_idx)
            logits = torch.einsum("hpfd,hdp->phf", keys, texts.q[:, :, text_idx])
            a = torch.softmax(logits, dim=2).reshape(n, kb)
            assert self.out_basis is not None and texts.t_hat is not None
            basis = self.out_basis.view(self.num_videos, kb, self.dim).index_select(0, video_idx)
            dot = (torch.bmm(basis, texts.t_hat[text_idx].unsqueeze(2)).squeeze(2) * a).sum(dim=1)
        forms = torch.bmm(self.forms.index_select(0, video_idx), a.unsqueeze(2)).squeeze(2)  # [P, M]
        nq = self.n_quad
        quad = (forms[:, : nq * kb].view(n, nq, kb) * a.unsqueeze(1)).sum(dim=2)
        lin = forms[:, nq * kb : -1].unbind(1)
        return self._finish(dot, quad.unbind(1), lin, None, texts.vecs[:, text_idx])


def _xpool_chunks(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int,
    out: Tensor | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """(first text, [Tc, V] cosines) per chunk; written into rows of ``out`` when given."""
    num_texts, num_videos = t.shape[0], e.shape[0]
    factors = _XPoolFactors(head, e)
    chunk, tile_texts, tile_videos = _xpool_plan(
        num_texts, num_videos, factors.basis, factors.forms.shape[1] - 1, chunk_size, memory_budget
    )
    bufs = factors.buffers(tile_texts, tile_videos)
    text_buf = t.new_empty(min(chunk, num_texts) * factors.text_width)
    # Per text tile, the forms of many video tiles (up to _STATS_BYTES), so that the per-pair
    # steps run once over [Vg, Tt] instead of once per tile.
    num_stats = factors.n_quad + factors.forms.shape[1] - factors.n_quad * factors.basis + 1
    group = tile_videos * max(1, _STATS_BYTES // (4 * num_stats * tile_texts * tile_videos))
    stats = t.new_empty(min(group, num_videos), num_stats, tile_texts)
    for s0 in range(0, num_texts, chunk):
        texts = factors.texts(t[s0 : s0 + chunk], text_buf)
        n = texts.vecs.shape[1]
        block = out[s0 : s0 + n] if out is not None else t.new_empty(n, num_videos)
        for a in range(0, n, tile_texts):
            rows = texts.rows(a, a + tile_texts)
            for g0 in range(0, num_videos, group):
                g1 = min(g0 + group, num_videos)
                tile_stats = stats[: g1 - g0, :, : rows.vecs.shape[1]]
                for v0 in range(g0, g1, tile_videos):
                    v1 = min(v0 + tile_videos, g1)
                    factors.tile(rows, v0, v1, tile_stats[v0 - g0 : v1 - g0], bufs)
                factors.finish(tile_stats, rows.vecs, block[a : a + tile_texts, g0:g1].T)
        yield s0, block


def _xpool_similarity(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int
) -> Tensor:
    out = t.new_empty(t.shape[0], e.shape[0])
    for _ in _xpool_chunks(head, t, e, chunk_size, memory_budget, out):
        pass
    return out


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
    _check_chunk(chunk_size)
    t, e = _check(pooling, text_embeds, frame_embeds)
    if isinstance(pooling, XPool):
        with _eval_mode(pooling):
            # The generator is consumed inside the context, so the head stays in eval mode.
            yield from _xpool_chunks(pooling, t, e, chunk_size, memory_budget)
        return
    step = chunk_size or max(1, t.shape[0])
    for s0 in range(0, t.shape[0], step):
        yield s0, similarity_matrix(pooling, t[s0 : s0 + step], e, None, memory_budget)


def _frame_weighting_similarity(
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
    chunk, block = _tiles(
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
                norm = (sq.clamp_min(0.0).sqrt() / k).clamp_min(_NORM_EPS)
            else:
                w = torch.softmax(cos / head.temperature, dim=1)
                num = (w * cos).sum(dim=1)
                sq = (torch.bmm(gram[v0:v1], w) * w).sum(dim=1)
                norm = sq.clamp_min(0.0).sqrt().clamp_min(_NORM_EPS)
            out[s0 : s0 + n, v0:v1] = (num / norm).T
    return out


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
        _, e = _check(pooling, frame_embeds.new_zeros(1, frame_embeds.shape[-1]), frame_embeds)
        self.pooling, self.frames, self.memory_budget = pooling, e, memory_budget
        self.num_videos = e.shape[0]
        self._factors: _XPoolFactors | None = None
        self._pooled: Tensor | None = None
        with _eval_mode(pooling):
            if isinstance(pooling, XPool):
                self._factors = _XPoolFactors(pooling, e)
            elif not pooling.text_conditioned:
                pooled = torch.cat([pooling(e[:1, 0], e[i : i + 1024]) for i in range(0, len(e), 1024)])
                self._pooled = F.normalize(pooled, dim=-1)

    def score(self, text_embeds: Tensor, candidates: Tensor) -> Tensor:
        """[T, K] cosines of text i with video ``candidates[i, k]`` (-inf where the index is -1)."""
        t, _ = _check(self.pooling, text_embeds, self.frames[:0])
        cand = torch.as_tensor(candidates, dtype=torch.long, device=t.device)
        if cand.dim() != 2 or cand.shape[0] != t.shape[0]:
            raise XPoolError(f"candidates must be [T, K] with T = {t.shape[0]}, got {tuple(cand.shape)}")
        if cand.numel() and (int(cand.max()) >= self.num_videos or int(cand.min()) < -1):
            raise XPoolError(f"candidates hold indices outside [0, {self.num_videos}) (-1 = none)")
        valid = cand >= 0
        idx = cand.clamp_min(0)
        num_texts, k = cand.shape
        out = torch.empty(num_texts, k, dtype=torch.float32, device=t.device)
        with _eval_mode(self.pooling):
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
