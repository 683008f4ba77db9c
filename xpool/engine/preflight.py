"""Checks before long work: find bad annotations and broken evaluation videos before training
starts, not at the first evaluation an epoch later.

`preflight(cfg, splits)` reports every problem at once. Decoding the evaluation videos is cached
per corpus by a marker keyed on each file's path, size and modification time, so the ~99 runs of
a study decode them once; in frozen-feature mode nothing is decoded when the features of those
splits are already cached (extraction decoded them).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.corpora import check_split_overlap
from xpool.data.splits import load_split
from xpool.data.video import check_container, sample_frames
from xpool.engine.features import feature_path
from xpool.errors import VideoDecodeError
from xpool.io import write_json

MAX_LISTED = 10


def preflight(cfg: Config, eval_splits: list[str], progress: bool = True) -> None:
    """Annotations of train and every eval split (empty captions, duplicated rows, train/test
    overlap), then every evaluation video (decoded once per corpus state)."""
    if cfg.model.frozen:
        to_decode = [s for s in eval_splits if not feature_path(cfg, s).is_file()]
    else:
        to_decode = list(eval_splits)
    marker = _annotations_marker(cfg, eval_splits)
    if marker.is_file() and not to_decode:
        return  # these annotations passed before, and no video needs decoding
    train = load_split(cfg, "train")
    corpora = {split: load_split(cfg, split) for split in eval_splits}
    if "test" in corpora:
        check_split_overlap(train, corpora["test"], cfg.data.allow_overlap)
    write_json(marker, {"corpus": cfg.data.corpus, "root": str(cfg.data_root),
                        "splits": eval_splits})
    paths = sorted({p for s in to_decode for p in corpora[s].videos.values()})
    if paths:
        check_videos(paths, cfg.data.num_frames, progress=progress)


def _annotations_marker(cfg: Config, splits: list[str]) -> Path:
    """Keyed on every setting that changes what is checked and on the size and modification
    time of every file in the corpus root (the annotation files live there)."""
    d = cfg.data
    h = hashlib.sha256(repr((d.corpus, d.train_list, d.val_videos, d.missing, d.allow_overlap,
                             sorted(splits))).encode())
    root = cfg.data_root
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        entries = []
    for e in entries:
        if e.is_file():
            st = e.stat()
            h.update(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(str(root.resolve()).encode())
    return Path("cache") / "validated" / f"annotations-{h.hexdigest()[:16]}.json"


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
