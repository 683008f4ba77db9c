"""Transforms, training/evaluation datasets, skipping of broken videos and the frame cache."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import write_video
from xpool.data import frame_cache as frame_cache_mod
from xpool.data.corpora import Caption, Corpus
from xpool.data.datasets import EvalSet, TrainDataset, VideoClipDataset, collate_train
from xpool.data.frame_cache import FrameCache
from xpool.data.transforms import VideoTransform, random_resized_crop_params
from xpool.errors import VideoDecodeError

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's statistics, as a backbone would pass them
STD = (0.26862954, 0.26130258, 0.27577711)
TOKEN_LEN = 8


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    """Stands in for a CLIP tokenizer: [N, L] int64."""
    out = torch.zeros(len(texts), TOKEN_LEN, dtype=torch.long)
    for i, text in enumerate(texts):
        codes = [ord(ch) % 97 + 1 for ch in text[:TOKEN_LEN]]
        out[i, : len(codes)] = torch.tensor(codes)
    return out


def gradient_frames(num_frames: int = 4, height: int = 48, width: int = 80) -> np.ndarray:
    """Smooth, left-right asymmetric frames; frame f is brighter by 10 * f."""
    x = np.linspace(0, 100, width)[None, :, None]
    y = np.linspace(0, 40, height)[:, None, None]
    base = np.broadcast_to(x + y, (height, width, 3)) + np.array([0, 10, 20])
    return np.stack([base + 10 * f for f in range(num_frames)]).clip(0, 255).astype(np.uint8)


# --- transforms -----------------------------------------------------------------------------


def test_test_transform_matches_resize_and_center_crop() -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    frames = gradient_frames()
    out = VideoTransform(32, MEAN, STD, train=False)(frames)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    ref = TF.center_crop(TF.resize(x, 32, InterpolationMode.BICUBIC, antialias=True), [32, 32])
    ref = TF.normalize(ref, MEAN, STD)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=0)


def test_normalisation_of_a_flat_frame() -> None:
    frames = np.full((2, 40, 40, 3), 128, dtype=np.uint8)
    out = VideoTransform(40, MEAN, STD, train=False)(frames)
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[:, :, 5, 7], expected.expand(2, 3))


def test_train_transform_same_crop_and_flip_for_every_frame() -> None:
    frames = gradient_frames(num_frames=5)
    same = np.repeat(frames[:1], 5, axis=0)
    transform = VideoTransform(24, MEAN, STD, train=True)
    for seed in range(20):
        out = transform(same, np.random.default_rng(seed))
        assert out.shape == (5, 3, 24, 24)
        for f in range(1, 5):
            torch.testing.assert_close(out[f], out[0])
        # frames that differ only by brightness keep differing only by brightness
        out2 = transform(frames, np.random.default_rng(seed))
        diff = (out2[1:] - out2[:1]) * torch.tensor(STD).view(1, 3, 1, 1)
        assert float(diff.std(dim=(2, 3)).max()) < 0.01


def test_train_transform_randomness_is_seeded_and_flips_half_the_time() -> None:
    frames = gradient_frames(num_frames=2)
    transform = VideoTransform(24, MEAN, STD, train=True)
    a = transform(frames, np.random.default_rng(1))
    torch.testing.assert_close(a, transform(frames, np.random.default_rng(1)))
    assert not torch.equal(a, transform(frames, np.random.default_rng(2)))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(transform(frames, g1), transform(frames, g2))
    flips = 0
    for seed in range(200):
        out = transform(frames, np.random.default_rng(seed))
        # the source brightens left to right; a flipped crop darkens left to right
        flips += int(out[0, 0, :, 0].mean() > out[0, 0, :, -1].mean())
    assert 60 < flips < 140


def test_random_resized_crop_params_bounds() -> None:
    for seed in range(300):
        top, left, h, w = random_resized_crop_params(60, 100, (0.5, 1.0), gen=np.random.default_rng(seed))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 100
        assert h * w >= 0.5 * 60 * 100 * 0.9  # area kept (rounding aside)
    # a very wide image can fall back to the centred crop with a clamped aspect ratio
    top, left, h, w = random_resized_crop_params(10, 1000, (0.99, 1.0), gen=np.random.default_rng(0))
    assert h == 10 and w == round(10 * 4 / 3) and left == (1000 - w) // 2


# --- training dataset -----------------------------------------------------------------------


def make_corpus(root: Path, broken: bool = True) -> Corpus:
    """Four short videos with two captions each; video 'v2' is random bytes when ``broken``."""
    videos = {}
    for i in range(4):
        path = root / "videos" / f"v{i}.mp4"
        if broken and i == 2:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        else:
            write_video(path, num_frames=6 + 3 * i, height=40, width=56)
        videos[f"v{i}"] = path
    captions = [Caption(f"v{i}", f"caption {k} of v{i}", f"{i}-{k}") for i in range(4) for k in range(2)]
    return Corpus(name="toy", split="train", root=root, videos=videos, captions=captions)


def test_training_with_a_broken_video_skips_and_reports_it(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    transform = VideoTransform(32, MEAN, STD, train=True)
    dataset = TrainDataset(corpus, fake_tokenize, transform, num_frames=4, sampling="random", seed=3)
    assert len(dataset) == 8
    loader = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2, collate_fn=collate_train)
    seen, skipped = [], []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for batch in loader:
            b = len(batch["video_id"])
            assert batch["frames"].shape == (b, 4, 3, 32, 32)
            assert batch["tokens"].shape == (b, TOKEN_LEN) and batch["tokens"].dtype == torch.long
            assert torch.isfinite(batch["frames"]).all()
            assert "v2" not in batch["video_id"]
            seen += batch["video_id"]
            skipped += batch["skipped"]
            assert all("v2.mp4" in e for e in batch["errors"])
    assert sorted(seen) == sorted(["v0", "v0", "v1", "v1", "v3", "v3"] * 2)
    assert skipped == ["v2"] * 4  # two captions, two epochs: every skip is reported


def test_broken_video_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from xpool.data import datasets as datasets_mod

    corpus = make_corpus(tmp_path)
    datasets_mod._warned_videos.discard("v2")
    dataset = TrainDataset(corpus, fake_tokenize, VideoTransform(32, MEAN, STD, train=False), 4)
    with caplog.at_level(logging.WARNING, logger="xpool.data.datasets"):
        items = [dataset[i] for i in range(len(dataset))]
    bad = [it for it in items if "error" in it]
    assert [it["video_id"] for it in bad] == ["v2", "v2"]
    assert sum("v2" in r.getMessage() for r in caplog.records) == 1
    batch = collate_train(bad)
    assert batch["frames"].numel() == 0 and batch["video_id"] == [] and batch["skipped"] == ["v2", "v2"]


def test_item_randomness_depends_on_seed_epoch_index_only(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, broken=False)
    transform = VideoTransform(32, MEAN, STD, train=True)
    ds = TrainDataset(corpus, fake_tokenize, transform, 4, sampling="random", seed=11)
    ds.set_epoch(0)
    a0 = ds[5]["frames"]
    torch.testing.assert_close(ds[5]["frames"], a0)
    ds.set_epoch(1)
    a1 = ds[5]["frames"]
    assert not torch.equal(a0, a1)
    other = TrainDataset(corpus, fake_tokenize, transform, 4, sampling="random", seed=11)
    other.set_epoch(1)
    torch.testing.assert_close(other[5]["frames"], a1)  # a fresh (resumed) dataset agrees
    # set_epoch reaches persistent worker processes
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=collate_train)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        (batch,) = list(loader)  # consume whole epochs: a half-read persistent loader is slow to shut
        other.set_epoch(epoch)
        expected = torch.stack([other[i]["frames"] for i in range(8)])
        torch.testing.assert_close(batch["frames"], expected)
    del loader
    gc.collect()  # stop the persistent workers now rather than during some later test
    item = ds[0]
    assert item["text"] == "caption 0 of v0" and item["index"] == 0
    torch.testing.assert_close(item["tokens"], fake_tokenize(["caption 0 of v0"])[0])


# --- evaluation -----------------------------------------------------------------------------


def test_eval_set_and_clip_dataset(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, broken=False)
    es = EvalSet(corpus)
    assert es.video_ids == ["v0", "v1", "v2", "v3"]
    assert es.texts[3] == "caption 1 of v1"
    assert es.video_of_text.dtype == np.int64
    assert es.video_of_text.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [es.video_ids[i] for i in es.video_of_text] == [c.video_id for c in corpus.captions]
    clips = VideoClipDataset(es.paths, VideoTransform(32, MEAN, STD, train=False), num_frames=12)
    frames = next(iter(DataLoader(clips, batch_size=4)))
    assert frames.shape == (4, 12, 3, 32, 32)


def test_eval_decode_failure_is_an_error(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, broken=True)
    clips = VideoClipDataset(EvalSet(corpus).paths, VideoTransform(32, MEAN, STD, train=False), 12)
    with pytest.raises(VideoDecodeError, match="v2.mp4"):
        clips[2]
    batches = iter(DataLoader(clips, batch_size=2, num_workers=2))
    try:
        with pytest.raises(VideoDecodeError, match="v2.mp4"):  # the type survives the worker
            for _ in batches:
                pass
    finally:
        # After a worker error torch leaves the workers running; if they are only stopped when
        # the garbage collector finds the iterator, shutting them down takes 2 x 5 s.
        batches._shutdown_workers()


# --- frame cache ----------------------------------------------------------------------------


def test_frame_cache_decodes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = write_video(tmp_path / "big.mp4", num_frames=20, height=96, width=160)
    cache = FrameCache(tmp_path / "cache", num_frames=6, size=48)
    frames = cache.get(video)
    assert frames.shape == (6, 48, 80, 3) and frames.dtype == np.uint8
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1 and not [p for p in entries if ".tmp" in p.name]

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(frame_cache_mod, "sample_frames", no_decoding)
    np.testing.assert_array_equal(cache.get(video), frames)
    monkeypatch.undo()
    # a changed file gets a new entry; a damaged entry is decoded again
    os.utime(video, ns=(1, 1))
    assert cache.entry_path(video) != entries[0]
    cache.get(video)
    damaged = cache.entry_path(video)
    damaged.write_bytes(b"not numpy")
    np.testing.assert_array_equal(cache.get(video), frames)
    # small videos are not upscaled
    small = write_video(tmp_path / "small.mp4", num_frames=4, height=32, width=40)
    assert FrameCache(tmp_path / "cache", 6, 48).get(small).shape == (6, 32, 40, 3)
    with pytest.raises(VideoDecodeError):
        cache.get(tmp_path / "absent.mp4")


def test_frame_cache_shared_by_workers(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, broken=True)
    cache = FrameCache(tmp_path / "cache", num_frames=4, size=32)
    dataset = TrainDataset(corpus, fake_tokenize, VideoTransform(24, MEAN, STD, train=True), 4,
                           frame_cache=cache)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_train)
    for _ in range(2):
        good = sum(len(b["video_id"]) for b in loader)
        assert good == 6
    names = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(names) == 3 and all(n.endswith(".npy") and ".tmp" not in n for n in names)
    with pytest.raises(ValueError):
        TrainDataset(corpus, fake_tokenize, VideoTransform(24, MEAN, STD, train=True), 8, frame_cache=cache)
