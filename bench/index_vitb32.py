"""CPU time to index videos with the full CLIP ViT-B/32 (``xpool index``), and what that means
for evaluating the authors' checkpoints on MSR-VTT's 1,000-video test split.

Random ViT-B/32 weights (QuickGELU) stand in for the real ones: the cost does not depend on the
values. Each round indexes the fixture videos from scratch (decode 12 uniform frames, resize to
224, encode) through ``xpool.search.build_index``, in a fresh index folder. Printed: per-video
seconds for decoding and for encoding (timed separately), the whole index's seconds, the load
average before and after, and the extrapolation to 1,000 videos (12,000 image passes).

    python -m bench.index_vitb32 [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                            "fixtures" / "videos"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from xpool.config import load_config
    from xpool.data.transforms import VideoTransform
    from xpool.data.video import sample_frames
    from xpool.model.backbone import build_backbone
    from xpool.search import build_index, find_videos

    torch.set_num_threads(args.threads)
    videos = find_videos(args.videos)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vitb32_random.pt"
        bb = build_backbone("ViT-B-32", pretrained=None, quick_gelu=True).eval()
        torch.save(bb.model.state_dict(), weights)
        transform = VideoTransform(bb.image_size, bb.image_mean, bb.image_std, train=False)
        decode_s, encode_s, index_s = [], [], []
        for r in range(args.rounds):
            for path in videos:
                t0 = time.perf_counter()
                clip = transform(sample_frames(path, 12)[0])
                t1 = time.perf_counter()
                with torch.no_grad():
                    bb.encode_frames(clip[None])
                t2 = time.perf_counter()
                decode_s.append(t1 - t0)
                encode_s.append(t2 - t1)
            cfg = load_config("paper-msrvtt9k", {"model.pretrained": str(weights),
                                                 "eval.batch_size": 4})
            t0 = time.perf_counter()
            report = build_index(cfg, args.videos, Path(tmp) / f"index{r}", progress=False)
            index_s.append(time.perf_counter() - t0)
            assert len(report.embedded) == len(videos), report.summary()
    load_after = os.getloadavg()
    n = len(videos)
    per_decode = sorted(decode_s)[len(decode_s) // 2]
    per_encode = sorted(encode_s)[len(encode_s) // 2]
    per_index = min(index_s) / n
    print(f"{n} fixture videos x 12 frames, ViT-B/32 at 224 px, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(f"median per video: decode+resize {per_decode:.2f} s, encode 12 frames {per_encode:.2f} s"
          f" ({per_encode / 12 * 1000:.0f} ms per image)")
    print(f"build_index (model load included): {', '.join(f'{s:.1f}' for s in index_s)} s for "
          f"{n} videos; best {per_index:.2f} s per video")
    print(f"extrapolated to 1,000 MSR-VTT test videos: {1000 * (per_decode + per_encode) / 60:.1f} "
          f"min (decode + encode medians), {1000 * per_index / 60:.1f} min (best index round); "
          "fixture videos are larger than MSR-VTT's 320x240 on average, so decoding is pessimistic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
