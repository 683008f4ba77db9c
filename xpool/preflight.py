"""Checks before long work: find bad annotations and broken evaluation videos before training
starts, not at the first evaluation an epoch later.

`preflight(cfg, splits)` reports every problem at once. Decoding the evaluation videos is cached
per corpus by a marker keyed on each file's path, size and modification time, so the ~99 runs of
a study decode them once; in frozen-feature mode nothing is decoded when the features of those
splits are already cached (extraction decoded them).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from xpool.config import Config
from xpool.data.corpora import check_split_overlap
from xpool.errors import VideoDecodeError
from xpool.io import write_json

MAX_LISTED = 10


def preflight(cfg: Config, eval_splits: list[str], progress: bool = True) -> None:
    """Annotations of train and every eval split (empty captions, duplicated rows, train/test
    overlap), then every evaluation video (decoded once per corpus state)."""
    from xpool.train import load_split

    train = load_split(cfg, "train")
    corpora = {split: load_split(cfg, split) for split in eval_splits}
    if "test" in corpora:
        check_split_overlap(train, corpora["test"], cfg.data.allow_overlap)
    if cfg.model.frozen:
        from xpool.features import feature_path

        eval_splits = [s for s in eval_splits if not feature_path(cfg, s).is_file()]
    paths = sorted({p for s in eval_splits for p in corpora[s].videos.values()})
    if paths:
        check_videos(paths, cfg.data.num_frames, progress=progress)


def _marker(paths: list[Path], num_frames: int) -> Path:
    h = hashlib.sha256(str(num_frames).encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return Path("cache") / "validated" / f"{h.hexdigest()[:16]}.json"


def check_videos(paths: list[Path], num_frames: int, progress: bool = True) -> float:
    """Decode the `num_frames` uniform frames evaluation reads from every video; raise one
    `VideoDecodeError` listing every bad file. Returns the seconds spent (0 when cached)."""
    from tqdm.auto import tqdm

    from xpool.data.video import check_container, sample_frames

    marker = _marker(paths, num_frames)
    if marker.is_file():
        return 0.0
    t = time.perf_counter()
    bad: list[str] = []
    for p in tqdm(paths, desc="check evaluation videos", disable=not progress, leave=False):
        try:
            check_container(p)
            sample_frames(p, num_frames, "uniform")
        except VideoDecodeError as e:
            bad.append(str(e))
    if bad:
        shown = "\n  ".join(bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise VideoDecodeError(
            f"{len(bad)} of {len(paths)} evaluation videos cannot be decoded (checked before "
            f"training, since evaluation never skips a video):\n  {shown}{more}\n"
            f"Re-download them (`xpool download ...`, which resumes) or re-encode them "
            f"(`xpool prepare compress`), or remove them from the annotations.")
    seconds = time.perf_counter() - t
    write_json(marker, {"videos": len(paths), "num_frames": num_frames,
                        "seconds": round(seconds, 3), "first": str(paths[0])})
    return seconds
