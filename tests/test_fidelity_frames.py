"""Points 5 and 6 of the fidelity issue: the authors' frame indices and frame transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xpool.config import load_config
from xpool.data.transforms import VideoTransform, random_resized_crop_params
from xpool.data.video import sample_indices

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _authors_uniform(n: int, f: int) -> list[int]:
    """Their VideoCapture 'uniform' rule, written with exact integers."""
    k = min(f, n)
    b = [j * n // k for j in range(k + 1)]
    idx = [(b[i] + b[i + 1] - 1) // 2 for i in range(k)]
    return idx + [idx[-1]] * (f - k)


@pytest.mark.parametrize("f", [12, 8, 4])
def test_uniform_indices_every_length_up_to_3000(f):
    for n in range(1, 3001):
        assert sample_indices(n, f, "uniform").tolist() == _authors_uniform(n, f), n


def test_old_midpoint_rule_differs_for_most_lengths():
    differ = sum(sample_indices(n, 12, "uniform", rule="midpoint").tolist() != _authors_uniform(n, 12)
                 for n in range(12, 3001))
    assert differ > 0.5 * (3001 - 12)


def test_short_video_repeats_last_frame():
    assert sample_indices(5, 12, "uniform").tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert sample_indices(5, 12, "random", np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert sample_indices(1, 3, "uniform").tolist() == [0, 0, 0]


def test_random_draws_like_their_range_and_handles_empty_segments():
    rng = np.random.default_rng(3)
    n, f = 100, 12
    b = [j * n // f for j in range(f + 1)]
    seen = [set() for _ in range(f)]
    for _ in range(400):
        idx = sample_indices(n, f, "random", rng)
        for i, x in enumerate(idx.tolist()):
            assert b[i] <= x < b[i + 1] - 1  # range(b[i], b[i+1] - 1): never the last frame
            seen[i].add(x)
    assert all(s == set(range(b[i], b[i + 1] - 1)) for i, s in enumerate(seen))
    # n = 20, F = 12: segments of 1 frame, where their random.choice(range(x, x)) would raise.
    b = [j * 20 // 12 for j in range(13)]
    idx = sample_indices(20, 12, "random", np.random.default_rng(0)).tolist()
    for i, x in enumerate(idx):
        assert x == b[i] if b[i + 1] - 1 == b[i] else b[i] <= x < b[i + 1] - 1


def test_paper_profiles_use_the_authors_rule():
    for name in ("paper-msrvtt9k", "paper-msrvtt7k", "paper-msvd", "paper-lsmdc", "frozen-lsmdc"):
        cfg = load_config(name)
        assert cfg.data.sampling_rule == "authors" and cfg.data.train_sampling == "uniform"
    assert load_config("embedded").data.sampling_rule == "midpoint"


# ------------------------------------------------------------------------- transforms


def _frames(h=480, w=640, f=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(f, h, w, 3), dtype=np.uint8)
    x[:, :, w // 2 :, :] = 255  # a sharp edge: bicubic overshoots it
    x[:, :, : w // 2 - 5, :] = 0
    return x


def _normalize(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_test_transform_is_plain_bicubic_without_clamp():
    cfg = load_config("paper-msrvtt9k")
    t = VideoTransform(224, MEAN, STD, train=False, antialias=cfg.data.antialias)
    frames = _frames()
    got = t(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(x, size=(224, int(224 * 640 / 480)), mode="bicubic", align_corners=False)
    left = int(round((ref.shape[3] - 224) / 2.0))
    ref = _normalize(ref[:, :, :, left : left + 224])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    unnorm = got * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert unnorm.max() > 1.0 + 1e-3 or unnorm.min() < -1e-3  # no clamp, as torchvision 0.9
    # The antialiased option is a different resampling on 480-line frames.
    aa = VideoTransform(224, MEAN, STD, train=False, antialias=True)(frames)
    assert (aa - got).abs().max() > 1e-2


def test_train_transform_one_crop_one_flip_bilinear_no_antialias():
    frames = _frames(240, 320, f=4, seed=1)
    frames[1:] = frames[0]  # identical frames must stay identical: one crop and flip per clip
    t = VideoTransform(224, MEAN, STD, train=True, antialias=False)
    for seed in range(6):
        got = t(frames, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = random_resized_crop_params(240, 320, (0.5, 1.0), gen=g)
        flip = torch.rand((), generator=g).item() < 0.5
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x[:, :, top : top + h, left : left + w], size=(224, 224),
                          mode="bilinear", align_corners=False)
        if flip:
            x = x.flip(-1)
        torch.testing.assert_close(got, _normalize(x), rtol=0, atol=1e-5)
        assert all(torch.equal(got[0], got[i]) for i in range(1, 4))


def test_paper_profiles_turn_antialias_off():
    assert load_config("paper-msvd").data.antialias is False
    assert load_config("embedded").data.antialias is True
