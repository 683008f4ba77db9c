"""Decode a video with decord and sample a fixed number of frames from it.

Sampling (``num_frames`` = F, the video has n frames) has a *mode* and a *rule*.

Rule ``authors`` (their ``datasets/video_capture.py``): with ``k = min(F, n)``, segment
boundaries ``b = int(linspace(0, n, k + 1))`` and segment i is ``[b[i], b[i+1] - 1]``;

* ``uniform``: frame ``(b[i] + b[i+1] - 1) // 2`` of each segment;
* ``random``: a frame drawn uniformly from ``range(b[i], b[i+1] - 1)`` (their
  ``random.choice``; note it never draws a segment's last frame). Where that range is empty
  (a segment of one frame, always the case when n < 2F) their code raises; we take ``b[i]``;

and when n < F the k = n frames are followed by copies of the last one up to F.

Rule ``midpoint`` (this project's earlier rule, kept for the embedded study):

* ``uniform``: ``floor((i + 0.5) * n / F)`` for ``i in range(F)``;
* ``random``: uniform in ``[floor(i n / F), floor((i+1) n / F))``, the first index if empty.

Both rules return F non-decreasing indices.

Every failure (missing, empty or non-video file, a container cut short, zero frames, decoder
errors) raises :class:`~xpool.errors.VideoDecodeError` naming the path and the cause. decord alone
is not enough for that: on a truncated AVI it silently returns a shorter video whose last frame is
corrupt, and on a truncated "fast-start" MP4 some index sets decode without error. So before
decoding we check that the container's top-level structure (MP4 boxes, AVI RIFF chunks) fits in
the file, which catches truncation cheaply and reliably for the formats of MSR-VTT, MSVD and LSMDC.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

import decord
import numpy as np

from xpool.errors import VideoDecodeError

__all__ = ["sample_indices", "sample_frames", "video_info", "check_container", "resized_shape"]

SAMPLING_MODES = ("uniform", "random")
SAMPLING_RULES = ("authors", "midpoint")

# MP4/MOV top-level box types we expect; anything else means we are not looking at box structure.
_MP4_TOP_LEVEL = {
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"moof", b"mfra",
    b"styp", b"sidx", b"ssix", b"prft", b"emsg", b"pdin", b"pnot", b"junk", b"jP  ",
}
_MP4_SUFFIXES = {".mp4", ".m4v", ".mov", ".3gp", ".3g2"}
# decord raises DECORDError (an Exception, not a RuntimeError) from C++ and RuntimeError from Python.
_DECODER_ERRORS = (decord.DECORDError, RuntimeError)
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def sample_indices(
    num_total: int,
    num_frames: int,
    mode: str = "uniform",
    rng: np.random.Generator | None = None,
    rule: str = "authors",
) -> np.ndarray:
    """Frame indices (int64, non-decreasing) for F frames of an n-frame video (module docstring)."""
    if num_total <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_total}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if rule == "authors":
        return _authors_indices(num_total, num_frames, mode, rng)
    if rule != "midpoint":
        raise ValueError(f"unknown sampling rule {rule!r}; expected one of {SAMPLING_RULES}")
    i = np.arange(num_frames, dtype=np.int64)
    if mode == "uniform":
        # Integer arithmetic: floor((i + 0.5) * n / F) == floor((2i + 1) * n / (2F)), no float error.
        return ((2 * i + 1) * num_total) // (2 * num_frames)
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        lo = (i * num_total) // num_frames
        hi = np.maximum(((i + 1) * num_total) // num_frames, lo + 1)
        return rng.integers(lo, hi).astype(np.int64)
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")


def _authors_indices(
    num_total: int, num_frames: int, mode: str, rng: np.random.Generator | None
) -> np.ndarray:
    k = min(num_frames, num_total)
    # float64 linspace then truncation, exactly numpy's `.astype(int)` in their code.
    b = np.linspace(0, num_total, k + 1).astype(np.int64)
    lo, last = b[:-1], b[1:] - 1
    if mode == "uniform":
        idx = (lo + last) // 2
    elif mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        # range(lo, last) is empty when a segment has one frame: take that frame.
        idx = np.where(last > lo, rng.integers(lo, np.maximum(last, lo + 1)), lo)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if k < num_frames:
        idx = np.concatenate([idx, np.full(num_frames - k, idx[-1])])
    return idx.astype(np.int64)


def check_container(path: str | Path) -> None:
    """Raise VideoDecodeError if the file is missing, empty, or its container is cut short.

    Walks the top-level MP4 boxes or AVI RIFF chunks and checks that each declared size fits in
    the file. Other containers (mkv, webm, ...) only get the existence/emptiness checks.
    """
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(f"{path}: file does not exist")
    if not path.is_file():
        raise VideoDecodeError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            _check_riff(path, f, size)
        elif head[4:8] in _MP4_TOP_LEVEL or path.suffix.lower() in _MP4_SUFFIXES:
            _check_mp4_boxes(path, f, size)


def _check_riff(path: Path, f: Any, size: int) -> None:
    """AVI files are one or more RIFF chunks (OpenDML adds 'AVIX' chunks after the first)."""
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(8)
        if header[:4] != b"RIFF":
            break  # trailing junk after the last RIFF chunk: not a truncation
        (length,) = struct.unpack("<I", header[4:8])
        end = offset + 8 + length
        if end > size:
            raise VideoDecodeError(
                f"{path}: truncated AVI: RIFF chunk at byte {offset} declares {length} bytes "
                f"but the file ends after {size - offset - 8} (file is {size} bytes)"
            )
        offset = end + (length & 1)  # chunks are padded to even sizes


def _check_mp4_boxes(path: Path, f: Any, size: int) -> None:
    offset = 0
    seen_video_box = False
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(8)
        (length,) = struct.unpack(">I", header[:4])
        kind = header[4:8]
        if kind not in _MP4_TOP_LEVEL:
            if seen_video_box:
                break  # trailing bytes after a valid structure; let the decoder judge
            return  # not an ISO-BMFF file after all; decord will report what it is
        seen_video_box = True
        if length == 1:  # 64-bit size follows the type
            large = f.read(8)
            if len(large) < 8:
                raise VideoDecodeError(f"{path}: truncated MP4: box header at byte {offset} is cut")
            (length,) = struct.unpack(">Q", large)
        elif length == 0:  # box extends to the end of the file
            return
        if length < 8:
            raise VideoDecodeError(f"{path}: corrupt MP4: box {kind!r} at byte {offset} has size {length}")
        if offset + length > size:
            raise VideoDecodeError(
                f"{path}: truncated MP4: box {kind.decode('latin-1')!r} at byte {offset} declares "
                f"{length} bytes but only {size - offset} remain (file is {size} bytes)"
            )
        offset += length


def _decord_cause(exc: BaseException) -> str:
    """The informative first line of a decord/ffmpeg error, without its timestamp and source path."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _DECORD_PREFIX.sub("", text)
    # decord nests "[time] file:line:" prefixes when it rethrows from a decoder thread.
    text = _DECORD_PREFIX.sub("", text)
    return f"{type(exc).__name__}: {text[:300]}"


def _open_reader(path: Path, size: tuple[int, int] | None, num_threads: int) -> decord.VideoReader:
    check_container(path)
    height, width = size if size is not None else (-1, -1)
    try:
        reader = decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads
        )
    except _DECODER_ERRORS as exc:
        cause = _decord_cause(exc)
        if "cannot find video stream" in cause:
            cause = "no video stream (zero frames)"
        elif cause.startswith("RuntimeError: Error reading"):
            cause = "cannot open: not a video, or a corrupt/unsupported container"
        raise VideoDecodeError(f"{path}: {cause}") from exc
    except AssertionError as exc:  # decord asserts a positive frame count
        raise VideoDecodeError(f"{path}: video has zero frames ({exc})") from exc
    if len(reader) <= 0:
        raise VideoDecodeError(f"{path}: video has zero frames")
    return reader


def _to_numpy(batch: Any) -> np.ndarray:
    """decord returns its own NDArray, or a torch/other tensor if someone changed decord's bridge."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _read_batch(
    reader: decord.VideoReader, path: Path, indices: np.ndarray, size: tuple[int, int] | None
) -> np.ndarray:
    try:
        frames = _to_numpy(reader.get_batch(indices.tolist()))
    except (*_DECODER_ERRORS, IndexError, AssertionError) as exc:
        raise VideoDecodeError(
            f"{path}: failed to decode frames {indices.tolist()} of {len(reader)}: {_decord_cause(exc)}"
        ) from exc
    # Never hand out something that is not exactly what was asked for.
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[3] != 3:
        raise VideoDecodeError(
            f"{path}: decoder returned an array of shape {frames.shape} and dtype {frames.dtype}, "
            f"expected ({len(indices)}, H, W, 3) uint8"
        )
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise VideoDecodeError(f"{path}: decoder returned empty frames of shape {frames.shape}")
    if size is not None and tuple(frames.shape[1:3]) != tuple(size):
        raise VideoDecodeError(f"{path}: frames of size {frames.shape[1:3]} instead of the requested {size}")
    return np.ascontiguousarray(frames)


def sample_frames(
    path: str | Path,
    num_frames: int,
    mode: str = "uniform",
    rng: np.random.Generator | None = None,
    size: tuple[int, int] | None = None,
    *,
    num_threads: int = 1,
    rule: str = "authors",
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``num_frames`` frames of a video.

    Args:
        path: the video file.
        num_frames: F, how many frames to return.
        mode: ``"uniform"`` or ``"random"`` (see the module docstring).
        rng: numpy generator for ``"random"`` (a fresh unseeded one if None).
        size: optional ``(height, width)`` to resize to while decoding (ffmpeg's scaler).
        num_threads: decoder threads; 1 by default because DataLoader workers already parallelise.
        rule: ``"authors"`` or ``"midpoint"`` (see the module docstring).

    Returns:
        ``(frames, indices)``: uint8 RGB ``[F, H, W, 3]`` and the int64 frame indices used.

    Raises:
        VideoDecodeError: naming the path and the cause, for any file that cannot be decoded.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be (height, width) with positive entries, got {size}")
    path = Path(path)
    reader = _open_reader(path, size, num_threads)
    indices = sample_indices(len(reader), num_frames, mode, rng, rule)
    frames = _read_batch(reader, path, indices, size)
    return frames, indices


def video_info(path: str | Path) -> dict[str, Any]:
    """``dict(num_frames, fps, width, height)`` of a video, as decord sees it (decodes one frame)."""
    path = Path(path)
    reader = _open_reader(path, None, 1)
    frame = _read_batch(reader, path, np.zeros(1, dtype=np.int64), None)
    try:
        fps = float(reader.get_avg_fps())
    except _DECODER_ERRORS:  # some containers carry no usable rate
        fps = math.nan
    return {
        "num_frames": int(len(reader)),
        "fps": fps,
        "width": int(frame.shape[2]),
        "height": int(frame.shape[1]),
    }


def resized_shape(height: int, width: int, short_side: int, upscale: bool = False) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short_side``, keeping the aspect ratio.

    With ``upscale=False`` a video whose short side is already smaller keeps its size.
    """
    short = min(height, width)
    if short <= short_side and not upscale:
        return height, width
    scale = short_side / short
    if height <= width:
        return short_side, max(1, round(width * scale))
    return max(1, round(height * scale)), short_side
