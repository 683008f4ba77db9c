"""Matrix products whose float32 result does not depend on the CPU they run on.

Why: torch hands every float32 matrix product on the CPU (`mm`, `addmm`, `bmm`, `baddbmm`, the
convolutions) to Intel's MKL or to oneDNN. Both choose their kernels, blocking and summation order
by CPU vendor, model and cache size, below the instruction-set caps of `xpool.determinism`: the
same capped run gave one pretrained tiny CLIP on an Intel Xeon and another on an AMD EPYC. The
unary ops MKL's vector math computes (`sqrt`, `exp`, `log`, ...) are replaced in the same block,
by `xpool.exact_math`. Every other op the study runs is ATen's own code, which at a fixed
capability and thread count executes the same instructions on both.

How: `gemm: exact` replaces those kernels, for float32 CPU tensors, with products computed
*exactly* and rounded once. Each operand is rounded to `b` significant bits against a power-of-two
scale shared along the summed dimension (per row of A, per column of B), so it is an integer
below 2**b times that scale. Every product is then an integer below 2**(2b), and every partial
sum of K of them an integer below 2**(2b + log2 K) <= 2**52 with

    b = min(22, (52 - ceil(log2 K)) // 2),

which float64 represents exactly. An exact sum is the same in any order, so MKL's float64 GEMM
returns the same bits whatever its blocking, threads or code path; the scales are powers of two,
so unscaling is exact too, and the one rounding to float32 at the end is IEEE round-to-nearest.
Products over more than 2**20 terms (b < 16) are summed in slices of 2**20, the slices added in
a fixed order.

Accuracy: the rounding error of each operand element is at most 2**-(b+1) of its row's (column's)
largest magnitude. For K <= 256 (b = 22) the largest error against a float64 product of 32 x K
by K x 32 Gaussian matrices was 1.3x that of torch's float32 kernels; fewer bits are left for
longer sums: 3.8x at K = 1,024, 17x at 5,000 and 26x at 65,536 (the tiny CLIP's convolution
weight gradients), 1.5e-5 of the largest entry there. Deterministic is the point, not more
accurate; `tests/test_exact_gemm.py` holds the bound.

Coverage: the kernels are overridden at the CPU dispatch key (`torch.library`), so autograd's
backward products go through them too and no other op pays anything. Fused attention
(`scaled_dot_product_attention`'s flash kernel) and `nn.MultiheadAttention`'s inference fast path
call BLAS from inside C++, so inside `exact_gemm()` the first runs as its plain math
decomposition and the second is switched off. The out= forms are overridden too, except
`baddbmm`'s, which the exact path itself uses for its float64 product; `tests/test_exact_gemm.py`
audits every op of a forward and backward pass of both tiny backbones and of every pooling head,
and of their evaluation, for any float32 product or fused kernel left to a vendor library.

Cost: float64 GEMM is about 2.5x float32 on these CPUs, plus the rounding passes and, for small
products, about 0.13 ms per call (0.12-0.14 ms measured for a 32 x 128 by 128 x 128 product on
one thread, against 0.013 ms for torch's float32 kernel); the README ("Bit-identical results") gives what it
adds to pretraining and to the study's head trainings.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from xpool.config import GEMM_MODES
from xpool.errors import XPoolError
from xpool.exact_math import MATH_FUNCTIONS, MATH_REFUSED

__all__ = ["exact_bmm", "exact_gemm", "exact_gemm_active", "gemm_key", "gemm_mode"]

# Bump when an exact kernel's bits change, so caches made by the old kernels are not reused.
# 2: sqrt, exp and log computed without MKL's vector math (xpool.exact_math).
EXACT_VERSION = 2

MAX_BITS = 22
MIN_BITS = 16
F64 = torch.float64

_LOCK = threading.Lock()
_registration: torch.library.Library | None = None  # held while any exact_gemm() is open
_depth = 0


def _bits(k: int) -> int:
    """Significant bits per operand for sums of `k` products to stay exact in float64."""
    return min(MAX_BITS, (52 - math.ceil(math.log2(max(k, 2)))) // 2)


def _quantize(x: Tensor, dims: Sequence[int], bits: int) -> tuple[Tensor, Tensor]:
    """(q, s): q holding integers |q| <= 2**bits and float64 powers of two s with x ~= q * s,
    one scale per slice of `x` over `dims` (the summed dimensions).

    q stays float32, which holds those integers exactly (bits <= 22 < 24): the copies and
    patch extraction before the product then move half the bytes, and the conversion to
    float64 at the product is exact. The scales come from the float32 exponent field of each
    slice's largest magnitude (E, so top < 2**(E - 126)), written straight into float bit
    patterns: exact, and few ops, which is what a small product costs here. E is floored at
    bits - 1 so that all-zero or subnormal slices get a finite scale (2**127) instead of
    0 * inf = NaN."""
    # abs().amax() is the same exact maximum as vector_norm(inf), about 10x faster here.
    top = x.abs().amax(dim=tuple(dims), keepdim=True)
    biased = (top.view(torch.int32) >> 23).clamp_(min=bits - 1)
    up = ((bits + 253 - biased) << 23).view(torch.float32)  # 2**(bits - E + 126)
    down = ((biased.to(torch.int64) + (1023 - 126 - bits)) << 52).view(F64)  # its inverse
    return torch.mul(x, up).round_(), down


def exact_bmm(a: Tensor, b: Tensor) -> Tensor:
    """[B, M, K] @ [B, K, N] of float32 tensors as float64, every partial sum exact (see above)."""
    k = a.shape[-1]
    bits = _bits(k)
    if bits < MIN_BITS:
        step = 1 << (52 - 2 * MIN_BITS)
        out = exact_bmm(a[..., :step], b[..., :step, :])
        for k0 in range(step, k, step):
            out.add_(exact_bmm(a[..., k0:k0 + step], b[..., k0:k0 + step, :]))
        return out
    qa, sa = _quantize(a, (-1,), bits)
    qb, sb = _quantize(b, (-2,), bits)
    return _f64_bmm(qa.to(F64), qb.to(F64)).mul_(sa).mul_(sb)


def _f64_bmm(a: Tensor, b: Tensor) -> Tensor:
    """float64 [B, M, K] @ [B, K, N] by torch's own kernel: `baddbmm`'s out= form with beta 0,
    the one product this module leaves to MKL (every other form is overridden)."""
    out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=F64)
    return torch.baddbmm(out, a, b, beta=0, out=out)


def _check(*tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32:
            raise XPoolError(f"gemm: exact supports float32 matrix products on the CPU, got "
                             f"{t.dtype}; set gemm: native (or model.gemm=native) for other "
                             f"dtypes")


def _finish(p: Tensor, bias: Tensor | None, beta: float, alpha: float) -> Tensor:
    if alpha != 1:
        p.mul_(alpha)
    if bias is not None and beta != 0:
        p.add_(bias.to(F64), alpha=beta)
    return p.to(torch.float32)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    _check(a, b)
    return exact_bmm(a.unsqueeze(0), b.unsqueeze(0))[0].to(torch.float32)


def _addmm(bias: Tensor, a: Tensor, b: Tensor, *, beta: float = 1, alpha: float = 1) -> Tensor:
    _check(bias, a, b)
    return _finish(exact_bmm(a.unsqueeze(0), b.unsqueeze(0))[0], bias, beta, alpha)


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    _check(a, b)
    return exact_bmm(a, b).to(torch.float32)


def _baddbmm(bias: Tensor, a: Tensor, b: Tensor, *, beta: float = 1,
             alpha: float = 1) -> Tensor:
    _check(bias, a, b)
    return _finish(exact_bmm(a, b), bias, beta, alpha)


def _mv(a: Tensor, v: Tensor) -> Tensor:
    _check(a, v)
    return exact_bmm(a.unsqueeze(0), v.view(1, -1, 1))[0, :, 0].to(torch.float32)


def _addmv(bias: Tensor, a: Tensor, v: Tensor, *, beta: float = 1, alpha: float = 1) -> Tensor:
    _check(bias, a, v)
    return _finish(exact_bmm(a.unsqueeze(0), v.view(1, -1, 1))[0, :, 0], bias, beta, alpha)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    _check(a, b)
    return exact_bmm(a.view(1, 1, -1), b.view(1, -1, 1)).reshape(()).to(torch.float32)


def _conv_shape(inp: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], transposed: bool, groups: int) -> tuple[int, ...]:
    _check(inp, weight)
    if transposed or inp.dim() != 4 or groups != 1:
        raise XPoolError("gemm: exact supports 2-D, non-transposed, ungrouped convolutions (the "
                         "tiny CLIP's); set gemm: native for this model")
    n, c, h, w = inp.shape
    o, _, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return n, c, h, w, o, kh, kw, oh, ow


def _patches(x: Tensor, kh: int, kw: int, stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int]) -> Tensor:
    """im2col: [N, C*kh*kw, L] float64 patches of the float32 `x`, rows ordered (c, kh, kw) and
    columns by output position, as `aten.im2col` lays them out.

    One strided copy from a zero-padded view, converting to float64 as it goes: it only moves
    values, so the patches equal im2col's bit for bit, in about a third of the time of ATen's
    im2col loop followed by a separate conversion (`bench/exact_conv.py`)."""
    n, c = x.shape[:2]
    if padding[0] or padding[1]:
        x = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    x = x.contiguous()
    hp, wp = x.shape[2:]
    oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = x.stride()
    view = x.as_strided((n, c, kh, kw, oh, ow), (sn, sc, sh * dilation[0], sw * dilation[1],
                                                 sh * stride[0], sw * stride[1]))
    return torch.empty(view.shape, dtype=F64).copy_(view).view(n, c * kh * kw, oh * ow)


def _convolution(inp: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                 output_padding: Sequence[int], groups: int) -> Tensor:
    n, c, _, _, o, kh, kw, oh, ow = _conv_shape(inp, weight, stride, padding, dilation,
                                                transposed, groups)
    bits = _bits(c * kh * kw)
    # Scales shared along the summed (c, kh, kw): one per sample, one per output channel. The
    # input is rounded before the patches are taken, which only copies.
    qx, sx = _quantize(inp, (1, 2, 3), bits)
    qw, sw = _quantize(weight.reshape(o, -1), (1,), bits)
    cols = _patches(qx, kh, kw, stride, padding, dilation)
    out = _f64_bmm(qw.to(F64).expand(n, -1, -1), cols)
    out.mul_(sw).mul_(sx.view(n, 1, 1))
    if bias is not None:
        out.add_(bias.to(F64).view(1, -1, 1))
    return out.to(torch.float32).view(n, o, oh, ow)


def _convolution_backward(grad: Tensor, inp: Tensor, weight: Tensor,
                          bias_sizes: Sequence[int] | None, stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                          output_padding: Sequence[int], groups: int,
                          output_mask: Sequence[bool]) -> tuple[Tensor | None, ...]:
    n, c, h, w, o, kh, kw, oh, ow = _conv_shape(inp, weight, stride, padding, dilation,
                                                transposed, groups)
    _check(grad)
    grad_in = grad_w = grad_b = None
    if output_mask[0]:
        # Patches of the input gradient, W^T @ grad (summed over o), then col2im adds the
        # overlapping patches in ATen's fixed loop order.
        cols = exact_bmm(weight.reshape(o, -1).t().unsqueeze(0).expand(n, -1, -1),
                         grad.reshape(n, o, -1)).to(torch.float32)
        grad_in = torch.ops.aten.col2im(cols, [h, w], [kh, kw], list(dilation), list(padding),
                                        list(stride))
    if output_mask[1]:
        # Summed over samples and positions: scales per output channel of grad and per input
        # channel of the input (a patch row's channel), both shared along that sum.
        bits = _bits(n * oh * ow)
        if bits < MIN_BITS:
            raise XPoolError(f"gemm: exact convolution weight gradient over {n * oh * ow} "
                             f"positions exceeds the exact range; use a smaller batch or "
                             f"gemm: native")
        qg, sg = _quantize(grad, (0, 2, 3), bits)
        qx, sx = _quantize(inp, (0, 2, 3), bits)
        cols = _patches(qx, kh, kw, stride, padding, dilation)  # [N, C*kh*kw, L]
        # One product per sample, then the sum over samples: every partial sum of the whole
        # N * L terms is an exact integer (bits were chosen for N * L), so splitting the sum
        # there changes no bit and saves transposing copies of the patches.
        lhs = qg.reshape(n, o, -1).to(F64)
        prod = _f64_bmm(lhs, cols.transpose(1, 2)).sum(0)
        prod = prod.view(o, c, kh * kw).mul_(sg.view(o, 1, 1)).mul_(sx.view(1, c, 1))
        grad_w = prod.to(torch.float32).view_as(weight)
    if output_mask[2]:
        grad_b = grad.sum(dim=(0, 2, 3))
    return grad_in, grad_w, grad_b


def _inplace(kernel: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The in-place form of a unary functional kernel."""
    def inplace_kernel(x: Tensor) -> Tensor:
        return x.copy_(kernel(x))
    return inplace_kernel


def _into(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The out= form of a functional kernel."""
    def out_kernel(*args: Tensor, out: Tensor, **kwargs: float) -> Tensor:
        result = kernel(*args, **kwargs)
        return out.resize_(result.shape).copy_(result)
    return out_kernel


_KERNELS: dict[str, Callable[..., object]] = {
    "mm": _mm, "addmm": _addmm, "bmm": _bmm, "baddbmm": _baddbmm, "mv": _mv, "addmv": _addmv,
    "dot": _dot, "convolution": _convolution, "convolution_backward": _convolution_backward,
    "mm.out": _into(_mm), "addmm.out": _into(_addmm), "bmm.out": _into(_bmm),
    "mv.out": _into(_mv), "addmv.out": _into(_addmv), "dot.out": _into(_dot),
    # sqrt, exp, log (xpool.exact_math), each in its three forms.
    **{f"{op}{form}": wrap(fn) for op, fn in MATH_FUNCTIONS.items()
       for form, wrap in (("", lambda f: f), ("_", _inplace), (".out", _into))},
}
# Products with no exact kernel here: an error rather than a silent vendor kernel.
_REFUSED = ("addbmm", "addbmm.out", "vdot", "_addmm_activation")
# The rest of MKL's vector math (xpool.exact_math), each in its three forms.
_MATH_REFUSED = tuple(f"{op}{form}" for op in MATH_REFUSED for form in ("", "_", ".out"))


def _refuse(name: str) -> Callable[..., object]:
    hint = "mm/bmm" if name in _REFUSED else "sqrt, exp or log (xpool.exact_math)"
    def kernel(*args: object, **kwargs: object) -> object:
        raise XPoolError(f"gemm: exact has no vendor-independent kernel for aten::{name}; "
                         f"rewrite the call with {hint}, or set gemm: native")
    return kernel


def _register() -> torch.library.Library:
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        # "Overriding a previously registered kernel": the point of this module.
        warnings.simplefilter("ignore", UserWarning)
        for name, kernel in _KERNELS.items():
            lib.impl(name, kernel, "CPU")
        for name in _REFUSED + _MATH_REFUSED:
            lib.impl(name, _refuse(name), "CPU")
    return lib


def exact_gemm_active() -> bool:
    """Whether an `exact_gemm()` block is open in this process."""
    return _depth > 0


@contextmanager
def exact_gemm() -> Iterator[None]:
    """Run the block with float32 CPU matrix products computed exactly (see the module doc).

    Re-entrant; the kernels are restored when the outermost block closes. Process-wide while open
    (torch's dispatcher has no per-thread kernels): the study opens it around whole runs.
    """
    global _registration, _depth
    with _LOCK:
        if _depth == 0:
            _registration = _register()
        _depth += 1
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _registration is not None:
                _registration._destroy()
                _registration = None


def gemm_key(mode: str) -> str:
    """What a cache key records of `model.gemm`: the mode, and for "exact" its kernels' version."""
    return f"exact-v{EXACT_VERSION}" if mode == "exact" else mode


@contextmanager
def gemm_mode(mode: str) -> Iterator[None]:
    """`exact_gemm()` when `mode` is "exact", nothing when "native" (the config key `model.gemm`)."""
    if mode not in GEMM_MODES:
        raise XPoolError(f"gemm mode must be one of {GEMM_MODES}, got {mode!r}")
    if mode == "native":
        yield
        return
    with exact_gemm():
        yield
