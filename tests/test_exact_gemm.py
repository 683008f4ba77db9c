"""Exact float32 matrix products (xpool.exact_gemm): exact against integer arithmetic written
here, independent of summation order and thread count, close to float64, no NaN from zero rows,
and nothing in the study's forward and backward passes left to a vendor kernel."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from xpool.config import load_config
from xpool.errors import XPoolError
from xpool.exact_gemm import exact_bmm, exact_gemm, exact_gemm_active, gemm_mode
from xpool.model.backbone import build_backbone
from xpool.model.pooling import build_pooling
from xpool.similarity import similarity_matrix

REPO = Path(__file__).resolve().parents[1]


def _rounded(row: list[float], bits: int) -> tuple[list[int], int]:
    """A row as integers and a power-of-two exponent: the rule of the module doc, in Python."""
    top = max(abs(v) for v in row)
    e = math.frexp(top)[1] if top > 0 else 0
    shift = bits - e
    return [round(v * 2.0**shift) for v in row], -shift


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = a.shape[1]
    bits = min(22, (52 - math.ceil(math.log2(max(k, 2)))) // 2)
    rows = [_rounded([float(v) for v in r], bits) for r in a]
    cols = [_rounded([float(v) for v in c], bits) for c in b.T]
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    for i, (qa, ea) in enumerate(rows):
        for j, (qb, eb) in enumerate(cols):
            total = sum(x * y for x, y in zip(qa, qb, strict=True))
            exact = Fraction(total) * Fraction(2) ** (ea + eb)
            out[i, j] = np.float32(float(exact))  # exact in float64, then one rounding
    return out


@pytest.mark.parametrize("k", [1, 7, 128, 300])
def test_products_equal_integer_arithmetic_rounded_once(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    a = torch.randn(6, k, generator=g) * torch.logspace(-3, 3, 6).unsqueeze(1)
    b = torch.randn(k, 5, generator=g)
    got = exact_bmm(a[None], b[None])[0].float().numpy()
    np.testing.assert_array_equal(got, _reference(a.numpy(), b.numpy()))


def test_a_permuted_sum_and_another_thread_count_give_the_same_bits() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 1000, generator=g), torch.randn(1000, 48, generator=g)
    perm = torch.randperm(1000, generator=g)
    with exact_gemm():
        base = a @ b
        permuted = a[:, perm] @ b[perm]
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = a @ b
        finally:
            torch.set_num_threads(before)
    assert torch.equal(base, permuted) and torch.equal(base, one_thread)
    # The control: float32 kernels depend on the order (so the test above can fail).
    assert not torch.equal(a @ b, a[:, perm] @ b[perm])


def test_error_is_that_of_float32() -> None:
    g = torch.Generator().manual_seed(1)
    for k in (64, 256, 5000):
        a, b = torch.randn(32, k, generator=g), torch.randn(k, 32, generator=g)
        ref = a.double() @ b.double()
        with exact_gemm():
            err = ((a @ b).double() - ref).abs().max().item()
        f32 = ((a @ b).double() - ref).abs().max().item()
        bits = min(22, (52 - math.ceil(math.log2(k))) // 2)
        # Rounding each operand to `bits` bits of its row's (column's) largest magnitude, plus
        # the final rounding to float32.
        bound = k * 2.0**-bits * a.abs().max().item() * b.abs().max().item()
        assert err <= bound, (k, err, bound)
        if k <= 256:  # 22 bits per operand: as close as float32's own kernels (1.3x measured)
            assert err <= 2 * f32, (k, err, f32)


def test_zero_and_tiny_rows_give_zeros_not_nan() -> None:
    a = torch.tensor([[0.0, 0.0], [1e-42, -3e-41], [2.0, 2.0**99]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = exact_bmm(a[None], b[None])[0].float()
    assert not out.isnan().any()
    assert out[0].tolist() == [0.0, 0.0] and out[2, 1] == a[2, 1]


def test_addmm_bmm_baddbmm_mv_dot_and_out_forms_match_float64() -> None:
    g = torch.Generator().manual_seed(2)
    m, k, n = 9, 33, 7
    a, b, c = (torch.randn(m, k, generator=g), torch.randn(k, n, generator=g),
               torch.randn(m, n, generator=g))
    x, y = torch.randn(4, m, k, generator=g), torch.randn(4, k, n, generator=g)
    v = torch.randn(k, generator=g)
    out = torch.empty(m, n)
    with exact_gemm():
        got = {"addmm": torch.addmm(c, a, b, beta=0.5, alpha=2.0),
               "bmm": torch.bmm(x, y), "baddbmm": torch.baddbmm(c, x, y, alpha=-1.0),
               "mv": a @ v, "dot": v @ v, "mm.out": torch.mm(a, b, out=out),
               "linear": F.linear(a, b.T, c[0])}
    want = {"addmm": 0.5 * c.double() + 2 * a.double() @ b.double(),
            "bmm": x.double() @ y.double(), "baddbmm": c.double() - x.double() @ y.double(),
            "mv": a.double() @ v.double(), "dot": v.double() @ v.double(),
            "mm.out": a.double() @ b.double(), "linear": a.double() @ b.double() + c[0].double()}
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value.double(), want[name], rtol=1e-5, atol=1e-5, msg=name)


def test_convolution_and_its_gradients_match_float64() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 11, 11, generator=g, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True)
    up = torch.randn(3, 6, 6, 6, generator=g)
    with exact_gemm():
        y = F.conv2d(x, w, bias, stride=2, padding=1)
        (y * up).sum().backward()
    got = [y.detach(), x.grad, w.grad, bias.grad]
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, bias))
    y64 = F.conv2d(x64, w64, b64, stride=2, padding=1)
    (y64 * up.double()).sum().backward()
    for mine, ref in zip(got, [y64.detach(), x64.grad, w64.grad, b64.grad], strict=True):
        torch.testing.assert_close(mine.double(), ref, rtol=1e-5, atol=1e-4)


def test_kernels_are_restored_and_unsupported_calls_are_clear_errors() -> None:
    a = torch.randn(3, 4)
    with exact_gemm():
        with exact_gemm():
            assert exact_gemm_active()
        assert exact_gemm_active()
        with pytest.raises(XPoolError, match="float32"):
            torch.mm(a.double(), a.double().T)
        with pytest.raises(XPoolError, match="addbmm"):
            torch.addbmm(torch.zeros(3, 3), a[None], a.T[None])
    assert not exact_gemm_active()
    assert torch.mm(a.double(), a.double().T).dtype == torch.float64
    with pytest.raises(XPoolError, match="gemm mode"):
        with gemm_mode("fast"):
            pass


# Ops that compute a float32 product inside C++ (flash attention, MHA's fast path, oneDNN, ATen's
# own convolution kernels) or the one out= form left to MKL: none may run in exact mode.
VENDOR_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_native_multi_head_attention",
              "_slow_conv2d_forward", "_slow_conv2d_backward", "mkldnn_convolution", "cdist",
              "_cdist_forward", "_convolution", "linalg_matmul")


class _Audit(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bad: set[str] = set()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        float32 = any(isinstance(t, torch.Tensor) and t.dtype == torch.float32
                      for t in (*args, *kwargs.values()))
        if name in VENDOR_OPS or "mkldnn" in name or (
                str(func) == "aten.baddbmm.out" and float32):
            self.bad.add(str(func))
        if name in ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward"):
            self.products += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("backbone", ["xpool-tiny", "xpool-smoke"])
def test_the_study_s_passes_leave_no_product_to_a_vendor_kernel(backbone: str) -> None:
    model = build_backbone(backbone, pretrained=None)
    size = model.image_size
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, size, size)
    tokens = model.tokenize(["a red square moves left", "a blue circle"])
    audit = _Audit()
    with exact_gemm(), audit:
        text, video = model(tokens, frames)
        loss = (text @ video.mean(1).T).logsumexp(1).sum()
        for name in ("mean", "self_attention", "topk", "attention", "xpool"):
            head = build_pooling(name, model.embed_dim)
            sims = similarity_matrix(head.train(), text, video)
            loss = loss + sims.sum()
            with torch.no_grad():
                similarity_matrix(head.eval(), text.detach(), video.detach())
        loss.backward()
        model.eval()
        with torch.no_grad():
            model(tokens, frames)
    assert audit.products > 20
    assert not audit.bad, audit.bad


PRETRAIN = r"""
import json, sys, tempfile
from pathlib import Path
from xpool.config import load_config
from xpool.engine.pretrain import ensure_pretrained
with tempfile.TemporaryDirectory() as d:
    cfg = load_config("embedded", {"pretrain.cache_dir": d, "pretrain.steps": 4,
                                   "pretrain.eval_images": 8, "model.gemm": sys.argv[1]})
    out = ensure_pretrained(cfg, progress=False).parent
    losses = [line.split(",")[1] for line in (out / "loss.csv").read_text().splitlines()[1:]]
    sha = json.loads((out / "metrics.json").read_text())["tensors_sha256"]
print(json.dumps({"losses": losses, "sha": sha}))
"""


def _pretrain(gemm: str, **env: str) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")}
    full.update(PYTHONPATH=str(REPO), XPOOL_CPU_ISA="avx2", **env)
    done = subprocess.run([sys.executable, "-c", PRETRAIN, gemm], capture_output=True,
                          text=True, env=full, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_exact_pretraining_does_not_depend_on_mkl_s_code_path() -> None:
    # MKL_CBWR fixes MKL's code branch: AUTO is what it picks for this CPU, COMPATIBLE the
    # SSE2 path it runs on any x86 CPU. Native float32 kernels round differently on the two;
    # exact products cannot. This holds the products; four warmup steps are too gentle to show
    # a 1-ulp change of exp/sqrt (the old vector-math kernels passed it too), which
    # tests/test_exact_math.py holds directly.
    auto = _pretrain("exact", MKL_CBWR="AUTO")
    compatible = _pretrain("exact", MKL_CBWR="COMPATIBLE")
    one_thread = _pretrain("exact", MKL_CBWR="AUTO", MKL_NUM_THREADS="1")
    assert len(auto["losses"]) == 4
    assert auto == compatible == one_thread
    native = (_pretrain("native", MKL_CBWR="AUTO"), _pretrain("native", MKL_CBWR="COMPATIBLE"))
    assert native[0] != native[1], "control: MKL's branches gave equal native results here"
    assert native[0]["sha"] != auto["sha"]


def test_embedded_profiles_run_exact_and_key_their_caches_by_it() -> None:
    from xpool.engine.features import features_dir
    from xpool.engine.pretrain import cache_key

    cfg = load_config("embedded")
    assert cfg.model.gemm == "exact"
    assert load_config("embedded-finetune").model.gemm == "exact"
    # The one named exception: exact GEMM would put the 30 fine-tuned protocol runs at 3 to 4 h.
    assert load_config("embedded-finetune-protocol").model.gemm == "native"
    native = load_config("embedded", {"model.gemm": "native"})
    assert cache_key(cfg) != cache_key(native)
    assert features_dir(cfg) != features_dir(native)


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding", "dilation"), [
    ((2, 3, 64, 64), 3, (2, 2), (1, 1), (1, 1)),   # the tiny CLIP's stem
    ((2, 8, 17, 15), 3, (1, 1), (1, 1), (1, 1)),   # odd sides
    ((2, 16, 8, 8), 1, (1, 1), (0, 0), (1, 1)),    # bottleneck 1x1
    ((1, 4, 13, 12), (3, 2), (2, 1), (2, 0), (2, 1)),  # every argument uneven
])
def test_patches_equal_atens_im2col_bit_for_bit(shape, kernel, stride, padding, dilation) -> None:
    from xpool.exact_gemm import _patches

    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = torch.ops.aten.im2col(x, [kh, kw], list(dilation), list(padding), list(stride))
    got = _patches(x, kh, kw, stride, padding, dilation)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert torch.equal(got, want.double())


def test_exact_pretraining_does_not_depend_on_where_memory_comes_from() -> None:
    # xpool.malloc keeps freed memory in the heap instead of fresh zeroed pages; with glibc's
    # MALLOC_PERTURB_ every allocation and free is filled with a byte pattern, so a kernel that
    # read memory it had not written would give other bits under other patterns.
    from xpool.malloc import ENV

    kept = _pretrain("exact", MALLOC_PERTURB_="165", **ENV)
    default = _pretrain("exact", MALLOC_PERTURB_="90")
    assert len(kept["losses"]) == 4
    assert kept == default
