"""X-Pool's exact similarities by the factored computation (the derivation: `xpool.similarity`'s
docstring and docs/architecture.md, "Fast exact similarity"): per-video factors once, then per
(text, video) pair O(K^2) work in cache-sized tiles."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from xpool.model.pooling import XPool
from xpool.similarity import base
from xpool.similarity.base import NORM_EPS

__all__ = ["XPoolFactors", "xpool_chunks", "xpool_plan", "xpool_similarity"]


class _Texts(NamedTuple):
    """Per-chunk text quantities of the X-Pool path (``XPoolFactors.texts``)."""

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


def xpool_plan(num_texts: int, num_videos: int, basis: int, num_forms: int,
                chunk_size: int | None, memory_budget: int) -> tuple[int, int, int]:
    """(texts per chunk, texts per tile, videos per tile) of the X-Pool path.

    Chunks (what ``similarity_chunks`` yields) are sized from ``memory_budget`` as for the other
    heads; inside a chunk, tiles of ``_TILE_TEXTS`` texts and as many videos as keep the tile's
    temporaries (about 3K + M + 8 floats per pair) within ``_TILE_BYTES`` and ``memory_budget``.
    """
    chunk, _ = base.tiles(num_texts, num_videos, basis, basis * (num_forms // basis + 6) + 8,
                      chunk_size, memory_budget)
    tile_texts = min(chunk, _TILE_TEXTS)
    per_pair = 4 * (3 * basis + num_forms + 8)
    pairs = max(1, min(_TILE_BYTES, memory_budget) // per_pair)
    tile_videos = max(pairs // tile_texts, -(-base.MIN_GEMM_ROWS // max(1, basis)))
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


class XPoolFactors:
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
        inv_norm = 1.0 / t.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
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
        inv = sq.clamp_min_(NORM_EPS * NORM_EPS).rsqrt_()
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


def xpool_chunks(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int,
    out: Tensor | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """(first text, [Tc, V] cosines) per chunk; written into rows of ``out`` when given."""
    num_texts, num_videos = t.shape[0], e.shape[0]
    factors = XPoolFactors(head, e)
    chunk, tile_texts, tile_videos = xpool_plan(
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


def xpool_similarity(
    head: XPool, t: Tensor, e: Tensor, chunk_size: int | None, memory_budget: int
) -> Tensor:
    out = t.new_empty(t.shape[0], e.shape[0])
    for _ in xpool_chunks(head, t, e, chunk_size, memory_budget, out):
        pass
    return out
