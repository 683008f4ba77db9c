"""Elementwise float32 math whose result does not depend on the CPU's vendor.

Why: torch built with MKL computes `exp`, `log`, `sqrt`, `tanh`, `erf` and a few more unary ops
with MKL's vector math library (VML), which picks its code path by CPU vendor and model under
any ATen capability cap, like MKL's GEMM. Measured here on an Intel Xeon, forcing VML's branches
with `MKL_CBWR`: float32 `torch.sqrt` of 2**20 uniform values in [0, 1e-6) (the size of Adam's
second moments) disagreed with IEEE's correctly rounded square root in 6,747 places on the
AUTO branch, 200,971 on COMPATIBLE and none on AVX2; `exp` and `log` differed between every two
branches. AdamW takes `sqrt` of every parameter's second moment at every step, and CLIP's
temperature is `logit_scale.exp()`, so a pretrained tiny CLIP made on an AMD EPYC and one made
on an Intel Xeon differed with every product computed exactly (`xpool.exact_gemm`).

How: inside `xpool.exact_gemm.exact_gemm()` the CPU kernels of the ops the study runs are
replaced by compositions of ATen's own kernels (add, mul, `rsqrt`, `exp2`, `log1p`, `frexp`),
which at a fixed capability execute the same instructions on every x86-64 CPU (measured: their
results are the same on every MKL branch), in float64, rounded once to float32:

- `sqrt(x) = x * rsqrt(x)` in float64. Each float64 step is correctly rounded, so the product is
  within 3 * 2**-53 of sqrt(x) relative; the square root of a float32 is never closer than
  2**-50 relative to a midpoint of two float32 values (a midpoint m has 25 significant bits, so
  x - m*m is a non-zero multiple of the coarser grid of x and m*m), so rounding to float32 gives
  IEEE's correctly rounded square root, bit for bit. Zeros and +inf are passed through.
- `exp(x) = exp2(x * log2(e))` in float64: the product's rounding error is at most |x| * 2**-53
  relative in the result (|x| < 104 wherever exp(x) is a normal-range float32), far below
  float32's half unit, so the result is the correctly rounded exp(x) except within about
  2**-45 of a midpoint, where it may round to the other neighbour (none of 2**20 test values).
- `log(x) = log1p(m - 1) + e * ln 2` with x = m * 2**e, m in [sqrt(1/2), sqrt(2)): m - 1 is
  exact in float64 and the two terms never cancel (|log m| <= 0.35 < |e ln 2| when e != 0).

Every other op VML computes (tanh, erf, erfc, erfinv, log2, log10, tan, asin, acos, atan) is
refused in exact mode with an error that says what to do, so a new call cannot bring a vendor
path back silently: `tests/test_exact_gemm.py`'s audit of the study's passes, which runs them in
exact mode, would fail on one.

Cost: a few passes over float64 copies instead of one over float32. `python -m bench.exact_math
--quick` (one thread, another job on the second core) measured, for 1.4 M values (the tiny CLIP's
parameters, the largest call the study makes: Adam's `sqrt` in fine-tuning), 20 ms against 0.9 ms
for `sqrt`, 15 ms against 0.9 ms for `exp`, 45 ms against 1.1 ms for `log`; a fine-tuning step
takes about 5 s in exact mode, so this is under 1% of it. The same run counted 9,143 of torch's
1.4 M `sqrt` results off IEEE's correctly rounded value and none of the exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from xpool.errors import XPoolError

__all__ = ["MATH_FUNCTIONS", "MATH_REFUSED", "exact_exp", "exact_log", "exact_sqrt"]

F64 = torch.float64
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
SQRT_HALF = math.sqrt(0.5)


def _float32(x: Tensor, name: str) -> Tensor:
    """`x` as torch's kernel would compute it: integers and bools promote to float32."""
    if not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.float32)
    if x.dtype != torch.float32:
        raise XPoolError(f"gemm: exact computes aten::{name} for float32 CPU tensors only, got "
                         f"{x.dtype}; set gemm: native (or model.gemm=native) for other dtypes")
    return x


def exact_sqrt(x: Tensor) -> Tensor:
    """IEEE's correctly rounded float32 square root, without the vendor's math library."""
    x = _float32(x, "sqrt")
    y = x.to(F64)
    s = y * torch.rsqrt(y)
    # rsqrt(0) = inf and rsqrt(inf) = 0 make 0 * inf = NaN; sqrt(+-0) = +-0, sqrt(inf) = inf.
    s = torch.where((y == 0) | (y == math.inf), y, s)
    return s.to(torch.float32)


def exact_exp(x: Tensor) -> Tensor:
    """float32 exp(x) computed as exp2 in float64 (module doc), rounded once."""
    x = _float32(x, "exp")
    return torch.exp2(x.to(F64) * LOG2E).to(torch.float32)


def exact_log(x: Tensor) -> Tensor:
    """float32 log(x) from frexp and log1p in float64 (module doc), rounded once."""
    x = _float32(x, "log")
    m, e = torch.frexp(x.to(F64))  # m in [0.5, 1), or 0, inf, NaN as x
    low = m < SQRT_HALF
    m = torch.where(low, m * 2, m)
    e = (e - low.to(e.dtype)).to(F64)
    return (torch.log1p(m - 1) + e * LN2).to(torch.float32)


# aten op -> its exact function; `xpool.exact_gemm` registers the functional, in-place and out=
# forms of each.
MATH_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sqrt": exact_sqrt, "exp": exact_exp, "log": exact_log,
}
# The rest of what VML computes in torch's CPU kernels: an error in exact mode, not a vendor path.
MATH_REFUSED = ("tanh", "erf", "erfc", "erfinv", "log2", "log10", "tan", "asin", "acos", "atan")
