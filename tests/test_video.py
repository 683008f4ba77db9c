"""Video decoding and frame sampling: real fixture videos, synthetic clips and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_VIDEOS, nearest_frame, write_video
from xpool.data import video as video_mod
from xpool.data.video import (
    check_container,
    resized_shape,
    sample_frames,
    sample_indices,
    video_info,
)
from xpool.errors import VideoDecodeError, XPoolError


def expected_uniform(n: int, f: int) -> list[int]:
    """The authors' rule, written independently of the implementation: boundaries
    b_j = floor(j n / k), k = min(F, n); frame (b_i + b_{i+1} - 1) // 2; the last one repeated."""
    k = min(f, n)
    idx = [((i * n) // k + ((i + 1) * n) // k - 1) // 2 for i in range(k)]
    return idx + [idx[-1]] * (f - k)


def expected_midpoint(n: int, f: int) -> list[int]:
    """The earlier rule (``rule="midpoint"``): floor((i + 0.5) * n / F)."""
    return [int(np.floor((i + 0.5) * n / f)) for i in range(f)]


# --- index sampling -------------------------------------------------------------------------


def test_uniform_indices_match_specification() -> None:
    assert sample_indices(132, 12).tolist() == [5, 16, 27, 38, 49, 60, 71, 82, 93, 104, 115, 126]
    assert sample_indices(12, 12).tolist() == list(range(12))
    assert sample_indices(24, 12).tolist() == [2 * i for i in range(12)]
    assert sample_indices(24, 12, rule="midpoint").tolist() == [2 * i + 1 for i in range(12)]
    for n in range(1, 400):
        for f in (1, 3, 12):
            idx = sample_indices(n, f)
            assert idx.dtype == np.int64
            assert idx.tolist() == expected_uniform(n, f), (n, f)
            assert sample_indices(n, f, rule="midpoint").tolist() == expected_midpoint(n, f)


def test_short_videos_repeat_frames_in_order() -> None:
    idx = sample_indices(5, 12)
    assert idx.tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert sample_indices(5, 12, rule="midpoint").tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert sample_indices(1, 12).tolist() == [0] * 12
    for n in range(1, 12):
        for mode in ("uniform", "random"):
            for rule in ("authors", "midpoint"):
                idx = sample_indices(n, 12, mode, np.random.default_rng(n), rule)
                assert np.all(np.diff(idx) >= 0), (n, mode, idx)
                assert idx.min() >= 0 and idx.max() < n
        # uniform uses every frame of a short video
        assert set(sample_indices(n, 12).tolist()) == set(range(n))


def test_random_indices_one_per_segment_and_seeded() -> None:
    n, f = 100, 12
    a = sample_indices(n, f, "random", np.random.default_rng(0))
    b = sample_indices(n, f, "random", np.random.default_rng(0))
    c = sample_indices(n, f, "random", np.random.default_rng(1))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    lo = [(i * n) // f for i in range(f)]
    hi = [((i + 1) * n) // f for i in range(f)]
    for rep in range(50):
        idx = sample_indices(n, f, "random", np.random.default_rng(rep))
        assert all(lo[i] <= idx[i] < hi[i] for i in range(f))


def test_bad_sampling_arguments() -> None:
    with pytest.raises(ValueError):
        sample_indices(10, 12, "middle")
    with pytest.raises(ValueError):
        sample_indices(0, 12)
    with pytest.raises(ValueError):
        sample_indices(10, 0)


def test_resized_shape() -> None:
    assert resized_shape(720, 1280, 224) == (224, 398)
    assert resized_shape(1280, 720, 224) == (398, 224)
    assert resized_shape(144, 176, 224) == (144, 176)  # no upscaling by default
    assert resized_shape(144, 176, 224, upscale=True) == (224, 274)


# --- real fixture videos --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_VIDEOS))
def test_fixture_videos_decode_12_uniform_frames(fixture_videos: dict[str, Path], name: str) -> None:
    width, height, n = FIXTURE_VIDEOS[name]
    info = video_info(fixture_videos[name])
    assert (info["width"], info["height"], info["num_frames"]) == (width, height, n)
    assert info["fps"] > 0
    frames, idx = sample_frames(fixture_videos[name], 12)
    assert frames.shape == (12, height, width, 3)
    assert frames.dtype == np.uint8
    assert idx.dtype == np.int64
    assert idx.tolist() == expected_uniform(n, 12)
    assert frames.std() > 1.0  # real picture content, not a blank buffer


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "tree.avi"])
def test_decoded_frames_equal_pyav_reference(fixture_videos: dict[str, Path], name: str) -> None:
    """decord's seek + decode returns exactly the frames a sequential PyAV decode gives."""
    import av

    with av.open(str(fixture_videos[name])) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    frames, idx = sample_frames(fixture_videos[name], 12)
    np.testing.assert_array_equal(frames, reference[idx])
    rframes, ridx = sample_frames(fixture_videos[name], 12, "random", np.random.default_rng(3))
    np.testing.assert_array_equal(rframes, reference[ridx])


def test_resize_at_decode(fixture_videos: dict[str, Path]) -> None:
    frames, _ = sample_frames(fixture_videos["bikes.mp4"], 4, size=(112, 264))
    assert frames.shape == (4, 112, 264, 3)
    with pytest.raises(ValueError):
        sample_frames(fixture_videos["bikes.mp4"], 4, size=(0, 10))


# --- synthetic clips ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_short_clip_repeats_the_right_frames(tmp_path: Path, suffix: str) -> None:
    path = write_video(tmp_path / f"short{suffix}", num_frames=5)
    frames, idx = sample_frames(path, 12)
    assert idx.tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert nearest_frame(frames, 5).tolist() == idx.tolist()  # the pixels are those frames


def test_random_sampling_decodes_the_sampled_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", num_frames=30)
    frames, idx = sample_frames(path, 6, "random", np.random.default_rng(7))
    assert nearest_frame(frames, 30).tolist() == idx.tolist()
    frames2, idx2 = sample_frames(path, 6, "random", np.random.default_rng(7))
    assert idx2.tolist() == idx.tolist()
    np.testing.assert_array_equal(frames, frames2)


# --- broken input ---------------------------------------------------------------------------


def _assert_decode_error(path: Path, cause: str | None = None) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(path, 12)
    assert str(path) in str(info.value)
    if cause is not None:
        assert cause in str(info.value)
    assert isinstance(info.value, XPoolError)
    return info.value


def test_missing_empty_and_non_video_files(tmp_path: Path) -> None:
    _assert_decode_error(tmp_path / "absent.mp4", "does not exist")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_decode_error(empty, "empty")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _assert_decode_error(noise, "cannot open")
    noise_avi = tmp_path / "noise.avi"
    noise_avi.write_bytes(noise.read_bytes())
    _assert_decode_error(noise_avi)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    _assert_decode_error(text)
    _assert_decode_error(tmp_path, "not a regular file")  # a directory
    with pytest.raises(VideoDecodeError):
        video_info(noise)


def test_video_without_frames(tmp_path: Path) -> None:
    """An mp4 with an audio track only: zero video frames."""
    import av

    path = tmp_path / "audio_only.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _assert_decode_error(path, "zero frames")


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("name", sorted(FIXTURE_VIDEOS))
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_truncated_fixture_videos(
    fixture_videos: dict[str, Path], tmp_path: Path, name: str, fraction: float
) -> None:
    # decord alone opens the truncated AVI and returns a shorter video with a corrupt last frame.
    path = _truncate(fixture_videos[name], tmp_path / f"cut_{name}", fraction)
    _assert_decode_error(path, "truncated")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_fast_start_mp4(fixture_videos: dict[str, Path], tmp_path: Path, fraction: float) -> None:
    """moov first (index intact), media data cut: the case where seeking runs into missing data."""
    import av

    fast = tmp_path / "fast.mp4"
    with av.open(str(fixture_videos["bikes.mp4"])) as src, av.open(
        str(fast), "w", options={"movflags": "faststart"}
    ) as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            dst.mux(packet)
    assert sample_frames(fast, 12)[0].shape == (12, 272, 640, 3)
    _assert_decode_error(_truncate(fast, tmp_path / "cut.mp4", fraction), "truncated")


def test_decoder_errors_are_wrapped_without_container_check(
    fixture_videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: if the structure check misses something, decord's own errors still
    surface as VideoDecodeError, never as decord's exception types."""
    monkeypatch.setattr(video_mod, "check_container", lambda path: None)
    cut = _truncate(fixture_videos["carphone_pristine.mp4"], tmp_path / "cut.mp4", 0.5)
    _assert_decode_error(cut)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    _assert_decode_error(noise)


def test_check_container_accepts_good_files(fixture_videos: dict[str, Path], tmp_path: Path) -> None:
    for path in fixture_videos.values():
        check_container(path)
    check_container(write_video(tmp_path / "ok.avi", num_frames=3))
    check_container(write_video(tmp_path / "ok.mkv", num_frames=3))


def test_numpy_output_whatever_decord_bridge(fixture_videos: dict[str, Path]) -> None:
    """Another module may switch decord's global bridge to torch; we still return numpy arrays."""
    import decord

    decord.bridge.set_bridge("torch")
    try:
        frames, _ = sample_frames(fixture_videos["tree.avi"], 3)
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.shape == (3, 240, 320, 3)
