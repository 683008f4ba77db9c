"""Data loading: batches per second of the training dataset with 0, 1 and 2 DataLoader workers.

The training pipeline as `xpool train` builds it: :class:`xpool.data.datasets.TrainDataset`
(decode with decord, random crop + flip, normalise, tokenize) + :func:`collate_train`, no frame
cache. Only loading is timed (the main process consumes batches and does nothing else), so this
is the ceiling the loader puts on training speed.

Settings:

* ``embedded`` (``smoke`` with ``--quick``): the synthetic benchmark corpus of that profile with
  its tiny CLIP's input size, frame count and batch size: what `make reproduce` loads.
* ``msrvtt-like`` (full run only): synthetic 320x240, 15 s, 30 fps H.264 videos like MSR-VTT's
  (see ``bench/decode.py``), the paper's 12 frames at 224 px, batch 8 (the paper uses 32; 8 keeps
  a round short on 2 CPU cores; throughput per clip does not depend on it).

Each worker count has its own DataLoader with persistent workers (started in the warm-up), and
the settings' rounds are interleaved; one timed call loads a fixed number of batches. Workers
run torch with one thread (PyTorch's default), the main process with all cores; where that is
more than one, "0 workers, 1 torch thread" also loads in the main process at one thread.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    BenchReport,
    apply_threads,
    bench_parser,
    round_ratios,
    speedup,
    time_interleaved,
)

WORKERS = (0, 1, 2)
ONE_THREAD = "0 workers, 1 torch thread"


def _loaders(dataset: Any, batch_size: int, num_batches: int) -> dict[str, Any]:
    """One DataLoader per worker count over the first ``num_batches`` batches (fixed order)."""
    from torch.utils.data import DataLoader, Subset

    from xpool.data.datasets import collate_train

    subset = Subset(dataset, range(min(len(dataset), batch_size * num_batches)))
    out = {}
    for w in WORKERS:
        out[f"{w} workers"] = DataLoader(
            subset, batch_size=batch_size, shuffle=False, num_workers=w, collate_fn=collate_train,
            persistent_workers=w > 0, drop_last=True, generator=torch.Generator().manual_seed(0),
        )
    return out


def _with_one_thread(fn: Any) -> Any:
    """``fn`` run with torch limited to one thread (restored afterwards)."""
    from xpool.engine.setup import torch_threads

    def run() -> None:
        with torch_threads(1):
            fn()

    return run


def _epoch(loader: Any, dataset: Any, expected: int) -> None:
    dataset.set_epoch(dataset.epoch + 1)
    n = 0
    for batch in loader:
        if batch["skipped"]:
            raise RuntimeError(f"videos failed to decode: {batch['errors'][:2]}")
        n += 1
    if n != expected:
        raise RuntimeError(f"expected {expected} batches, got {n}")


def bench_setting(report: BenchReport, key: str, label: str, dataset: Any, batch_size: int,
                  num_batches: int, repeats: int, params: dict[str, Any]) -> None:
    """Time the three worker counts on ``dataset`` and record a table."""
    num_batches = min(num_batches, len(dataset) // batch_size)
    loaders = _loaders(dataset, batch_size, num_batches)
    sides = {name: (lambda ld=ld: _epoch(ld, dataset, num_batches)) for name, ld in loaders.items()}
    if torch.get_num_threads() > 1:
        # Workers run torch with one thread; the main process with all cores. Loading in the main
        # process at one thread too separates the worker effect from the threading effect.
        sides[ONE_THREAD] = _with_one_thread(sides["0 workers"])
    print(f"{label}: {num_batches} batches of {batch_size}, {repeats} rounds", flush=True)
    timings = time_interleaved(sides, repeats=repeats, warmup=1)
    rows = []
    for name, t in timings.items():
        rows.append([name, t.rate(num_batches), t.rate(num_batches * batch_size),
                     speedup(timings, name, "0 workers")])
    report.add_table(f"{label}: batches of {batch_size} (median of {repeats} rounds of "
                     f"{num_batches} batches)", ["loader", "batches/s", "clips/s", "vs 0 workers"], rows)
    report.results[key] = {
        **params, "batch_size": batch_size, "batches_per_round": num_batches,
        **{name: {**t.to_dict(), "batches_per_s": t.rate(num_batches)} for name, t in timings.items()},
        "speedup_2_workers": speedup(timings, "2 workers", "0 workers"),
        "speedup_2_workers_per_round": round_ratios(timings, "2 workers", "0 workers"),
    }
    if ONE_THREAD in timings and speedup(timings, ONE_THREAD, "0 workers") > 1.3:
        report.note(f"{label}: loading in the main process is {speedup(timings, ONE_THREAD, '0 workers'):.1f}x "
                    f"faster at 1 torch thread than at {torch.get_num_threads()}: the frame transforms are "
                    f"small operations whose threads wait on each other when the cores are busy")
    best = max(timings, key=lambda k: timings[k].rate(num_batches))
    report.add_headline(f"data loading, {label}", timings[best].rate(num_batches), "batches/s",
                        detail=f"best with {best} ({speedup(timings, best, '0 workers'):.2f}x 0 workers); "
                               f"batch {batch_size}, {params['num_frames']} frames, {params['image_size']} px")


def profile_dataset(profile: str) -> tuple[Any, dict[str, Any]]:
    """The training dataset of a synthetic profile (corpus generated if needed), its settings."""
    from xpool.config import load_config
    from xpool.data.corpora import load_corpus
    from xpool.data.datasets import TrainDataset
    from xpool.data.synthetic import ensure_corpus
    from xpool.data.transforms import transform_for
    from xpool.model.backbone import build_backbone

    cfg = load_config(profile)
    root = ensure_corpus(cfg, progress=False)
    corpus = load_corpus(cfg.data.corpus, root, "train", train_list=cfg.data.train_list)
    bb = build_backbone(cfg.model.backbone, pretrained=None)  # only the tokenizer and sizes
    transform = transform_for(bb, train=cfg.data.train_augment)
    ds = TrainDataset(corpus, bb.tokenize, transform, cfg.data.num_frames,
                      sampling=cfg.data.train_sampling, seed=cfg.train.seed)
    params = {"profile": profile, "corpus_root": str(root), "items": len(ds),
              "num_frames": cfg.data.num_frames, "image_size": bb.image_size,
              "video_resolution": cfg.synth.resolution, "sampling": cfg.data.train_sampling,
              "profile_batch_size": cfg.train.batch_size}
    return ds, params


def msrvtt_like_dataset(tmp: Path, num_videos: int, captions_per_video: int) -> tuple[Any, dict[str, Any]]:
    """Training dataset over synthetic MSR-VTT-like videos with the paper's 12 frames at 224 px."""
    import open_clip

    from bench.decode import MSRVTT_LIKE, write_msrvtt_like
    from xpool.data.corpora import Caption, Corpus
    from xpool.data.datasets import TrainDataset
    from xpool.data.transforms import VideoTransform

    print(f"writing {num_videos} MSR-VTT-like videos to {tmp}", flush=True)
    videos = {f"video{i}": write_msrvtt_like(tmp / f"video{i}.mp4", seed=100 + i, **MSRVTT_LIKE)
              for i in range(num_videos)}
    # Caption-major order, so consecutive items (one batch) come from different videos.
    captions = [Caption(v, f"caption {c} of {v}", f"{v}#{c}")
                for c in range(captions_per_video) for v in videos]
    corpus = Corpus("msrvtt-like", "train", tmp, videos, captions)
    transform = VideoTransform(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, train=True)
    ds = TrainDataset(corpus, open_clip.get_tokenizer("ViT-B-32"), transform, 12, "uniform", seed=24)
    params = {"videos": num_videos, "items": len(ds), "num_frames": 12, "image_size": 224,
              "video_format": MSRVTT_LIKE, "sampling": "uniform"}
    return ds, params


def main(argv: list[str] | None = None) -> int:
    """Run the data-loading benchmark; writes results/bench[/quick]/dataloader.json."""
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    threads = apply_threads(args)
    report = BenchReport.from_args("dataloader", "Training data loading: 0, 1, 2 DataLoader workers",
                                   args, argv, repeats=repeats, workers=list(WORKERS), main_torch_threads=threads,
                                   worker_torch_threads=1)
    profile = "smoke" if args.quick else "embedded"
    ds, params = profile_dataset(profile)
    bench_setting(report, profile, f"{profile} corpus", ds, params["profile_batch_size"],
                  num_batches=2 if args.quick else 8, repeats=repeats, params=params)
    if args.quick:
        report.note("quick mode: the smoke corpus only (32 px, 4 frames): a plumbing check, not a "
                    "measurement; the full run adds the embedded corpus and MSR-VTT-like videos")
    else:
        with tempfile.TemporaryDirectory(prefix="xpool-bench-loader-") as tmp:
            ds, params = msrvtt_like_dataset(Path(tmp), num_videos=8, captions_per_video=4)
            bench_setting(report, "msrvtt_like", "MSR-VTT-like 320x240 videos", ds, 8,
                          num_batches=3, repeats=repeats, params=params)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
