"""Decode each video once and reuse its frames across epochs.

Decoding dominates data loading in the authors' and CLIP4Clip's code. The cache stores, per video,
the F *uniformly* sampled frames (uint8 RGB, short side resized to ``size`` while decoding; videos
already smaller keep their size) as one ``.npy`` file. So with the cache, training uses uniform
sampling (the authors' default) whatever ``sampling`` says; random crops and flips still vary.

Entries are keyed by a hash of (absolute path, mtime, file size, num_frames, size), so a changed
video is decoded again. Files are written to a unique temporary name and moved into place with
``os.replace``, which is atomic: several DataLoader workers (or processes) can share one cache
directory; at worst two of them decode the same video once each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from xpool.data.video import resized_shape, sample_frames, video_info

__all__ = ["FrameCache"]

_log = logging.getLogger(__name__)
_FORMAT_VERSION = 1  # bump when what is stored changes, so old entries are not reused


class FrameCache:
    """Decoded-frame cache: ``get(path)`` -> uint8 ``[F, H, W, 3]``, short side ``<= size``."""

    def __init__(self, cache_dir: str | Path, num_frames: int, size: int) -> None:
        if num_frames <= 0 or size <= 0:
            raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
        self.cache_dir = Path(cache_dir)
        self.num_frames = int(num_frames)
        self.size = int(size)

    def __repr__(self) -> str:
        return f"FrameCache({str(self.cache_dir)!r}, num_frames={self.num_frames}, size={self.size})"

    def key(self, path: str | Path) -> str:
        """Hex digest identifying this video file version and these settings."""
        p = Path(path).resolve()
        st = p.stat()
        ident = f"v{_FORMAT_VERSION}|{p}|{st.st_mtime_ns}|{st.st_size}|{self.num_frames}|{self.size}"
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()

    def entry_path(self, path: str | Path) -> Path:
        k = self.key(path)
        return self.cache_dir / k[:2] / f"{k}.npy"

    def get(self, path: str | Path) -> np.ndarray:
        """Cached frames of ``path``, decoding and storing them on a miss.

        Raises VideoDecodeError (from the decoder) when the video cannot be decoded; failures are
        not cached, so a repaired file is picked up.
        """
        path = Path(path)
        if not path.is_file():
            # Let the decoder produce the standard error message for missing files.
            return self._decode(path)
        entry = self.entry_path(path)
        if entry.is_file():
            try:
                frames = np.load(entry, allow_pickle=False)
                if frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == self.num_frames:
                    return frames
            except (OSError, ValueError, EOFError):
                pass  # unreadable entry (e.g. disk trouble): decode again and overwrite it
        frames = self._decode(path)
        try:
            self._store(entry, frames)
        except OSError as exc:  # a full or read-only disk must not stop training: caching is optional
            _log.warning("frame cache: could not write %s: %s", entry, exc)
        return frames

    def _decode(self, path: Path) -> np.ndarray:
        info = video_info(path)
        target = resized_shape(info["height"], info["width"], self.size)
        size = None if target == (info["height"], info["width"]) else target
        frames, _ = sample_frames(path, self.num_frames, mode="uniform", size=size)
        return frames

    def _store(self, entry: Path, frames: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npy")
        try:
            with tmp.open("wb") as f:
                np.save(f, frames, allow_pickle=False)
            os.replace(tmp, entry)
        finally:
            if tmp.exists():
                tmp.unlink()
