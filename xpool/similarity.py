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
per-text constant that the softmax ignores), so keys are the layer-normed frames themselves.
``residual=False`` (no residual FC) is the same computation with the layer_norm3 step left out.

Work is tiled over (text chunk, video block), with tiles sized so their temporaries fit a
memory budget (``memory_budget``, default 512 MB). Peak memory is the per-frame vectors
(O(V * F * D)), one tile's temporaries and the [T, V] output: never O(T * V * D).

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
    tn, pn = F.normalize(t, dim=-1), F.normalize(pooled, dim=-1).T
    if chunk_size is None or chunk_size >= t.shape[0]:
        return tn @ pn
    return torch.cat([tn[i : i + chunk_size] @ pn for i in range(0, t.shape[0], chunk_size)])


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

    Tiles are as large as the budget allows: every tile costs a few dozen tensor operations, and
    on a busy machine each parallel operation can stall for a scheduler time slice, so fewer,
    larger operations are both faster and more predictable than cache-sized ones.
    """
    pairs = max(1, memory_budget // (4 * max(1, per_pair_floats)))
    if chunk_size is None:
        chunk_size = max(64, pairs // max(1, num_videos))
    chunk_size = max(1, min(chunk_size, max(num_texts, 1)))
    video_block = max(1, min(num_videos, pairs // chunk_size))
    # A GEMM with very few rows runs far below peak; keep blocks of at least ~256 rows.
    video_block = max(video_block, min(num_videos, -(-256 // max(1, basis))))
    return chunk_size, video_block


_Texts = tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]


def _centred(x: Tensor) -> Tensor:
    """Each row minus its mean (over the last dimension)."""
    return x - x.mean(dim=-1, keepdim=True)


class _XPoolFactors:
    """Per-video quantities of the factored X-Pool similarity (computed once per call)."""

    def __init__(self, head: XPool, e: Tensor) -> None:
        num_videos, num_frames, dim = e.shape
        heads, hd = head.num_heads, head.head_dim
        self.num_videos, self.num_frames, self.dim = num_videos, num_frames, dim
        self.heads = heads
        self.basis = heads * num_frames
        k_basis = self.basis

        e1 = head.layer_norm1(e)  # [V, F, D]
        wv, bv = head.v_proj.weight, head.v_proj.bias
        wo, bo = head.out_proj.weight, head.out_proj.bias
        g2, b2 = head.layer_norm2.weight, head.layer_norm2.bias
        self.eps2 = head.layer_norm2.eps
        self.residual = head.residual
        eye = torch.eye(dim, device=e.device, dtype=e.dtype)
        # Centring over D and the gains are linear maps of each row: fold them into the weight
        # matrices (x @ _centred(A) == _centred(x @ A)), so each basis is one GEMM, no passes.
        w_z = None
        if head.residual:
            assert head.linear_proj is not None and head.layer_norm3 is not None
            w_lin, b_lin = head.linear_proj.weight, head.linear_proj.bias
            # z = centred(q_basis + q_basis W^T) with q_basis = u_c * g2.
            w_z = _centred(g2[:, None] * (eye + w_lin.T))
        self.merged = heads == 1
        if heads == 1:
            # Keys are folded into the query (see module docstring): logits = q' . e1.
            self.keys = e1.reshape(num_videos * num_frames, dim)
            w_ov = wo @ wv
            w_u, b_u = _centred(w_ov.T), _centred(wo @ bv + bo)
            u_c = torch.addmm(b_u, self.keys, w_u).view(num_videos, k_basis, dim)
            # out_basis is affine in the keys (out_basis = keys P + r), so the text . basis dots
            # come from the same GEMM as the attention logits: keys @ [q', P t] (see ``tile``).
            if w_z is not None:
                g3 = head.layer_norm3.weight
                self.text_map = (w_u @ w_z) * g3  # P
                self.text_bias = (b_u @ w_z) * g3  # r
            else:
                self.text_map, self.text_bias = w_u * g2, b_u * g2
        else:
            k = head.k_proj(e1).view(num_videos, num_frames, heads, hd)
            # [H, V*F, hd] so that each head's logits are one GEMM.
            self.keys = k.permute(2, 0, 1, 3).reshape(heads, num_videos * num_frames, hd)
            v = head.v_proj(e1).view(num_videos, num_frames, heads, hd)
            u = torch.einsum("vfhd,ehd->vhfe", v, wo.view(dim, heads, hd)) + bo / heads
            u = u.reshape(num_videos, k_basis, dim)
            u_c = u - u.mean(dim=-1, keepdim=True)

        rows = [u_c @ u_c.transpose(1, 2)]  # G: variance of o (layer_norm2)
        if head.residual:
            assert w_z is not None
            z_basis = u_c @ w_z
            z0 = b2 + w_lin @ b2 + b_lin
            z0 = z0 - z0.mean()
            g3, b3 = head.layer_norm3.weight, head.layer_norm3.bias
            self.eps3 = head.layer_norm3.eps
            out_basis = z_basis * g3  # out = (sum_k c_k out_basis_k + out0) / sigma3 + b3
            out0 = z0 * g3
            rows.append(out_basis @ out_basis.transpose(1, 2))  # |out - b3|^2 (times sigma3^2)
            rows.append(z_basis @ z_basis.transpose(1, 2))  # variance of z (layer_norm3)
            rows.append((out_basis @ out0).unsqueeze(1))
            rows.append((z_basis @ z0).unsqueeze(1))
            rows.append((out_basis @ b3).unsqueeze(1))
            self.z0_sq = float(z0 @ z0)
            self.out0_b3 = float(out0 @ b3)
            self.b3 = b3
            self.b3_sq = float(b3 @ b3)
        else:
            out_basis = u_c * g2  # out = sum_k c_k out_basis_k + b2
            out0 = b2
            rows.append(out_basis @ out_basis.transpose(1, 2))
            rows.append((out_basis @ out0).unsqueeze(1))
        self.n_quad = 3 if head.residual else 2
        self.out0 = out0
        self.out0_sq = float(out0 @ out0)
        # [V, M, K]: the bmm of this with the attention weights gives every quadratic and linear
        # form a pair needs (the Gram matrices are symmetric, so no transposes).
        self.forms = torch.cat(rows, dim=1).contiguous()
        # The one-head tile gets its text . basis dots from the keys (see above).
        self.out_basis = None if self.merged else out_basis.reshape(num_videos * k_basis, dim)

        # Text side: q' = ((ln1(t) W_q^T + b_q) W_k) / sqrt(hd) for one head (key bias dropped:
        # it adds a per-text constant to the logits); per-head q / sqrt(hd) otherwise.
        self.head = head
        self.scale = 1.0 / math.sqrt(hd)

    def texts(self, t: Tensor) -> _Texts:
        """Per-chunk text quantities: (texts, queries, t . out0, t . b3, P t, r . t, [q', P t]^T).

        The last three only for one head (``merged``), else None.
        """
        head = self.head
        q = head.q_proj(head.layer_norm1(t)) * self.scale
        tp = t_r = rhs = None
        if self.heads == 1:
            q = q @ head.k_proj.weight  # [Tc, D]
            tp, t_r = t @ self.text_map.T, t @ self.text_bias
            rhs = torch.cat([q, tp]).T.contiguous()  # [D, 2 Tc]: one GEMM per tile
        else:
            hd = self.dim // self.heads
            q = q.view(t.shape[0], self.heads, hd).permute(1, 2, 0)  # [H, hd, Tc]
        t_b3 = t @ self.b3 if self.residual else t.new_zeros(t.shape[0])
        return t, q, t @ self.out0, t_b3, tp, t_r, rhs

    def tile(self, texts: _Texts, v0: int, v1: int) -> Tensor:
        """Cosines (times |t|) of a text chunk against videos v0:v1: [Vb, Tc]."""
        t, q, t_out0, t_b3, _, t_r, rhs = texts
        nv, nf, kb, heads = v1 - v0, self.num_frames, self.basis, self.heads
        tc = t.shape[0]
        if heads == 1:
            assert rhs is not None and t_r is not None
            # One GEMM: attention logits (first Tc columns) and text . basis dots (the rest).
            prod = (self.keys[v0 * nf : v1 * nf] @ rhs).view(nv, nf, 2 * tc)
            a = torch.softmax(prod[..., :tc], dim=1)  # [Vb, F, Tc]
        else:
            keys = self.keys[:, v0 * nf : v1 * nf]
            logits = torch.bmm(keys, q).view(heads, nv, nf, tc)
            a = torch.softmax(logits, dim=2).transpose(0, 1).reshape(nv, kb, tc)
        # Rows of self.forms are Gram matrices (contracted with a once more below) followed by
        # vectors (whose products with a are already the linear forms).
        forms = torch.bmm(self.forms[v0:v1], a)  # [Vb, M, Tc]
        n_quad = self.n_quad
        quad = forms[:, : n_quad * kb].view(nv, n_quad, kb, tc).mul_(a.unsqueeze(1)).sum(dim=2)
        lin = forms[:, n_quad * kb :]
        if heads == 1:
            # Each head's weights sum to 1, so the basis offset r contributes r . t once.
            dot = (prod[..., tc:] * a).sum(dim=1).add_(t_r)
        else:
            assert self.out_basis is not None
            text_dots = (self.out_basis[v0 * kb : v1 * kb] @ t.T).view(nv, kb, tc)
            dot = text_dots.mul_(a).sum(dim=1)
        return self._finish(dot, quad[:, 0], quad[:, 1], quad[:, 2] if self.residual else None,
                            lin, 1, t_out0, t_b3)

    def _finish(self, dot: Tensor, q_g: Tensor, q_out: Tensor, q_z: Tensor | None, lin: Tensor,
                axis: int, t_out0: Tensor, t_b3: Tensor) -> Tensor:
        """Cosine (times |t|) from a pair's forms; ``lin``'s form index is dimension ``axis``."""
        inv2 = torch.rsqrt(q_g / self.dim + self.eps2)  # 1 / sigma2
        if self.residual:
            assert q_z is not None
            l_out, l_z, l_b3 = lin.select(axis, 0), lin.select(axis, 1), lin.select(axis, 2)
            var3 = (q_z * inv2 + 2.0 * l_z) * inv2 + self.z0_sq
            inv3 = torch.rsqrt(var3 / self.dim + self.eps3)
            num = (dot * inv2 + t_out0) * inv3 + t_b3
            sq = ((q_out * inv2 + 2.0 * l_out) * inv2 + self.out0_sq) * inv3 * inv3
            sq = sq + 2.0 * (l_b3 * inv2 + self.out0_b3) * inv3 + self.b3_sq
        else:
            l_out = lin.select(axis, 0)
            num = dot * inv2 + t_out0
            sq = (q_out * inv2 + 2.0 * l_out) * inv2 + self.out0_sq
        return num / sq.clamp_min(0.0).sqrt().clamp_min(_NORM_EPS)

    def pairs(self, texts: _Texts, text_idx: Tensor, video_idx: Tensor) -> Tensor:
        """Cosines (times |t|) of the pairs (texts[text_idx[p]], video video_idx[p]): [P]."""
        t, q, t_out0, t_b3, tp, t_r, _ = texts
        nf, kb, heads = self.num_frames, self.basis, self.heads
        n = video_idx.shape[0]
        if heads == 1:
            assert tp is not None and t_r is not None
            keys = self.keys.view(self.num_videos, nf, self.dim).index_select(0, video_idx)
            rhs = torch.stack([q.index_select(0, text_idx), tp.index_select(0, text_idx)], dim=2)
            prod = torch.bmm(keys, rhs)  # [P, F, 2]: logits and text . basis dots
            a = torch.softmax(prod[..., 0], dim=1)  # [P, K]
        else:
            hd = self.keys.shape[-1]
            keys = self.keys.view(heads, self.num_videos, nf, hd).index_select(1, video_idx)
            qs = q[:, :, text_idx]  # [H, hd, P]
            logits = torch.einsum("hpfd,hdp->phf", keys, qs)
            a = torch.softmax(logits, dim=2).reshape(n, kb)
        forms = torch.bmm(self.forms.index_select(0, video_idx), a.unsqueeze(2)).squeeze(2)  # [P, M]
        n_quad = self.n_quad
        quad = (forms[:, : n_quad * kb].view(n, n_quad, kb) * a.unsqueeze(1)).sum(dim=2)
        lin = forms[:, n_quad * kb :]
        if heads == 1:
            dot = (prod[..., 1] * a).sum(dim=1) + t_r.index_select(0, text_idx)
        else:
            assert self.out_basis is not None
            basis = self.out_basis.view(self.num_videos, kb, self.dim).index_select(0, video_idx)
            dot = (torch.bmm(basis, t[text_idx].unsqueeze(2)).squeeze(2) * a).sum(dim=1)
        return self._finish(dot, quad[:, 0], quad[:, 1], quad[:, 2] if self.residual else None,
                            lin, 1, t_out0[text_idx], t_b3[text_idx])


def _xpool_chunks(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int
) -> Iterator[tuple[int, Tensor]]:
    num_texts, num_videos = t.shape[0], e.shape[0]
    factors = _XPoolFactors(head, e)
    kb = factors.basis
    per_pair = kb * (factors.forms.shape[1] // kb + 6) + 8
    chunk, block = _tiles(num_texts, num_videos, kb, per_pair, chunk_size, memory_budget)
    text_norm = t.norm(dim=-1).clamp_min(_NORM_EPS)
    for s0 in range(0, num_texts, chunk):
        tc = t[s0 : s0 + chunk]
        texts = factors.texts(tc)
        out = torch.empty(tc.shape[0], num_videos, dtype=torch.float32, device=t.device)
        for v0 in range(0, num_videos, block):
            v1 = min(v0 + block, num_videos)
            out[:, v0:v1] = factors.tile(texts, v0, v1).T
        out /= text_norm[s0 : s0 + chunk, None]
        yield s0, out


def _xpool_similarity(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int
) -> Tensor:
    out = torch.empty(t.shape[0], e.shape[0], dtype=torch.float32, device=t.device)
    for s0, block in _xpool_chunks(head, t, e, chunk_size, memory_budget):
        out[s0 : s0 + block.shape[0]] = block
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
                norms = t.norm(dim=-1).clamp_min(_NORM_EPS)
                for s0 in range(0, num_texts, step):
                    tc = t[s0 : s0 + step]
                    texts = f.texts(tc)
                    rows = torch.arange(tc.shape[0], device=t.device).repeat_interleave(k)
                    flat = f.pairs(texts, rows, idx[s0 : s0 + step].reshape(-1))
                    out[s0 : s0 + step] = flat.view(tc.shape[0], k) / norms[s0 : s0 + step, None]
            elif self._pooled is not None:
                out = torch.einsum("td,tkd->tk", F.normalize(t, dim=-1), self._pooled[idx])
            else:
                for i in range(num_texts):
                    out[i] = similarity_matrix(self.pooling, t[i : i + 1], self.frames[idx[i]])[0]
        return out.masked_fill(~valid, -torch.inf)
