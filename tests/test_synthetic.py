"""The synthetic benchmark generator: determinism, uniqueness, MSR-VTT layout, idempotency."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from xpool.config import SynthConfig, load_config
from xpool.data.corpora import load_corpus, load_msrvtt
from xpool.data.synthetic import (
    ALL_SCENES,
    DATA_FILE,
    META_FILE,
    TEST_FILE,
    TRAIN_7K_FILE,
    TRAIN_9K_FILE,
    SceneImageStream,
    build_specs,
    ensure_corpus,
    generate_corpus,
    held_out_scenes,
    parse_caption,
    render_video,
)
from xpool.data.video import sample_frames
from xpool.errors import ConfigError

ANNOTATIONS = (DATA_FILE, TRAIN_9K_FILE, TRAIN_7K_FILE, TEST_FILE, META_FILE)


def smoke_synth(**changes) -> SynthConfig:
    return dataclasses.replace(load_config("smoke").synth, **changes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_corpus(smoke_synth(), tmp_path_factory.mktemp("synth") / "a", progress=False)


def _decoded(root: Path, cfg: SynthConfig) -> dict[str, np.ndarray]:
    n = cfg.scenes * cfg.frames_per_scene
    return {
        p.stem: sample_frames(p, n)[0] for p in sorted((root / "videos").glob("video*.mp4"))
    }


def _contains_in_order(needle: list, haystack: list) -> bool:
    # Written out independently of the generator's own check.
    pos = 0
    for item in haystack:
        if pos < len(needle) and item == needle[pos]:
            pos += 1
    return pos == len(needle)


def test_same_seed_is_byte_identical(corpus: Path, tmp_path: Path) -> None:
    cfg = smoke_synth()
    again = generate_corpus(cfg, tmp_path / "b", progress=False)
    for name in ANNOTATIONS:
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
    a, b = _decoded(corpus, cfg), _decoded(again, cfg)
    assert a.keys() == b.keys() and len(a) == cfg.num_train + cfg.num_test
    for vid in a:
        np.testing.assert_array_equal(a[vid], b[vid])


def test_different_seed_differs(corpus: Path, tmp_path: Path) -> None:
    cfg = smoke_synth(seed=1)
    other = generate_corpus(cfg, tmp_path / "c", progress=False)
    assert (corpus / DATA_FILE).read_bytes() != (other / DATA_FILE).read_bytes()
    assert (corpus / TEST_FILE).read_bytes() != (other / TEST_FILE).read_bytes()
    a, b = _decoded(corpus, cfg), _decoded(other, cfg)
    assert any(not np.array_equal(a[v], b[v]) for v in a)


def test_decoded_frames_match_the_render(corpus: Path) -> None:
    cfg = smoke_synth()
    specs = build_specs(cfg)
    dec = _decoded(corpus, cfg)
    for spec in specs[:3] + specs[-3:]:
        rendered = render_video(spec, cfg).astype(np.float32)
        frames = dec[spec.video_id]
        assert frames.shape == (cfg.scenes * cfg.frames_per_scene, cfg.resolution, cfg.resolution, 3)
        # Near-lossless H.264: colours survive (chroma subsampling blurs only the edges).
        assert np.abs(frames.astype(np.float32) - rendered).mean() < 8.0
    # Frames within a scene are not copies (motion and noise).
    first = dec[specs[0].video_id]
    assert not np.array_equal(first[0], first[1])


def _check_unique(meta: dict) -> int:
    """Independent check: no test caption names scenes (in order) of another test video."""
    tests = {vid: v for vid, v in meta["videos"].items() if v["split"] == "test"}
    k = meta["settings"]["scenes"]
    checked = 0
    for vid, v in tests.items():
        assert len(v["captions"]) == 1
        cap = v["captions"][0]
        named = [dataclasses.asdict(s) for s in parse_caption(cap["text"])]
        assert named == [v["scenes"][i] for i in cap["scene_indices"]]
        assert _contains_in_order(named, v["scenes"])
        if k > 1:
            assert 1 <= len(named) < k, "a caption names a proper subset of the scenes"
        for other, w in tests.items():
            if other != vid:
                assert not _contains_in_order(named, w["scenes"]), (vid, other, cap["text"])
        checked += 1
    return checked


def test_test_captions_are_unique(corpus: Path) -> None:
    meta = json.loads((corpus / META_FILE).read_text())
    assert _check_unique(meta) == smoke_synth().num_test


@pytest.mark.parametrize("scenes", [1, 4])
def test_uniqueness_holds_under_pressure(scenes: int) -> None:
    # Many short captions over few distinct scenes: collisions are common, the generator must
    # resample. Checked from the same synth_meta content the generator writes, without encoding.
    from xpool.data.synthetic import corpus_meta

    cfg = smoke_synth(num_train=4, num_test=300, scenes=scenes)
    assert _check_unique(corpus_meta(build_specs(cfg), cfg)) == 300


def test_impossible_uniqueness_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unique"):
        build_specs(smoke_synth(num_test=len(ALL_SCENES) + 1, scenes=1))


def test_msrvtt_reader_reads_it(corpus: Path) -> None:
    cfg = smoke_synth()
    train = load_msrvtt(corpus, "train")
    assert train.num_videos == cfg.num_train
    assert train.num_captions == cfg.num_train * cfg.captions_per_video
    test = load_corpus("synthetic", corpus, "test")
    assert test.num_videos == cfg.num_test and test.num_captions == cfg.num_test
    assert set(train.videos).isdisjoint(test.videos)
    train7k = load_msrvtt(corpus, "train", train_list="7k")
    assert 0 < train7k.num_videos < train.num_videos
    assert set(train7k.videos) <= set(train.videos)
    data = json.loads((corpus / DATA_FILE).read_text())
    assert {v["split"] for v in data["videos"]} == {"train", "test"}
    assert all({"caption", "video_id", "sen_id"} <= set(s) for s in data["sentences"])


def test_idempotent_and_regenerates_partial(corpus: Path, tmp_path: Path) -> None:
    cfg = smoke_synth(num_train=6, num_test=4)
    root = generate_corpus(cfg, tmp_path / "d", progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert generate_corpus(cfg, root, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    # A missing video means a partial corpus: regenerated, identical to before.
    victim = root / "videos" / "video1.mp4"
    data = victim.read_bytes()
    victim.unlink()
    generate_corpus(cfg, root, progress=False)
    assert victim.read_bytes() == data
    # Other settings: regenerated in place, stale videos removed.
    smaller = dataclasses.replace(cfg, num_test=2)
    generate_corpus(smaller, root, progress=False)
    assert len(list((root / "videos").glob("*.mp4"))) == 8
    assert json.loads((root / META_FILE).read_text())["settings"]["num_test"] == 2


def test_ensure_corpus_uses_data_root(tmp_path: Path) -> None:
    cfg = load_config("smoke", {"data.root": str(tmp_path / "e"), "synth.num_train": 3,
                                "synth.num_test": 2})
    assert ensure_corpus(cfg, progress=False) == tmp_path / "e"
    assert (tmp_path / "e" / META_FILE).is_file()
    default = load_config("smoke")
    from xpool.paths import project_root

    assert default.data_root.relative_to(project_root()).parts[:2] == ("data", "synthetic")


def test_scene_stream_is_deterministic() -> None:
    a_img, a_cap = SceneImageStream(32, seed=3).batch(8)
    b_img, b_cap = SceneImageStream(32, seed=3).batch(8)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_cap == b_cap and a_img.shape == (8, 32, 32, 3) and a_img.dtype == np.uint8
    c_img, _ = SceneImageStream(32, seed=4).batch(8)
    assert not np.array_equal(a_img, c_img)
    img, cap = next(iter(SceneImageStream(32, seed=3)))
    np.testing.assert_array_equal(img, a_img[0])
    assert parse_caption(cap)[0].caption == cap


def test_held_out_set_is_fixed_distinct_and_separate() -> None:
    imgs, caps, scenes = held_out_scenes(40, 32, seed=0)
    imgs2, caps2, _ = held_out_scenes(40, 32, seed=0)
    np.testing.assert_array_equal(imgs, imgs2)
    assert caps == caps2 and len(set(caps)) == 40
    assert [s.caption for s in scenes] == caps
    stream_imgs, _ = SceneImageStream(32, seed=0).batch(40)
    assert not any(np.array_equal(a, b) for a, b in zip(imgs, stream_imgs, strict=True))


def test_grouped_stream_gives_one_attribute_variants() -> None:
    _, caps = SceneImageStream(32, seed=5, group_size=4).batch(16)
    scenes = [parse_caption(c)[0] for c in caps]
    for g in range(0, 16, 4):
        base = dataclasses.asdict(scenes[g])
        for variant in scenes[g + 1 : g + 4]:
            diff = [k for k, v in dataclasses.asdict(variant).items() if base[k] != v]
            assert len(diff) == 1, (base, variant)
