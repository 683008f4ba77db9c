"""Exact text-video similarity: the fast X-Pool path against the plain chunked computation.

Usage: ``python -m bench.similarity [--quick] [--repeats N] [--threads N] [--device cpu|cuda] [--tf32]``
from the repository root. Writes ``similarity.json`` to ``results/bench`` (with
``--quick``: ``results/bench/quick``; ``$XPOOL_BENCH_DIR`` or ``--out`` override), in the record
format of ``bench/common.py``.

- T = V = 1,000 texts and videos, F = 12 frames, D = 512, an X-Pool head (one attention head)
  with random weights (not the identity init): wall time of ``plain_similarity_matrix`` (the
  head's forward over text chunks, L2-normalize, dot) and of ``similarity_matrix`` (the factored
  fast path), their ratio, the peak memory of each, and the max abs difference and rank agreement
  of their results.
- An MSVD-sized problem (670 videos, 27,763 captions, F = 12, D = 512): fast-path time and peak
  memory (the plain pooled [V, T, D] tensor alone would take 38 GB).
- The GEMM floor at both sizes: every matrix product of the fast path alone (``gemm_floor``),
  timed as plain ``torch.mm`` / ``torch.bmm`` calls of the same shapes, chunks and tiles, and
  the fast path's time over it (the headline); also the floor of its two dense GEMM families
  alone (``dense_only``: the per-video basis GEMM and the tile GEMMs, about 91% of the FLOPs).
- Achieved GFLOP/s of the fast path (its arithmetic counted analytically) next to a large
  float32 matmul on the same device.

``--quick`` shrinks the sizes (128 x 128, and 670 videos x 500 captions), uses one thread, two
rounds and measures in this process: a plumbing check, not a measurement.

Method. Every measurement runs in a fresh child process that builds the same seeded inputs,
warms up on a tiny problem, then resets the kernel's peak-RSS counter (writing 5 to
``/proc/self/clear_refs``) and reads VmRSS as the baseline; after the timed call, VmHWM minus that
baseline is the computation's peak extra resident memory (inputs excluded, output included).
Without clear_refs it falls back to ru_maxrss minus the baseline (an upper bound that may include
setup). On CUDA the peak is ``torch.cuda.max_memory_allocated`` above the allocation before the
call. A child process per measurement keeps one run's allocator state and peak out of the next.
Each round runs every kind once (1,000 x 1,000: plain, fast, floor, dense floor; MSVD-sized:
fast, floor, dense floor), in an order rotated from round to round, so load changes on a shared
machine hit all kinds alike; medians are reported, and each run's CPU time (user + sys, all
threads) too. The machine's load average at the start and end is in the record.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.common import REPO_ROOT, BenchReport, apply_threads, bench_parser, proc_status_kb

FRAMES, DIM = 12, 512
FULL_SIZES = {"square": (1000, 1000), "msvd": (670, 27763)}  # (texts, videos), (videos, captions)
QUICK_SIZES = {"square": (128, 128), "msvd": (670, 500)}
TARGET_RATIO = 20.0
TARGET_MSVD_S = 120.0
TARGET_MSVD_GB = 4.0
TARGET_FLOOR_RATIO = 1.3


# ----------------------------------------------------------------------------- child process


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_problem(num_texts: int, num_videos: int, num_frames: int, dim: int, heads: int, seed: int):
    """A seeded X-Pool head with random weights and random CLIP-scale inputs."""
    import torch

    from xpool.model.pooling import build_pooling

    g = torch.Generator().manual_seed(seed)
    head = build_pooling("xpool", dim, num_heads=heads)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / dim**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    head.eval()
    # Raw CLIP ViT-B/32 features have norms around 10: 0.5 * N(0, 1) in 512 dimensions is ~11.
    t = 0.5 * torch.randn(num_texts, dim, generator=g)
    e = 0.5 * torch.randn(num_videos, num_frames, dim, generator=g)
    return head, t, e


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the problem of ``spec``, time one call of the plain or fast path, read its peak."""
    import torch

    from xpool.similarity import plain_similarity_matrix, similarity_matrix

    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    # TF32 (CUDA only) trades float32's 24-bit products for 11-bit ones: faster, not exact.
    torch.backends.cuda.matmul.allow_tf32 = bool(spec.get("tf32", False))
    cuda = device.type == "cuda"
    head, t, e = make_problem(
        spec["texts"], spec["videos"], spec["frames"], spec["dim"], spec["heads"], spec["seed"]
    )
    head, t, e = head.to(device), t.to(device), e.to(device)
    fn = {
        "fast": similarity_matrix,
        "plain": plain_similarity_matrix,
        "floor": gemm_floor,
        "dense": lambda *a: gemm_floor(*a, dense_only=True),
    }[spec["kind"]]
    fn(head, t[:16], e[:32])  # warm-up: thread pools, BLAS kernels, CUDA context
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    exact_peak = _reset_peak_rss()
    base_kb = proc_status_kb("VmRSS") or 0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sims = fn(head, t, e)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(device) - base_bytes) / 2**20
        method = "torch.cuda.max_memory_allocated above the allocation before the call"
    elif exact_peak and (hwm := proc_status_kb("VmHWM")) is not None:
        peak_mb, method = (hwm - base_kb) / 1024, "VmHWM after clear_refs minus VmRSS before"
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024
        method = "ru_maxrss minus VmRSS before (an upper bound)"
    if spec.get("save"):
        import numpy as np

        np.save(spec["save"], sims.float().cpu().numpy())
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb, "peak_method": method}


def _run(spec: dict[str, Any], isolated: bool) -> dict[str, Any]:
    if not isolated:
        return measure(spec)
    # A fresh process per measurement, so its peak memory is this measurement's alone.
    cmd = [sys.executable, "-m", "bench.similarity", "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec['kind']}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gemm_floor(head: Any, t: Any, e: Any, dense_only: bool = False) -> Any:
    """The fast path's matrix products alone, as plain ``torch.mm`` / ``torch.bmm`` calls.

    The one-head fast path (``xpool.similarity``, residual FC) does: three [D, D] x [D, D]
    weight folds (once); per block of ``_BASIS_ROWS`` frames, [rows, D] x [D, 2D + 16] (both
    bases and the linear forms of every frame, zero-padded to 16-float rows) and three Gram
    products [n, F, D] x [n, D, F]; per text chunk [Tc, D] x [D, 2D + 16] (queries, text . basis
    maps, per-text vectors); per (text tile, video tile) two [Vt F, D] x [D, Tt] (attention
    logits, text . basis dots) and the forms' batched product [Vt, 3F + 4, F] x [Vt, F, Tt].
    This runs exactly those shapes, in the fast path's chunks and tiles (``xpool_plan``), into
    reused output buffers where the fast path reuses them, and nothing else: no softmax, no
    elementwise work. Products of D^2 multiply-adds or fewer (matrix-vector) are left out.

    ``dense_only`` keeps the two dense families alone (the basis GEMM and the tile GEMMs, about
    91% of the FLOPs): the floor of a fast path whose small products (Grams, text side, weight
    folds, the forms' product with an inner size of F) were free.
    """
    import torch

    from xpool.similarity import DEFAULT_MEMORY_BUDGET
    from xpool.similarity.factored import _BASIS_ROWS, xpool_plan

    num_texts, (num_videos, num_frames, dim) = t.shape[0], e.shape
    kb, forms = num_frames, 3 * num_frames + 4  # Gram matrices, linear forms, a row of ones
    chunk, tile_t, tile_v = xpool_plan(num_texts, num_videos, kb, forms - 1, None,
                                        DEFAULT_MEMORY_BUDGET)
    frames = e.reshape(num_videos * num_frames, dim)
    w = torch.randn(dim, 2 * dim + 3 + (-(2 * dim + 3) % 16), device=e.device) / dim**0.5
    small, w_text = w[:, :dim].contiguous(), w.clone()
    if not dense_only:
        for _ in range(3):
            torch.mm(small, small)
    block = max(1, _BASIS_ROWS // num_frames)
    buf = e.new_empty(min(block, num_videos) * num_frames * w.shape[1])
    for v0 in range(0, num_videos, block):
        rows = frames[v0 * kb : (v0 + block) * kb]
        out = torch.mm(rows, w, out=buf[: rows.shape[0] * w.shape[1]].view(-1, w.shape[1]))
        if not dense_only:
            basis = out[:, :dim].view(-1, kb, dim)
            for _ in range(3):
                torch.bmm(basis, basis.transpose(1, 2))
    form_stack = torch.randn(num_videos, forms, kb, device=e.device)
    queries, text_maps = torch.randn(2, tile_t, dim, device=e.device)
    weights = torch.rand(kb * tile_t * tile_v, device=e.device)
    logits_buf, dots_buf = e.new_empty(2, kb * tile_t * tile_v)
    forms_buf = e.new_empty(forms * tile_t * tile_v)
    text_buf = e.new_empty(min(chunk, num_texts) * w_text.shape[1])
    for s0 in range(0, num_texts, chunk):
        tc = t[s0 : s0 + chunk]
        if not dense_only:
            torch.mm(tc, w_text, out=text_buf[: tc.shape[0] * w_text.shape[1]].view(len(tc), -1))
        for a in range(0, tc.shape[0], tile_t):
            tt = min(tile_t, tc.shape[0] - a)
            for v0 in range(0, num_videos, tile_v):
                nv = min(tile_v, num_videos - v0)
                keys = frames[v0 * kb : (v0 + nv) * kb]
                torch.mm(keys, queries[:tt].T, out=logits_buf[: nv * kb * tt].view(-1, tt))
                torch.mm(keys, text_maps[:tt].T, out=dots_buf[: nv * kb * tt].view(-1, tt))
                if not dense_only:
                    torch.bmm(form_stack[v0 : v0 + nv], weights[: nv * kb * tt].view(nv, kb, tt),
                              out=forms_buf[: nv * forms * tt].view(nv, forms, tt))
    return t.new_zeros(1)


# ----------------------------------------------------------------------------- arithmetic


def fast_path_flops(num_texts: int, num_videos: int, num_frames: int, dim: int) -> float:
    """2 x multiply-adds of the one-head fast path: per-frame precompute, texts, per-pair work."""
    vf, k = num_videos * num_frames, num_frames
    forms = 3 * k + 4  # three Gram matrices, three linear forms, the row of ones
    # weight folds, both bases and the linear forms of every frame, the three Gram matrices
    precompute = 3 * 2 * dim**3 + 2 * vf * dim * (2 * dim + 3) + 3 * 2 * num_videos * k * k * dim
    texts = 2 * num_texts * dim * (2 * dim + 3)  # queries, text . basis maps, per-text vectors
    per_pair = 2 * 2 * num_texts * vf * dim + 2 * num_texts * num_videos * k * forms
    return float(precompute + texts + per_pair)


def plain_path_flops(num_texts: int, num_videos: int, num_frames: int, dim: int) -> float:
    """2 x multiply-adds of the head's forward over all pairs (out_proj, linear_proj, attention)."""
    pairs = num_texts * num_videos
    return float(2 * 2 * pairs * dim * dim + 2 * 2 * pairs * num_frames * dim)


def matmul_gflops(device: Any, size: int = 4096, inner: int = 512, repeats: int = 5) -> float:
    """float32 GFLOP/s of a [size, inner] x [inner, size] matmul (median of ``repeats``)."""
    import torch

    a = torch.randn(size, inner, device=device)
    b = torch.randn(inner, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size * size * inner / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- main


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes ``<results dir>/similarity.json``."""
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: allow TF32 matrix products (recorded; default: exact float32)")
    parser.add_argument("--child", default=None, help="internal: one measurement (JSON spec)")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child))))
        return 0

    import numpy as np
    import torch

    from xpool.metrics import t2v_ranks, v2t_ranks

    threads = apply_threads(args)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (2 if args.quick else 5)
    isolated = not args.quick  # quick: measure in this process (no child start-up per run)
    msvd_repeats = 1 if args.quick else repeats
    (num_texts, num_videos), (msvd_videos, msvd_captions) = sizes["square"], sizes["msvd"]
    base = {"frames": FRAMES, "dim": DIM, "heads": 1, "seed": 0, "threads": threads}
    base["device"] = str(device)
    base["tf32"] = bool(args.tf32 and device.type == "cuda")
    report = BenchReport.from_args(
        "similarity",
        "Exact X-Pool similarity: fast factored path vs plain chunked forward",
        args,
        device=str(device),
        precision="tf32" if base["tf32"] else "fp32",
        torch_threads=threads,
        square=[num_texts, num_videos],
        msvd_sized=[msvd_videos, msvd_captions],
        frames=FRAMES,
        dim=DIM,
        xpool_heads=1,
        repeats=repeats,
        weights="random (Linear ~ N(0, 1/D), LayerNorm gains ~ N(1, 0.09), biases ~ N(0, 0.01))",
        plain="xpool.similarity.plain_similarity_matrix (default memory-budget chunking)",
        fast="xpool.similarity.similarity_matrix (default memory-budget tiling)",
    )

    # Every round runs each kind once, in a rotated order, so load changes hit all kinds alike.
    square_kinds = ("plain", "fast", "floor", "dense")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in square_kinds}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {kind: os.path.join(tmp, f"{kind}.npy") for kind in ("plain", "fast")}
        for rep in range(repeats):
            for kind in square_kinds[rep % 4 :] + square_kinds[: rep % 4]:
                spec = dict(base, kind=kind, texts=num_texts, videos=num_videos)
                if kind in saved and not runs[kind]:
                    spec["save"] = saved[kind]
                run = _run(spec, isolated)
                runs[kind].append(run)
                print(
                    f"  {num_texts} x {num_videos} {kind:5s} round {rep + 1}/{repeats}: "
                    f"{run['seconds']:.3f} s, peak +{run['peak_mb']:.0f} MB",
                    flush=True,
                )
        plain_sims, fast_sims = np.load(saved["plain"]), np.load(saved["fast"])
    video_of_text = np.arange(num_texts) % num_videos
    max_abs_diff = float(np.abs(plain_sims - fast_sims).max())
    same_ranks = bool(
        np.array_equal(t2v_ranks(plain_sims, video_of_text), t2v_ranks(fast_sims, video_of_text))
        and np.array_equal(
            v2t_ranks(plain_sims, video_of_text), v2t_ranks(fast_sims, video_of_text)
        )
    )

    msvd_kinds = ("fast", "floor", "dense")
    msvd: dict[str, list[dict[str, Any]]] = {kind: [] for kind in msvd_kinds}
    for rep in range(msvd_repeats):
        for kind in msvd_kinds[rep % 3 :] + msvd_kinds[: rep % 3]:
            run = _run(dict(base, kind=kind, texts=msvd_captions, videos=msvd_videos), isolated)
            msvd[kind].append(run)
            print(
                f"  MSVD-sized {msvd_videos} videos x {msvd_captions} captions, {kind}, round "
                f"{rep + 1}/{msvd_repeats}: {run['seconds']:.2f} s, peak +{run['peak_mb']:.0f} MB",
                flush=True,
            )
    msvd_runs = msvd["fast"]
    matmul = matmul_gflops(device)

    plain_s, fast_s = _median(runs["plain"], "seconds"), _median(runs["fast"], "seconds")
    ratio = plain_s / fast_s
    plain_mb, fast_mb = _median(runs["plain"], "peak_mb"), _median(runs["fast"], "peak_mb")
    msvd_s, msvd_mb = _median(msvd_runs, "seconds"), _median(msvd_runs, "peak_mb")
    fast_gflop = fast_path_flops(num_texts, num_videos, FRAMES, DIM) / 1e9
    msvd_gflop = fast_path_flops(msvd_captions, msvd_videos, FRAMES, DIM) / 1e9
    pooled_gb = msvd_videos * msvd_captions * DIM * 4 / 1e9
    size = f"{num_texts} x {num_videos}"
    full = not args.quick
    floor_s, msvd_floor_s = _median(runs["floor"], "seconds"), _median(msvd["floor"], "seconds")
    dense_s, msvd_dense_s = _median(runs["dense"], "seconds"), _median(msvd["dense"], "seconds")
    def paired(source: dict[str, list[dict[str, Any]]], floor: str) -> list[float]:
        """fast / floor per round (both ran in the same round, so slow load drifts cancel)."""
        return [f["seconds"] / g["seconds"]
                for f, g in zip(source["fast"], source[floor], strict=True)]

    for label, f_s, fl_s, d_s, source in (
        (size, fast_s, floor_s, dense_s, runs),
        (f"MSVD-sized {msvd_videos} x {msvd_captions}", msvd_s, msvd_floor_s, msvd_dense_s, msvd),
    ):
        rounds = ", ".join(f"{r:.2f}" for r in paired(source, "floor"))
        report.add_headline(
            f"fast path over its GEMM floor, {label}",
            f_s / fl_s,
            "x",
            target=f"<= {TARGET_FLOOR_RATIO}x" if full else None,
            met=f_s / fl_s <= TARGET_FLOOR_RATIO if full else None,
            detail=f"fast {f_s:.3f} s, all its matrix products alone as torch.mm/bmm "
            f"{fl_s:.3f} s (per round: {rounds}); over the two dense GEMM families alone "
            f"({d_s:.3f} s): {f_s / d_s:.2f}x",
        )

    report.add_headline(
        f"fast vs plain X-Pool similarity, {size}",
        ratio,
        "x",
        target=f">= {TARGET_RATIO:.0f}x" if full else None,
        met=ratio >= TARGET_RATIO if full else None,
        detail=f"plain {plain_s:.2f} s, fast {fast_s:.3f} s; max |diff| {max_abs_diff:.1e}, "
        f"identical ranks: {same_ranks}",
    )
    report.add_headline(
        f"MSVD-sized fast similarity ({msvd_videos} videos x {msvd_captions} captions)",
        msvd_s,
        "s",
        target=f"< {TARGET_MSVD_S:.0f} s" if full else None,
        met=msvd_s < TARGET_MSVD_S if full else None,
        detail=f"peak +{msvd_mb:.0f} MB; the plain pooled tensor alone would be {pooled_gb:.0f} GB",
    )
    report.add_headline(
        "MSVD-sized fast similarity, peak memory",
        msvd_mb / 1024,
        "GB",
        target=f"< {TARGET_MSVD_GB:.0f} GB" if full else None,
        met=msvd_mb / 1024 < TARGET_MSVD_GB if full else None,
    )
    report.add_table(
        f"X-Pool similarity, {size}, F = {FRAMES}, D = {DIM}, {device.type}, {threads} threads "
        f"(median of {repeats} rounds{', one child process per run' if isolated else ''})",
        ["path", "seconds", "CPU seconds", "peak MB", "GFLOP", "GFLOP/s"],
        [
            [
                "plain (forward, normalize, dot)",
                plain_s,
                _median(runs["plain"], "cpu_seconds"),
                plain_mb,
                plain_path_flops(num_texts, num_videos, FRAMES, DIM) / 1e9,
                plain_path_flops(num_texts, num_videos, FRAMES, DIM) / 1e9 / plain_s,
            ],
            [
                "fast (factored)",
                fast_s,
                _median(runs["fast"], "cpu_seconds"),
                fast_mb,
                fast_gflop,
                fast_gflop / fast_s,
            ],
            [
                f"fast, MSVD-sized ({msvd_videos} x {msvd_captions})",
                msvd_s,
                _median(msvd_runs, "cpu_seconds"),
                msvd_mb,
                msvd_gflop,
                msvd_gflop / msvd_s,
            ],
            *[
                [f"GEMM floor{what}, {where}", _median(rs, "seconds"), _median(rs, "cpu_seconds"),
                 _median(rs, "peak_mb"), None, None]
                for where, source in ((size, runs), ("MSVD-sized", msvd))
                for what, rs in ((" (all the fast path's products)", source["floor"]),
                                 (", dense GEMMs only", source["dense"]))
            ],
            [f"float32 matmul 4096 x 512 x 4096 ({device.type})", None, None, None, None, matmul],
        ],
    )
    report.results = {
        "square": {
            "texts": num_texts,
            "videos": num_videos,
            "plain": runs["plain"],
            "fast": runs["fast"],
            "plain_seconds": plain_s,
            "fast_seconds": fast_s,
            "ratio": ratio,
            "plain_peak_mb": plain_mb,
            "fast_peak_mb": fast_mb,
            "max_abs_diff": max_abs_diff,
            "identical_ranks": same_ranks,
            "fast_gflops_per_s": fast_gflop / fast_s,
        },
        "msvd_sized": {
            "videos": msvd_videos,
            "captions": msvd_captions,
            "runs": msvd_runs,
            "fast_seconds": msvd_s,
            "fast_peak_mb": msvd_mb,
            "fast_gflops_per_s": msvd_gflop / msvd_s,
            "plain_pooled_tensor_gb": pooled_gb,
        },
        "gemm_floor": {
            "square_runs": runs["floor"],
            "msvd_runs": msvd["floor"],
            "square_dense_runs": runs["dense"],
            "msvd_dense_runs": msvd["dense"],
            "square_seconds": floor_s,
            "msvd_seconds": msvd_floor_s,
            "square_dense_seconds": dense_s,
            "msvd_dense_seconds": msvd_dense_s,
            "square_ratio": fast_s / floor_s,
            "msvd_ratio": msvd_s / msvd_floor_s,
            "square_dense_ratio": fast_s / dense_s,
            "msvd_dense_ratio": msvd_s / msvd_dense_s,
            "square_round_ratios": paired(runs, "floor"),
            "msvd_round_ratios": paired(msvd, "floor"),
            "square_dense_round_ratios": paired(runs, "dense"),
            "msvd_dense_round_ratios": paired(msvd, "dense"),
        },
        "matmul_gflops_per_s": matmul,
        "peak_memory_method": runs["fast"][0]["peak_method"],
    }
    if args.quick:
        report.note("quick mode: small sizes and one thread, a plumbing check, not a measurement")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if device.type == "cpu" and load > 0.5 * (os.cpu_count() or 1):
        report.note(
            f"load average {load:.1f} on {os.cpu_count()} cores at the end: other processes "
            "competed for the CPU, so both paths' times are inflated (the fast path more, having "
            "more, shorter operations)"
        )
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
