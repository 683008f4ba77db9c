"""Corpus readers against the real annotation files (../shared/fixtures) and small written ones."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from xpool.data.corpora import (
    Caption,
    Corpus,
    load_corpus,
    load_lsmdc,
    load_msrvtt,
    load_msvd,
    lsmdc_movie,
)
from xpool.errors import CorpusError

MSRVTT_FILES = ["MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv"]


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """A corpus root holding the real split files plus a generated MSRVTT_data.json
    (MSR-VTT's layout, 20 captions for each of video0 ... video9999)."""
    root = tmp_path_factory.mktemp("msrvtt")
    for name in MSRVTT_FILES:
        shutil.copy(fixtures_dir / "annotations" / "msrvtt" / name, root / name)
    videos = [{"video_id": f"video{i}", "category": i % 20, "split": "train", "id": i} for i in range(10_000)]
    sentences = [
        {"caption": f"caption {j} of video {i}", "video_id": f"video{i}", "sen_id": i * 20 + j}
        for i in range(10_000)
        for j in range(20)
    ]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return root


def test_msrvtt_1k_a_test_split(fixtures_dir: Path) -> None:
    corpus = load_msrvtt(fixtures_dir / "annotations" / "msrvtt", "test", missing="ignore")
    assert corpus.num_captions == 1000
    assert corpus.num_videos == 1000
    assert len({c.video_id for c in corpus.captions}) == 1000
    assert corpus.name == "msrvtt" and corpus.split == "test"
    first = corpus.captions[0]
    assert first == Caption(video_id="video9770", text="a person is connecting something to system", caption_id="ret0")
    assert corpus.videos["video9770"] == fixtures_dir / "annotations" / "msrvtt" / "videos" / "video9770.mp4"


def test_msrvtt_9k_and_7k_training_splits(msrvtt_root: Path) -> None:
    train9k = load_msrvtt(msrvtt_root, "train", "9k", missing="ignore")
    assert train9k.num_videos == 9000
    assert train9k.num_captions == 180_000
    train7k = load_msrvtt(msrvtt_root, "train", train_list="7k", missing="ignore")
    assert train7k.num_videos == 7010
    assert train7k.num_captions == 7010 * 20
    assert set(train7k.videos) <= set(train9k.videos)
    test = load_msrvtt(msrvtt_root, "test", missing="ignore")
    assert not set(test.videos) & set(train9k.videos)  # 1k-A test videos are not trained on
    caption = train9k.captions[0]
    assert caption.video_id in train9k.videos and caption.caption_id == "0"


def test_msvd_splits(fixtures_dir: Path) -> None:
    root = fixtures_dir / "annotations" / "msvd"
    expected = {"test": (670, 27_763), "train": (1200, 48_774), "val": (100, 4290)}
    seen: set[str] = set()
    for split, (videos, captions) in expected.items():
        corpus = load_msvd(root, split, missing="ignore")
        assert (corpus.num_videos, corpus.num_captions) == (videos, captions), split
        assert not seen & set(corpus.videos)
        seen |= set(corpus.videos)
        vid = corpus.video_ids[0]
        assert corpus.videos[vid] == root / "videos" / f"{vid}.avi"
    test = load_msvd(root, "test", missing="ignore")
    per_video: dict[str, int] = {}
    for c in test.captions:
        per_video[c.video_id] = per_video.get(c.video_id, 0) + 1
    assert min(per_video.values()) == 21 and max(per_video.values()) == 81


def _small_msrvtt(root: Path, ids: list[str], on_disk: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = ["key,vid_key,video_id,sentence"]
    rows += [f"ret{i},msr{v[5:]},{v},\"a caption, with a comma, for {v}\"" for i, v in enumerate(ids)]
    (root / "MSRVTT_JSFUSION_test.csv").write_text("\n".join(rows) + "\n")
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for v in on_disk:
        (root / "videos" / f"{v}.mp4").write_bytes(b"x")
    return root


def test_missing_videos_policies(tmp_path: Path) -> None:
    ids = [f"video{i}" for i in range(8)]
    root = _small_msrvtt(tmp_path, ids, ids[:5])
    with pytest.raises(CorpusError) as info:
        load_msrvtt(root, "test")
    message = str(info.value)
    assert "3 of 8" in message and "video5" in message and "video7" in message and "drop" in message
    with pytest.warns(UserWarning, match="3 of 8"):
        dropped = load_msrvtt(root, "test", missing="drop")
    assert dropped.video_ids == ids[:5]
    assert [c.video_id for c in dropped.captions] == ids[:5]
    assert dropped.captions[0].text == "a caption, with a comma, for video0"
    ignored = load_msrvtt(root, "test", missing="ignore")
    assert ignored.num_videos == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_msrvtt(_small_msrvtt(tmp_path / "full", ids, ids), "test").num_videos == 8
    with pytest.raises(ValueError):
        load_msrvtt(root, "test", missing="skip")


def test_missing_files_name_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(CorpusError) as info:
        load_msrvtt(tmp_path, "test")
    assert str(tmp_path / "MSRVTT_JSFUSION_test.csv") in str(info.value)
    assert f"xpool download msrvtt --root {tmp_path}" in str(info.value)
    with pytest.raises(CorpusError, match="xpool synth"):
        load_corpus("synthetic", tmp_path, "test")
    with pytest.raises(CorpusError, match="xpool download msvd"):
        load_msvd(tmp_path, "train")
    with pytest.raises(CorpusError, match="request") as info:
        load_lsmdc(tmp_path, "test")
    assert "LSMDC16_challenge_1000_publictect.csv" in str(info.value)
    # annotations present, video folder absent
    _small_msrvtt(tmp_path, ["video1"], [])
    shutil.rmtree(tmp_path / "videos")
    with pytest.raises(CorpusError) as info:
        load_msrvtt(tmp_path, "test")
    assert str(tmp_path / "videos") in str(info.value) and "xpool download msrvtt" in str(info.value)
    with pytest.raises(CorpusError, match="xpool prepare compress"):
        load_msrvtt(tmp_path, "test", videos_dir="videos_3fps_224")
    with pytest.raises(CorpusError, match="unknown split"):
        load_msrvtt(tmp_path, "dev")


def test_alternative_video_folder(tmp_path: Path) -> None:
    root = _small_msrvtt(tmp_path, ["video1", "video2"], [])
    (root / "videos_3fps_224").mkdir()
    for v in ("video1", "video2"):
        (root / "videos_3fps_224" / f"{v}.mp4").write_bytes(b"x")
    corpus = load_msrvtt(root, "test", videos_dir="videos_3fps_224")
    assert corpus.videos["video1"] == root / "videos_3fps_224" / "video1.mp4"


LSMDC_ROWS = [
    "0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.926\t00.00.54.129\tSomeone opens a door.",
    "0001_American_Beauty_00.01.10.000-00.01.12.500\t00.01.10.000\t00.01.12.500\t00.01.10.000\t00.01.12.500\tShe looks at SOMEONE, smiling.",
    "1012_Unbreakable_00.05.16.065-00.05.21.941\t00.05.16.065\t00.05.21.941\t00.05.16.065\t00.05.21.941\tA train passes.",
]


def test_lsmdc_reader(tmp_path: Path) -> None:
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(LSMDC_ROWS) + "\n")
    # Every row (captions="all"); the authors' reader, which drops the Unbreakable clip, is
    # tested in test_fidelity_corpora.py.
    corpus = load_lsmdc(tmp_path, "test", missing="ignore", captions="all")
    assert corpus.num_videos == 3 and corpus.num_captions == 3
    assert load_lsmdc(tmp_path, "test", missing="ignore").num_videos == 2
    assert corpus.captions[1].text == "She looks at SOMEONE, smiling."
    clip = "1012_Unbreakable_00.05.16.065-00.05.21.941"
    assert corpus.videos[clip] == tmp_path / "videos" / "1012_Unbreakable" / f"{clip}.avi"
    # clips on disk in their movie folders
    for path in list(corpus.videos.values())[:2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with pytest.warns(UserWarning, match="1 of 3"):
        assert load_lsmdc(tmp_path, "test", missing="drop", captions="all").num_videos == 2
    (tmp_path / "LSMDC16_annos_training.csv").write_text(LSMDC_ROWS[0] + "\nbroken\trow\n")
    with pytest.raises(CorpusError, match=r"LSMDC16_annos_training.csv:2: expected 6"):
        load_lsmdc(tmp_path, "train", missing="ignore")


def test_lsmdc_movie_names() -> None:
    assert lsmdc_movie("1012_Unbreakable_00.05.16.065-00.05.21.941") == "1012_Unbreakable"
    assert lsmdc_movie("3001_21_JUMP_STREET_00.00.38.510-00.00.39.805") == "3001_21_JUMP_STREET"


def test_corpus_helpers_and_dispatch(tmp_path: Path, fixtures_dir: Path) -> None:
    corpus = Corpus(
        name="x", split="test", root=tmp_path,
        videos={"b": tmp_path / "b.mp4", "a": tmp_path / "a.mp4", "c": tmp_path / "c.mp4"},
        captions=[Caption("b", "t1", "1"), Caption("a", "t2", "2"), Caption("b", "t3", "3")],
    )
    assert corpus.video_ids == ["a", "b", "c"]
    assert (corpus.num_videos, corpus.num_captions) == (3, 3)
    sub = corpus.subset(["b", "c"])
    assert sub.video_ids == ["b", "c"] and [c.text for c in sub.captions] == ["t1", "t3"]
    with pytest.raises(CorpusError):
        corpus.subset(["zzz"])
    assert "num_captions=3" in repr(corpus)
    root = fixtures_dir / "annotations" / "msrvtt"
    assert load_corpus("msrvtt", root, "test", missing="ignore").num_videos == 1000
    synth = load_corpus("synthetic", root, "test", missing="ignore")
    assert synth.name == "synthetic" and synth.num_captions == 1000
    assert load_corpus("msvd", fixtures_dir / "annotations" / "msvd", "val", missing="ignore").num_videos == 100
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("webvid", root, "test")
