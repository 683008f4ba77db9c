"""Points 9 and 10 of the fidelity issue: the authors' LSMDC reader and data.videos_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpool.config import load_config
from xpool.data.corpora import LSMDC_AUTHORS_SKIPPED, load_lsmdc, lsmdc_movie
from xpool.errors import ConfigError, CorpusError

ROWS = [
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "SOMEONE walks."),
    ("0001_American_Beauty_00.00.56.224-00.00.58.606", "He looks up."),
    (LSMDC_AUTHORS_SKIPPED, "A skipped clip."),
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "A second caption, same clip."),
    ("1012_Unbreakable_00.05.30.000-00.05.31.000", "They drive."),
]


def _write(root: Path) -> Path:
    lines = [f"{cid}\t00.00.00.000\t00.00.01.000\t00.00.00.000\t00.00.01.000\t{text}"
             for cid, text in ROWS]
    (root / "LSMDC16_annos_training.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_authors_reader_one_caption_per_clip_and_skip(tmp_path):
    c = load_lsmdc(_write(tmp_path), "train", missing="ignore")
    by = {cap.video_id: cap.text for cap in c.captions}
    assert len(c.captions) == 3 and LSMDC_AUTHORS_SKIPPED not in c.videos
    # a later row of the same clip replaces the earlier one, as their dict does
    assert by["0001_American_Beauty_00.00.51.926-00.00.54.129"] == "A second caption, same clip."
    assert [cap.video_id for cap in c.captions] == [
        "0001_American_Beauty_00.00.51.926-00.00.54.129",
        "0001_American_Beauty_00.00.56.224-00.00.58.606",
        "1012_Unbreakable_00.05.30.000-00.05.31.000"]


def test_all_rows_option(tmp_path):
    c = load_lsmdc(_write(tmp_path), "train", missing="ignore", captions="all")
    assert len(c.captions) == 5 and LSMDC_AUTHORS_SKIPPED in c.videos


def test_video_path_rule(tmp_path):
    c = load_lsmdc(_write(tmp_path), "train", missing="ignore", videos_dir="videos_3fps_224")
    cid = "1012_Unbreakable_00.05.30.000-00.05.31.000"
    # theirs: os.path.join(videos_dir, clip_id.split('.')[0][:-3], clip_id + '.avi')
    assert c.videos[cid] == tmp_path / "videos_3fps_224" / cid.split(".")[0][:-3] / f"{cid}.avi"
    assert lsmdc_movie(cid) == "1012_Unbreakable"
    with pytest.raises(CorpusError, match="movie folder"):
        lsmdc_movie("ab.c")


def test_videos_dir_is_a_config_key_used_by_the_readers(tmp_path):
    from xpool.data.splits import load_split

    root = _write(tmp_path)
    cfg = load_config("paper-lsmdc", {"data.root": str(root), "data.missing": "ignore",
                                      "data.videos_dir": "videos_3fps_224"})
    corpus = load_split(cfg, "train")
    assert all(p.is_relative_to(root / "videos_3fps_224") for p in corpus.videos.values())
    assert len(corpus.captions) == 3
    assert load_config("paper-msrvtt9k").data.videos_dir == "videos"
    for bad in ("", "/abs/videos", "../videos"):
        with pytest.raises(ConfigError, match="videos_dir"):
            load_config("paper-lsmdc", {"data.videos_dir": bad})


def test_missing_videos_under_videos_dir_are_reported(tmp_path):
    root = _write(tmp_path)
    (root / "videos_3fps_224").mkdir()
    with pytest.raises(CorpusError, match="videos_3fps_224"):
        load_lsmdc(root, "train", videos_dir="videos_3fps_224")
