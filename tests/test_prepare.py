"""`xpool prepare compress` on copies of the fixture videos (never written inside ../shared)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xpool.data.prepare import compress_videos, output_size
from xpool.data.video import sample_frames, video_info
from xpool.errors import XPoolError


@pytest.fixture
def corpus_root(tmp_path: Path, fixture_videos: dict[str, Path]) -> Path:
    """A corpus root with two real videos (mp4 and avi, one in a sub-folder like LSMDC's movies),
    a truncated copy and a random-bytes file."""
    videos = tmp_path / "corpus" / "videos"
    (videos / "movie").mkdir(parents=True)
    shutil.copyfile(fixture_videos["carphone_pristine.mp4"], videos / "carphone_pristine.mp4")
    shutil.copyfile(fixture_videos["tree.avi"], videos / "movie" / "tree.avi")
    data = fixture_videos["bikes.mp4"].read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 2])
    (videos / "noise.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (videos / ".complete-YouTubeClips.tar").write_text("marker files are not videos\n")
    return tmp_path / "corpus"


def test_compress_reencodes_skips_and_reports(corpus_root: Path) -> None:
    # preset only changes encoding speed and file size; ultrafast keeps the test quick
    report = compress_videos(corpus_root, workers=2, progress=False, preset="ultrafast")
    out = corpus_root / "videos_3fps_224"
    assert report.out_dir == str(out)
    assert (report.total, report.encoded, report.skipped) == (4, 2, 0)
    assert sorted(path for path, _ in report.failed) == ["cut.mp4", "noise.avi"]
    assert "truncated" in dict(report.failed)["cut.mp4"]
    assert not report.ok and "FAILED cut.mp4" in str(report)
    saved = json.loads((out / "compress_report.json").read_text())
    assert saved["encoded"] == 2 and len(saved["failed"]) == 2

    # same names (and relative folders), 3 fps, short side 224, H.264
    car = video_info(out / "carphone_pristine.mp4")
    assert (car["height"], car["width"], car["fps"]) == (224, 272, 3.0)
    assert car["num_frames"] == 12  # 120 frames at 29.97 fps = 4.0 s
    tree = video_info(out / "movie" / "tree.avi")
    assert tree["height"] == 224 and tree["fps"] == 3.0
    import av

    with av.open(str(out / "movie" / "tree.avi")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert not [p for p in out.rglob(".*tmp*")]  # no temporary files left behind

    # the picture survives, and output frame k shows the source within half an output period of
    # k / 3 s (ffmpeg's fps filter keeps the last input frame that rounds to each output tick)
    with av.open(str(corpus_root / "videos" / "carphone_pristine.mp4")) as container:
        source = np.stack(
            [f.to_ndarray(format="rgb24", width=272, height=224) for f in container.decode(video=0)]
        ).astype(np.float32)
    frames, idx = sample_frames(out / "carphone_pristine.mp4", 12)
    for frame, k in zip(frames, idx, strict=True):
        diff = np.abs(source - frame.astype(np.float32)).mean(axis=(1, 2, 3))
        best = int(diff.argmin())
        assert diff[best] < 6
        assert abs(best * 1001 / 30000 - k / 3) <= 1 / 6 + 1e-6

    # a second run skips what is done and reports the same failures again
    again = compress_videos(corpus_root, workers=1, progress=False)
    assert (again.encoded, again.skipped, len(again.failed)) == (0, 2, 2)


def test_compress_options_and_errors(corpus_root: Path, tmp_path: Path) -> None:
    (corpus_root / "videos" / "cut.mp4").unlink()
    (corpus_root / "videos" / "noise.avi").unlink()
    (corpus_root / "videos" / "movie" / "tree.avi").unlink()
    report = compress_videos(corpus_root, out_root=tmp_path / "small", fps=2, short_side=64, workers=1, progress=False)
    assert report.ok and report.encoded == 1
    info = video_info(tmp_path / "small" / "carphone_pristine.mp4")
    assert (info["height"], info["width"], info["fps"]) == (64, 78, 2.0)
    with pytest.raises(XPoolError, match="no video folder"):
        compress_videos(tmp_path / "nowhere", progress=False)
    with pytest.raises(XPoolError, match="source folder"):
        compress_videos(corpus_root, out_root=corpus_root / "videos", progress=False)


def test_output_size() -> None:
    assert output_size(720, 1280, 224) == (224, 398)
    assert output_size(1280, 720, 224) == (398, 224)
    assert output_size(144, 176, 224) == (224, 272)  # small videos are scaled up, as the authors did
    assert output_size(240, 320, 224) == (224, 298)
