"""Two-stage retrieval: what a mean-pooled shortlist of K videos costs X-Pool in recall, and speed.

Usage: ``python -m bench.twostage [--quick] [--threads N] [--device cpu|cuda]``. Writes
``twostage.json`` to ``results/bench`` (``--quick``: ``results/bench/quick``; ``$XPOOL_BENCH_DIR``
or ``--out`` override) in the record format of ``bench/common.py``.

For galleries of 10^4 and 10^5 videos (``--quick``: 10^4 only, fewer queries) and shortlist
sizes K in {10, 50, 100, 500}, with each shortlist index (torch top-k, FAISS flat, FAISS IVF):

- agreement: the share of queries whose two-stage top-1 / top-5 / top-10 (ordered lists of
  videos) equal those of exhaustive X-Pool over the whole gallery;
- R@1/5/10 of the two-stage ranking next to the exhaustive ones;
- ms per query (shortlist + rerank, queries in one batch), and the one-off gallery preparation;
- peak memory of the search above what was resident before it (VmHWM after clear_refs; on
  CUDA ``max_memory_allocated``).

Features. Encoding 10^5 rendered videos with the tiny CLIP is far too slow for a benchmark, so
the features are synthetic and compositional, built like the synthetic corpus: D = 128 (the
tiny CLIP's width), F = 12 frames = 3 scenes x 4 frames. Each of the 768 nameable scenes of
``xpool.data.synthetic`` (size, colour, shape, motion, background) gets the normalized sum of
five random attribute vectors, so scenes differing in one attribute are near neighbours (hard
negatives); a frame is its scene's vector plus Gaussian noise. A caption names one or two of
its video's three scenes (the normalized sum of their vectors plus noise), so a text-conditioned
head can attend to the frames it describes while the mean-pooled shortlist cannot. The X-Pool
head (one attention head) is trained on a separate 4,000-video corpus of the same kind with the
symmetric InfoNCE loss (a few hundred steps, seconds), not on the benchmark galleries. These are
not CLIP features; the recall numbers say how the shortlist interacts with text-conditioned
pooling on features with this structure, not what a CLIP model would score.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from typing import Any

from bench.common import BenchReport, apply_threads, bench_parser, proc_status_kb

DIM, SCENES_PER_VIDEO, FRAMES_PER_SCENE = 128, 3, 4
FRAME_NOISE, TEXT_NOISE = 0.35, 0.25
KS = (10, 50, 100, 500)
FULL = {"galleries": (10_000, 100_000), "queries": 1000}
QUICK = {"galleries": (10_000,), "queries": 200}
IVF_NPROBE = 16


# ----------------------------------------------------------------------------- features


def _scene_bank(gen: Any) -> Any:
    """[768, D] unit vectors: normalized sums of one random vector per attribute value."""
    import torch
    import torch.nn.functional as F

    from xpool.data.synthetic import ALL_SCENES, BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES

    values = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES, "motion": MOTIONS,
              "background": BACKGROUNDS}
    vec = {(a, v): torch.randn(DIM, generator=gen) for a, vs in values.items() for v in vs}
    rows = [sum(vec[(a, getattr(s, a))] for a in values) for s in ALL_SCENES]
    return F.normalize(torch.stack(rows), dim=-1)


def make_corpus(num_videos: int, num_queries: int, seed: int) -> tuple[Any, Any, Any]:
    """(frames [V, F, D], queries [T, D], ground-truth video [T]) of the synthetic corpus."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    bank = _scene_bank(torch.Generator().manual_seed(1234))  # one scene vocabulary for all
    scenes = torch.randint(0, bank.shape[0], (num_videos, SCENES_PER_VIDEO), generator=gen)
    frames = bank[scenes].repeat_interleave(FRAMES_PER_SCENE, dim=1)  # [V, F, D]
    frames = frames + FRAME_NOISE * torch.randn(frames.shape, generator=gen) / math.sqrt(DIM)
    gt = torch.randperm(num_videos, generator=gen)[:num_queries]
    # Each caption names one or two of its video's scenes (a random non-empty subset of 1-2).
    picks = torch.rand(num_queries, SCENES_PER_VIDEO, generator=gen)
    two = torch.rand(num_queries, generator=gen) < 0.5
    order = picks.argsort(dim=1)
    mask = torch.zeros(num_queries, SCENES_PER_VIDEO)
    mask.scatter_(1, order[:, :1], 1.0)
    mask[two] = mask[two].scatter(1, order[two, 1:2], 1.0)
    text = (bank[scenes[gt]] * mask.unsqueeze(2)).sum(1)
    text = F.normalize(text, dim=-1) + TEXT_NOISE * torch.randn(text.shape, generator=gen) / math.sqrt(DIM)
    return frames.contiguous(), text, gt


def train_head(steps: int, seed: int = 0) -> tuple[Any, dict[str, float]]:
    """An X-Pool head trained with symmetric InfoNCE on its own 4,000-video synthetic corpus."""
    import torch

    from xpool.losses import symmetric_infonce
    from xpool.model.pooling import build_pooling

    torch.manual_seed(seed)
    frames, _, _ = make_corpus(4000, 1, seed=10_000 + seed)
    head = build_pooling("xpool", DIM, num_heads=1, dropout=0.0)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    logit_scale = torch.tensor(math.log(50.0))
    gen = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        idx = torch.randint(0, frames.shape[0], (64,), generator=gen)
        # Fresh captions for the batch's videos: each names 1-2 of the video's scenes.
        f = frames[idx]
        scene_means = f.view(64, SCENES_PER_VIDEO, FRAMES_PER_SCENE, DIM).mean(2)
        mask = (torch.rand(64, SCENES_PER_VIDEO, generator=gen) < 0.5).float()
        mask[mask.sum(1) == 0, 0] = 1.0
        text = torch.nn.functional.normalize((scene_means * mask.unsqueeze(2)).sum(1), dim=-1)
        text = text + TEXT_NOISE * torch.randn(text.shape, generator=gen) / math.sqrt(DIM)
        pooled = torch.nn.functional.normalize(head(text, f), dim=-1)  # [V, T, D]
        sims = torch.einsum("vtd,td->tv", pooled, torch.nn.functional.normalize(text, dim=-1))
        loss = symmetric_infonce(sims, logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    return head, {"steps": steps, "seconds": time.perf_counter() - start,
                  "first_loss": losses[0], "last_loss": float(sum(losses[-20:]) / 20)}


# ----------------------------------------------------------------------------- measurement


def measured(fn: Any, device: Any) -> tuple[Any, float, float]:
    """(result, seconds, peak MB above the resident memory before the call) of ``fn()``."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        base = proc_status_kb("VmRSS") or 0
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        hwm = proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = (hwm - base) / 1024
    return out, seconds, peak


def exhaustive_top(head: Any, text: Any, frames: Any, gt: Any) -> tuple[Any, Any]:
    """Exhaustive X-Pool: top-10 per query and the rank of each query's own video."""
    import torch

    from xpool.similarity import similarity_chunks

    tops, ranks = [], []
    for s0, block in similarity_chunks(head, text, frames, chunk_size=250):
        tops.append(block.topk(10, dim=1).indices.cpu())
        own = block[torch.arange(block.shape[0]), gt[s0 : s0 + block.shape[0]].to(block.device)]
        ranks.append((block >= own[:, None]).sum(1).cpu())
    return torch.cat(tops), torch.cat(ranks)


def recalls(top: Any, gt: Any) -> dict[str, float]:
    """R@1/5/10 (percent) of ranked lists ``top`` [T, >= 10] (-1 = empty) against ``gt``."""
    hit = top == gt[:, None]
    return {f"R{k}": float(100 * hit[:, :k].any(1).float().mean()) for k in (1, 5, 10)}


def agreement(top: Any, reference: Any) -> dict[str, float]:
    """Share (percent) of queries whose ordered top-k equals the reference's, k = 1, 5, 10."""
    return {f"top{k}": float(100 * (top[:, :k] == reference[:, :k]).all(1).float().mean())
            for k in (1, 5, 10)}


def run_gallery(head: Any, num_videos: int, num_queries: int, device: Any, kinds: list[str],
                precision: str) -> dict[str, Any]:
    """Exhaustive vs two-stage numbers for one gallery size."""
    from xpool.twostage import TwoStageSearch

    frames, text, gt = make_corpus(num_videos, num_queries, seed=num_videos)
    frames, text = frames.to(device), text.to(device)
    head = head.to(device)
    (ex_top, ex_rank), ex_s, ex_mb = measured(lambda: exhaustive_top(head, text, frames, gt), device)
    ex_recall = {f"R{k}": float(100 * (ex_rank <= k).float().mean()) for k in (1, 5, 10)}
    result: dict[str, Any] = {
        "videos": num_videos, "queries": num_queries, "precision": precision,
        "exhaustive": {"seconds": ex_s, "ms_per_query": 1000 * ex_s / num_queries,
                       "peak_mb": ex_mb, **ex_recall},
        "two_stage": [],
    }
    print(f"  {num_videos} videos, {precision}: exhaustive {ex_s:.2f} s "
          f"({1000 * ex_s / num_queries:.2f} ms/query), R@1/5/10 "
          f"{ex_recall['R1']:.1f}/{ex_recall['R5']:.1f}/{ex_recall['R10']:.1f}", flush=True)
    for kind in kinds:
        search, build_s, build_mb = measured(lambda k=kind: TwoStageSearch(head, frames, k,
                                                                          nprobe=IVF_NPROBE), device)
        for k in KS:
            (_, top), sec, mb = measured(lambda k=k, s=search: s.search(text, k, top=10), device)
            # The shortlist alone, to split the time between the two stages.
            _, short_s, _ = measured(lambda k=k, s=search: s.index.search(text, k), device)
            row = {"index": kind, "K": k, "ms_per_query": 1000 * sec / num_queries,
                   "shortlist_ms_per_query": 1000 * short_s / num_queries, "peak_mb": mb,
                   "build_s": build_s, "build_peak_mb": build_mb, **agreement(top, ex_top),
                   **recalls(top, gt)}
            if kind == "ivf":
                row.update(nlist=search.index.nlist, nprobe=search.index.nprobe)
            result["two_stage"].append(row)
            print(f"    {kind:5s} K={k:3d}: {row['ms_per_query']:.3f} ms/query, agree "
                  f"top1/5/10 {row['top1']:.1f}/{row['top5']:.1f}/{row['top10']:.1f}%, R@1 "
                  f"{row['R1']:.1f}", flush=True)
        search = None  # free this index's memory before the next one is built
    return result


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes ``<results dir>/twostage.json``."""
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: fp32 and TF32 runs)")
    parser.add_argument("--train-steps", type=int, default=None, help="head training steps")
    args = parser.parse_args(argv)

    import torch

    from xpool.twostage import INDEX_KINDS

    threads = apply_threads(args)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    steps = args.train_steps or (150 if args.quick else 400)
    try:
        import faiss  # noqa: F401  (optional extra: without it only the torch index runs)

        kinds = list(INDEX_KINDS)
    except ImportError:
        kinds = ["exact"]
    report = BenchReport.from_args(
        "twostage", "Two-stage retrieval: mean-pooled shortlist + exact X-Pool rerank", args,
        device=str(device), torch_threads=threads, galleries=list(sizes["galleries"]),
        queries=sizes["queries"], K=list(KS), indexes=kinds, ivf_nprobe=IVF_NPROBE,
        dim=DIM, frames=SCENES_PER_VIDEO * FRAMES_PER_SCENE, head_train_steps=steps,
        features="synthetic compositional scene embeddings (see bench/twostage.py), not CLIP",
    )
    head, training = train_head(steps)
    print(f"  head trained: {steps} steps in {training['seconds']:.1f} s, loss "
          f"{training['first_loss']:.2f} -> {training['last_loss']:.2f}", flush=True)
    precisions = ["fp32", "tf32"] if device.type == "cuda" else ["fp32"]
    runs = []
    for precision in precisions:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        for v in sizes["galleries"]:
            runs.append(run_gallery(head, v, sizes["queries"], device, kinds, precision))
    torch.backends.cuda.matmul.allow_tf32 = False

    for run in runs:
        ex = run["exhaustive"]
        title = (f"{run['videos']:,} videos, {run['queries']} queries, {run['precision']}: "
                 f"exhaustive X-Pool {ex['ms_per_query']:.2f} ms/query, R@1/5/10 "
                 f"{ex['R1']:.1f}/{ex['R5']:.1f}/{ex['R10']:.1f}, peak +{ex['peak_mb']:.0f} MB")
        rows = [[r["index"], r["K"], r["top1"], r["top5"], r["top10"], r["R1"], r["R5"], r["R10"],
                 r["ms_per_query"], r["shortlist_ms_per_query"], ex["ms_per_query"] / r["ms_per_query"],
                 r["peak_mb"], r["build_s"]] for r in run["two_stage"]]
        report.add_table(title, ["index", "K", "= top-1 %", "= top-5 %", "= top-10 %", "R@1",
                                 "R@5", "R@10", "ms/query", "of which shortlist", "speed-up",
                                 "peak MB", "build s"], rows)
        best = next((r for r in run["two_stage"] if r["index"] == "exact" and r["K"] == 100), None)
        if best is not None:
            report.add_headline(
                f"two-stage K=100 vs exhaustive, {run['videos']:,} videos ({run['precision']})",
                ex["ms_per_query"] / best["ms_per_query"], "x",
                detail=f"top-10 equal for {best['top10']:.1f}% of queries; R@1 {best['R1']:.1f} "
                       f"vs {ex['R1']:.1f} exhaustive")
    report.results = {"head_training": training, "runs": runs}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    report.note(f"load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on "
                f"{os.cpu_count()} cores: other processes shared the CPU, so times are inflated")
    report.note("ms/query: all queries in one batch, wall time divided by the number of queries; "
                "build s: one-off preparation of the gallery (mean pooling, index, X-Pool factors)")
    if args.quick:
        report.note("quick mode: 10^4 videos only, 200 queries, a shorter head training")
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
