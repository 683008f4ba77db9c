"""Point 7 of the fidelity issue: the published (group) video-to-text convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xpool.config import EvalConfig, load_config
from xpool.errors import XPoolError
from xpool.metrics import v2t_metrics, v2t_ranks

# 3 videos; captions 0-2 of video 0, 3-4 of video 1, 5 of video 2. sims[t, v].
SIMS = np.array([
    [0.9, 0.1, 0.0],
    [0.8, 0.7, 0.2],
    [0.7, 0.6, 0.1],
    [0.5, 0.4, 0.3],
    [0.1, 0.3, 0.2],
    [0.6, 0.2, 0.5],
])
VOT = np.array([0, 0, 0, 1, 1, 2])


def test_group_convention_hand_computed():
    # Video 1 (column 1): best own caption 0.4 (caption 3). Groups: video 0's best = 0.7,
    # video 1's 0.4, video 2's 0.2 -> rank 2. Per caption: 0.7, 0.6 score above 0.4 -> rank 3.
    # Video 2 (column 2): own 0.5; group bests: 0.2 (v0), 0.3 (v1) -> rank 1; per caption 1.
    # Video 0: own best 0.9 -> rank 1 both ways.
    assert v2t_ranks(SIMS, VOT, "groups").tolist() == [1, 2, 1]
    assert v2t_ranks(SIMS, VOT, "captions").tolist() == [1, 3, 1]


def test_group_convention_against_the_authors_formulation():
    """An independent re-implementation of their v2t_metrics: pad per video to [V, maxT, V] with
    -inf, max over the caption slot, transpose, rank the diagonal (no ties here)."""
    rng = np.random.default_rng(0)
    vot = np.repeat(np.arange(7), [1, 4, 2, 3, 5, 1, 2])
    sims = rng.normal(size=(len(vot), 7))
    maxt = np.bincount(vot).max()
    padded = torch.full((7, maxt, 7), float("-inf"))
    for g in range(7):
        rows = torch.from_numpy(sims[vot == g]).float()
        padded[g, : len(rows)] = rows
    best, _ = torch.max(padded, dim=1)
    m = best.t()
    order = torch.argsort(torch.argsort(m, dim=-1, descending=True), dim=-1)
    theirs = torch.diag(order).numpy() + 1
    assert v2t_ranks(sims, vot, "groups").tolist() == theirs.tolist()
    assert v2t_ranks(sims, vot, "captions").tolist() != theirs.tolist()


def test_r1_equal_and_others_differ():
    g, c = v2t_metrics(SIMS, VOT, "groups"), v2t_metrics(SIMS, VOT, "captions")
    assert g["R1"] == c["R1"]
    assert g["MnR"] == pytest.approx(4 / 3) and c["MnR"] == pytest.approx(5 / 3)


def test_one_caption_per_video_conventions_agree():
    sims = np.random.default_rng(1).normal(size=(9, 9))
    vot = np.arange(9)
    assert v2t_ranks(sims, vot, "groups").tolist() == v2t_ranks(sims, vot, "captions").tolist()


def test_group_ties_count_against_the_query():
    assert v2t_ranks(np.ones((3, 2)), np.array([0, 0, 1]), "groups").tolist() == [2, 2]


def test_unknown_convention():
    with pytest.raises(XPoolError, match="convention"):
        v2t_ranks(SIMS, VOT, "per_video")


def test_score_uses_the_configured_convention():
    from xpool.engine.embed import Embeddings
    from xpool.engine.evaluate import score
    from xpool.model.pooling import MeanPooling

    # MeanPooling of one frame = the normalised frame: sims are cosines of texts and frames.
    rng = np.random.default_rng(2)
    text = torch.from_numpy(rng.normal(size=(12, 8))).float()
    frames = torch.from_numpy(rng.normal(size=(4, 1, 8))).float()
    vot = np.repeat(np.arange(4), 3)
    emb = Embeddings(text, frames, vot, list("abcd"), [str(i) for i in range(12)])
    sims = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(
        frames[:, 0], dim=-1).T
    for conv in ("groups", "captions"):
        res = score(MeanPooling(8), emb, EvalConfig(dsl=False, v2t_convention=conv))
        assert res["v2t_convention"] == conv
        assert res["ranks"]["v2t"] == v2t_ranks(sims.numpy(), vot, conv).tolist()


def test_paper_profiles_default_to_groups():
    for name in ("paper-msrvtt9k", "paper-msvd", "frozen-msvd", "paper-lsmdc"):
        assert load_config(name).eval.v2t_convention == "groups"
    assert load_config("embedded").eval.v2t_convention == "captions"
