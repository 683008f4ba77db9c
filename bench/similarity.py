"""Benchmark: fast exact X-Pool similarity vs the plain chunked computation.

Usage: ``python bench/similarity.py [--quick] [--reps N] [--out PATH]``

Prints and writes (``results/bench/similarity.json``; ``--quick`` writes
``results/bench/similarity-quick.json``):

- T = V = 1,000 texts/videos, F = 12 frames, D = 512, an X-Pool head (one attention head) with
  random weights (not the identity init): wall time of ``plain_similarity_matrix`` (the head's
  forward over text chunks, normalize, dot) and of ``similarity_matrix`` (the factored fast path),
  their ratio, the peak memory of each, and the max abs difference / rank agreement of the two.
- An MSVD-sized problem (670 videos, 27,763 captions, F = 12, D = 512): fast-path time and peak.
- Achieved GFLOP/s of the fast path (its arithmetic counted analytically) next to a large
  float32 matmul on this machine.

Method. Every measurement runs in a fresh child process (``--child``) that builds the same
seeded inputs, warms up on a tiny problem, then resets the kernel's peak-RSS counter (writing 5
to ``/proc/self/clear_refs``) and reads VmRSS as the baseline. After the timed call, VmHWM minus
that baseline is the peak extra resident memory of the computation (inputs excluded, output
included). Where clear_refs is unavailable it falls back to ru_maxrss minus the baseline (an
upper bound that may include setup). Plain and fast runs are interleaved (plain, fast, plain,
fast, ...) so that load changes on a shared machine hit both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- child side -------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _make_problem(
    num_texts: int, num_videos: int, num_frames: int, dim: int, heads: int, seed: int
):
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
    # CLIP-like scales: raw CLIP ViT-B/32 features have norms around 10.
    t = 0.5 * torch.randn(num_texts, dim, generator=g)
    e = 0.5 * torch.randn(num_videos, num_frames, dim, generator=g)
    return head, t, e


def _child(spec: dict) -> dict:
    import torch

    from xpool.similarity import plain_similarity_matrix, similarity_matrix

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    head, t, e = _make_problem(
        spec["texts"], spec["videos"], spec["frames"], spec["dim"], spec["heads"], spec["seed"]
    )
    fn = similarity_matrix if spec["kind"] == "fast" else plain_similarity_matrix
    fn(head, t[:16], e[:32])  # warm-up: thread pools, MKL kernels
    exact_peak = _reset_peak()
    base_kb = _proc_status_kb("VmRSS") or 0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sims = fn(head, t, e)
    seconds = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    if exact_peak and (hwm := _proc_status_kb("VmHWM")) is not None:
        peak_kb, method = hwm - base_kb, "VmHWM after clear_refs minus VmRSS before"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb
        method = "ru_maxrss minus VmRSS before (upper bound)"
    if spec.get("save"):
        import numpy as np

        np.save(spec["save"], sims.numpy())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": peak_kb / 1024,
        "peak_method": method,
        "threads": torch.get_num_threads(),
    }


def _matmul_gflops(size: int = 4096, inner: int = 512, reps: int = 5) -> float:
    import torch

    a = torch.randn(size, inner)
    b = torch.randn(inner, size)
    a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size * size * inner / statistics.median(times) / 1e9


# ---- parent side ------------------------------------------------------------------------------


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec['kind']}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fast_path_flops(num_texts: int, num_videos: int, num_frames: int, dim: int) -> float:
    """Multiply-adds x 2 of the one-head fast path (precompute + per-pair work)."""
    vf = num_videos * num_frames
    k = num_frames
    forms = 3 * k + 3
    precompute = 2 * 2 * vf * dim * dim + 3 * 2 * num_videos * k * k * dim
    texts = 2 * 2 * num_texts * dim * dim
    per_pair = 2 * num_texts * vf * dim * 2 + 2 * num_texts * num_videos * k * forms
    return float(precompute + texts + per_pair)


def plain_path_flops(num_texts: int, num_videos: int, num_frames: int, dim: int) -> float:
    """Multiply-adds x 2 of the head's forward over all pairs (out_proj and linear_proj dominate)."""
    pairs = num_texts * num_videos
    return float(2 * 2 * pairs * dim * dim + 2 * 2 * pairs * num_frames * dim)


def _machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = round(int(fh.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a summary, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return {}

    if args.quick:
        square, msvd, reps = (256, 256), (670, 1000), args.reps or 2
        msvd_reps = 1
    else:
        square, msvd, reps = (1000, 1000), (670, 27763), args.reps or 3
        msvd_reps = reps
    frames, dim = 12, 512
    out_path = args.out or ROOT / "results" / "bench" / (
        "similarity-quick.json" if args.quick else "similarity.json"
    )
    base = {"frames": frames, "dim": dim, "heads": 1, "seed": 0, "threads": args.threads}
    t0 = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if load_at_start[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"note: load average {load_at_start} on {os.cpu_count()} cores: other work "
            "competes for the CPU, timings will be inflated"
        )

    import numpy as np

    from xpool.metrics import t2v_ranks, v2t_ranks

    runs: dict[str, list[dict]] = {"plain": [], "fast": []}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {kind: os.path.join(tmp, f"{kind}.npy") for kind in runs}
        for rep in range(reps):
            for kind in ("plain", "fast"):
                spec = dict(base, kind=kind, texts=square[0], videos=square[1])
                if rep == 0:
                    spec["save"] = saved[kind]
                result = _run_child(spec)
                runs[kind].append(result)
                print(
                    f"  {square[0]}x{square[1]} {kind:5s} rep {rep + 1}/{reps}: "
                    f"{result['seconds']:.3f} s, peak +{result['peak_mb']:.0f} MB",
                    flush=True,
                )
        plain_sims, fast_sims = np.load(saved["plain"]), np.load(saved["fast"])
    video_of_text = np.arange(square[0]) % square[1]
    max_abs_diff = float(np.abs(plain_sims - fast_sims).max())
    same_ranks = bool(
        np.array_equal(t2v_ranks(plain_sims, video_of_text), t2v_ranks(fast_sims, video_of_text))
        and np.array_equal(
            v2t_ranks(plain_sims, video_of_text), v2t_ranks(fast_sims, video_of_text)
        )
    )

    msvd_runs = []
    for rep in range(msvd_reps):
        result = _run_child(dict(base, kind="fast", texts=msvd[1], videos=msvd[0]))
        msvd_runs.append(result)
        print(
            f"  MSVD-sized {msvd[0]} videos x {msvd[1]} captions fast rep {rep + 1}/{msvd_reps}: "
            f"{result['seconds']:.2f} s, peak +{result['peak_mb']:.0f} MB",
            flush=True,
        )

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    matmul = _matmul_gflops()

    def med(values: list[dict], key: str) -> float:
        return float(statistics.median(v[key] for v in values))

    plain_s, fast_s = med(runs["plain"], "seconds"), med(runs["fast"], "seconds")
    fast_flops = fast_path_flops(square[0], square[1], frames, dim)
    msvd_flops = fast_path_flops(msvd[1], msvd[0], frames, dim)
    results = {
        "command": "python bench/similarity.py" + (" --quick" if args.quick else ""),
        "machine": dict(
            _machine(),
            load_average_at_start=load_at_start,
            load_average_at_end=[round(x, 2) for x in os.getloadavg()],
        ),
        "method": {
            "timing": "wall clock of one call per fresh child process, after a warm-up; "
            f"plain and fast interleaved, median of {reps}; cpu_seconds is user+sys CPU time "
            "of the call (all threads)",
            "peak_memory": runs["fast"][0]["peak_method"],
            "head": "xpool, num_heads=1, random weights (Linear ~ N(0, 1/D), LN gains ~ N(1, 0.09))",
            "plain": "xpool.similarity.plain_similarity_matrix (default memory-budget chunking)",
            "fast": "xpool.similarity.similarity_matrix (default chunking)",
        },
        "square": {
            "texts": square[0],
            "videos": square[1],
            "frames": frames,
            "dim": dim,
            "plain_seconds": plain_s,
            "fast_seconds": fast_s,
            "ratio": plain_s / fast_s,
            "plain_peak_mb": med(runs["plain"], "peak_mb"),
            "fast_peak_mb": med(runs["fast"], "peak_mb"),
            "plain_runs_seconds": [r["seconds"] for r in runs["plain"]],
            "fast_runs_seconds": [r["seconds"] for r in runs["fast"]],
            "plain_cpu_seconds": med(runs["plain"], "cpu_seconds"),
            "fast_cpu_seconds": med(runs["fast"], "cpu_seconds"),
            "max_abs_diff": max_abs_diff,
            "identical_ranks": same_ranks,
            "fast_gflop": fast_flops / 1e9,
            "fast_gflops_per_s": fast_flops / fast_s / 1e9,
            "plain_gflop": plain_path_flops(square[0], square[1], frames, dim) / 1e9,
        },
        "msvd_sized": {
            "videos": msvd[0],
            "captions": msvd[1],
            "frames": frames,
            "dim": dim,
            "fast_seconds": med(msvd_runs, "seconds"),
            "fast_peak_mb": med(msvd_runs, "peak_mb"),
            "runs_seconds": [r["seconds"] for r in msvd_runs],
            "fast_cpu_seconds": med(msvd_runs, "cpu_seconds"),
            "fast_gflops_per_s": msvd_flops / med(msvd_runs, "seconds") / 1e9,
            "naive_pooled_tensor_gb": msvd[0] * msvd[1] * dim * 4 / 1e9,
        },
        "matmul_gflops_per_s": matmul,
        "bench_seconds": time.perf_counter() - t0,
    }
    sq, ms = results["square"], results["msvd_sized"]
    print(
        f"\n{sq['texts']} x {sq['videos']} (F={frames}, D={dim}): plain {plain_s:.2f} s "
        f"(peak +{sq['plain_peak_mb']:.0f} MB), fast {fast_s:.3f} s (peak +{sq['fast_peak_mb']:.0f} "
        f"MB), ratio {sq['ratio']:.1f}x; max |diff| {max_abs_diff:.1e}, identical ranks: "
        f"{same_ranks}"
    )
    print(
        f"MSVD-sized ({ms['videos']} videos x {ms['captions']} captions): fast {ms['fast_seconds']:.1f} s, "
        f"peak +{ms['fast_peak_mb']:.0f} MB (the pooled [V, T, D] tensor alone would be "
        f"{ms['naive_pooled_tensor_gb']:.0f} GB)"
    )
    print(
        f"fast path {sq['fast_gflops_per_s']:.0f} GFLOP/s ({sq['texts']}x{sq['videos']}), {ms['fast_gflops_per_s']:.0f} "
        f"GFLOP/s (MSVD) vs float32 matmul {matmul:.0f} GFLOP/s on {results['machine']['cpu']} "
        f"({results['machine']['torch_threads']} threads)"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")
    return results


if __name__ == "__main__":
    main()
