"""Shared test fixtures and helpers (keep them generic: several test modules use them).

* ``FIXTURES_DIR`` / ``fixtures_dir``: the real third-party files in ``../shared/fixtures``; the
  fixture skips, with the reason, where that folder is absent. Never copy them into the project.
* ``write_video`` / ``make_video``: write a small real video with PyAV. By default frame ``i`` is a
  flat grey of level ``frame_levels(n)[i]``, so a test can tell which frame a decoder returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

FIXTURES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"

# name -> (width, height, frames) as documented in ../shared/fixtures/README.md
FIXTURE_VIDEOS = {
    "bigbuckbunny.mp4": (1280, 720, 132),
    "bikes.mp4": (640, 272, 250),
    "carphone_pristine.mp4": (176, 144, 120),
    "tree.avi": (320, 240, 68),
}


def fixtures_available(*relative: str) -> bool:
    """True when ``../shared/fixtures`` (and the given paths inside it) exist."""
    return FIXTURES_DIR.is_dir() and all((FIXTURES_DIR / r).exists() for r in relative)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures``; skips the test where it is absent."""
    if not FIXTURES_DIR.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES_DIR} (they live outside the project)")
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def fixture_videos(fixtures_dir: Path) -> dict[str, Path]:
    """name -> path of the real fixture videos; skips where any is missing."""
    paths = {name: fixtures_dir / "videos" / name for name in FIXTURE_VIDEOS}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        pytest.skip(f"fixture videos missing: {absent}")
    return paths


def frame_levels(num_frames: int) -> np.ndarray:
    """Grey level of each frame in ``write_video``'s default pattern (spread over 8..248)."""
    return (8 + (np.arange(num_frames) * 240) // max(num_frames - 1, 1)).astype(np.uint8)


def nearest_frame(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """For decoded frames of the default pattern, the index of the frame each one shows."""
    means = frames.reshape(len(frames), -1).mean(axis=1)
    return np.abs(means[:, None] - frame_levels(num_frames)[None, :].astype(float)).argmin(axis=1)


def write_video(
    path: str | Path,
    num_frames: int = 10,
    height: int = 48,
    width: int = 64,
    fps: int = 10,
    frames: np.ndarray | None = None,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a real video file with PyAV and return its path.

    ``frames`` (uint8 [N, H, W, 3]) overrides the default grey-ramp pattern. The codec defaults to
    H.264 (``libx264``) for .mp4/.mkv and MPEG-4 part 2 for .avi (like MSVD's clips). ``options``
    are container options, e.g. ``{"movflags": "faststart"}``.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames is None:
        frames = np.broadcast_to(
            frame_levels(num_frames)[:, None, None, None], (num_frames, height, width, 3)
        ).copy()
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if codec is None:
        codec = "mpeg4" if path.suffix.lower() == ".avi" else "libx264"
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """The ``write_video`` helper as a fixture."""
    return write_video
