"""Vendor-independent sqrt, exp and log in exact mode (xpool.exact_math): IEEE-exact square roots,
exp and log equal to float64 references rounded once, the same bits on every MKL code branch, and
clear errors for the unary ops that would still reach MKL's vector math."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xpool.errors import XPoolError
from xpool.exact_gemm import exact_gemm
from xpool.exact_math import exact_exp, exact_log, exact_sqrt

REPO = Path(__file__).resolve().parents[1]
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, 1.17549435e-38,
                    3.4028235e38, 0.5, 2.0], dtype=np.float32)


def _values(n: int = 1 << 18) -> np.ndarray:
    """Positive float32 values over the whole exponent range, subnormals included."""
    rng = np.random.default_rng(0)
    bits = rng.integers(1, 0x7F7FFFFF, size=n, dtype=np.uint32)
    return bits.view(np.float32)


def _same_bits(a: torch.Tensor, b: np.ndarray) -> bool:
    return np.array_equal(a.numpy().view(np.uint32), b.astype(np.float32).view(np.uint32))


def test_sqrt_is_ieee_correctly_rounded_bit_for_bit() -> None:
    x = np.concatenate([_values(), SPECIAL, -_values(16)])
    with np.errstate(invalid="ignore"):
        ref = np.sqrt(x)  # IEEE 754's sqrt, correctly rounded in float32
    got = exact_sqrt(torch.from_numpy(x))
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got.numpy()), nan)
    assert _same_bits(got[~torch.from_numpy(nan)], ref[~nan])  # -0 stays -0


@pytest.mark.parametrize("name", ["exp", "log"])
def test_exp_and_log_are_float64_results_rounded_once(name: str) -> None:
    rng = np.random.default_rng(1)
    if name == "exp":
        x = rng.uniform(-103.0, 88.0, size=1 << 18).astype(np.float32)
        fn, ref_fn = exact_exp, np.exp
    else:
        x = _values()
        fn, ref_fn = exact_log, np.log
    got = fn(torch.from_numpy(x)).numpy()
    ref = ref_fn(x.astype(np.float64)).astype(np.float32)
    differ = got.view(np.int32) != ref.view(np.int32)
    # Correctly rounded but within ~2**-45 of a midpoint: rare, and then one unit apart.
    assert differ.mean() < 1e-5
    assert np.all(np.abs(got.view(np.int32)[differ] - ref.view(np.int32)[differ]) == 1)


def test_special_values() -> None:
    inf, nan = float("inf"), float("nan")
    e = exact_exp(torch.tensor([0.0, -inf, inf, nan, 100.0, -200.0, 1.0])).tolist()
    assert e[:3] == [1.0, 0.0, inf] and np.isnan(e[3]) and e[4:6] == [inf, 0.0]
    assert e[6] == np.float32(np.e)
    lg = exact_log(torch.tensor([0.0, -1.0, inf, nan, 1.0, 2.0, 1e-45])).tolist()
    assert lg[0] == -inf and np.isnan(lg[1]) and lg[2] == inf and np.isnan(lg[3])
    assert lg[4] == 0.0 and lg[5] == np.float32(np.log(2.0))
    assert lg[6] == np.float32(np.log(np.float64(np.float32(1e-45))))


def test_exact_mode_routes_every_form_and_refuses_the_rest() -> None:
    x = torch.rand(1000) + 0.1
    with exact_gemm():
        out = torch.empty(0)
        torch.sqrt(x, out=out)
        inplace = x.clone().exp_()
        assert torch.equal(out, exact_sqrt(x))
        assert torch.equal(inplace, exact_exp(x))
        assert torch.equal(x.log(), exact_log(x))
        assert torch.equal(torch.arange(4).sqrt(), exact_sqrt(torch.arange(4.0)))  # int -> float32
        with pytest.raises(XPoolError, match="float32 CPU tensors only"):
            x.double().sqrt()
        with pytest.raises(XPoolError, match="aten::tanh"):
            torch.tanh(x)
        with pytest.raises(XPoolError, match="aten::erf"):
            x.erf_()
    torch.tanh(x)  # restored outside
    assert x.double().sqrt().dtype == torch.float64


BRANCH = r"""
import hashlib, json, sys, torch
from xpool.exact_gemm import gemm_mode
from xpool.optim import HFAdamW
torch.manual_seed(0)
x = torch.rand(1 << 16) * 1e-6
z = torch.randn(1 << 16) * 10
p = [torch.nn.Parameter(torch.randn(4096) * 0.02) for _ in range(2)]
opts = [torch.optim.AdamW([p[0]], lr=2e-3), HFAdamW([p[1]], lr=2e-3)]
h = hashlib.sha256()
with gemm_mode(sys.argv[1]):
    for t in (x.sqrt(), z.exp(), x.log()):
        h.update(t.numpy().tobytes())
    for step in range(3):
        for q, opt in zip(p, opts):
            q.grad = torch.randn(4096) * 1e-3
            opt.step()
    for q in p:
        h.update(q.detach().numpy().tobytes())
print(json.dumps(h.hexdigest()))
"""


def _on_branch(gemm: str, branch: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")}
    env.update(PYTHONPATH=str(REPO), XPOOL_CPU_ISA="avx2", MKL_CBWR=branch)
    done = subprocess.run([sys.executable, "-c", BRANCH, gemm], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_math_and_optimizer_steps_do_not_depend_on_mkl_s_code_branch() -> None:
    # MKL_CBWR forces MKL's code branch: AUTO is this CPU's own, COMPATIBLE the SSE2 path any x86
    # CPU runs, AVX2 the Intel AVX2 one. Another vendor's CPU takes one of its own.
    exact = {b: _on_branch("exact", b) for b in ("AUTO", "COMPATIBLE", "AVX2")}
    assert len(set(exact.values())) == 1, exact
    native = {_on_branch("native", b) for b in ("AUTO", "COMPATIBLE")}
    if len(native) == 1:
        # Seen on an AMD EPYC (Zen 4): MKL runs the same vector-math code under both settings
        # there, so the exact kernels' equality above shows nothing this CPU could have broken.
        pytest.skip("control unavailable: MKL's AUTO and COMPATIBLE branches give equal native "
                    "sqrt/exp/log on this CPU (the test is meaningful on an Intel CPU)")
