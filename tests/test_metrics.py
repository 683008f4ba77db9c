"""Retrieval metrics against hand-computed examples (docs/architecture.md, "Metric contract")."""

import numpy as np
import pytest
import torch

from xpool.errors import XPoolError
from xpool.metrics import (
    dual_softmax,
    rank_metrics,
    t2v_metrics,
    t2v_ranks,
    v2t_metrics,
    v2t_ranks,
)


def test_t2v_ranks_square_by_hand():
    sims = np.array(
        [
            [0.9, 0.1, 0.3],  # own video 0 is best -> rank 1
            [0.8, 0.5, 0.6],  # own video 1: 0.8 and 0.6 beat 0.5 -> rank 3
            [0.2, 0.7, 0.4],  # own video 2: 0.7 beats 0.4 -> rank 2
        ]
    )
    ranks = t2v_ranks(sims, [0, 1, 2])
    assert ranks.tolist() == [1, 3, 2]
    m = t2v_metrics(sims, [0, 1, 2])
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MdR"] == 2.0
    assert m["MnR"] == pytest.approx(2.0)


def test_constant_matrix_gives_worst_rank():
    sims = np.ones((4, 4))
    assert t2v_ranks(sims, [0, 1, 2, 3]).tolist() == [4, 4, 4, 4]
    assert v2t_ranks(sims, [0, 1, 2, 3]).tolist() == [4, 4, 4, 4]
    m = t2v_metrics(sims, [0, 1, 2, 3])
    assert m["R1"] == 0.0 and m["MdR"] == 4.0 and m["MnR"] == 4.0


def test_partial_tie_counts_against_query():
    sims = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    # caption 0 (video 0) ties with video 1 -> rank 2; caption 1 (video 1) ties with video 2.
    assert t2v_ranks(sims, [0, 1]).tolist() == [2, 2]


def test_several_captions_per_video_and_t_ne_v():
    # 5 captions, 3 videos; video_of_text maps each caption to its video.
    sims = np.array(
        [
            [0.9, 0.2, 0.1],  # cap0 -> v0: rank 1
            [0.3, 0.4, 0.5],  # cap1 -> v0: rank 3
            [0.1, 0.8, 0.2],  # cap2 -> v1: rank 1
            [0.6, 0.5, 0.7],  # cap3 -> v2: rank 1
            [0.2, 0.3, 0.25],  # cap4 -> v2: rank 2
        ]
    )
    vot = [0, 0, 1, 2, 2]
    assert t2v_ranks(sims, vot).tolist() == [1, 3, 1, 1, 2]
    # v2t: column v; best own caption score; count captions >= it.
    # v0: own {0.9, 0.3} best 0.9 -> captions >= 0.9: only cap0 -> rank 1
    # v1: own {0.8} -> column [0.2, 0.4, 0.8, 0.5, 0.3] -> rank 1
    # v2: own {0.7, 0.25} best 0.7 -> column [0.1, 0.5, 0.2, 0.7, 0.25] -> rank 1
    assert v2t_ranks(sims, vot).tolist() == [1, 1, 1]
    sims2 = sims.copy()
    sims2[1, 1] = 0.95  # cap1 (of v0) now beats v1's own caption in column 1
    assert v2t_ranks(sims2, vot).tolist() == [1, 2, 1]
    m = t2v_metrics(sims, vot)
    assert m["R1"] == pytest.approx(60.0)
    assert m["MdR"] == 1.0
    assert m["MnR"] == pytest.approx(8 / 5)


def test_v2t_best_rank_among_own_captions():
    sims = np.array([[0.1, 0.0], [0.5, 0.0], [0.9, 1.0], [0.3, 0.2]])
    vot = [0, 0, 1, 1]
    # video 0: column [0.1, 0.5, 0.9, 0.3]; own best 0.5 -> 0.9 and 0.5 -> rank 2
    # video 1: column [0.0, 0.0, 1.0, 0.2]; own best 1.0 -> rank 1
    assert v2t_ranks(sims, vot).tolist() == [2, 1]
    assert v2t_metrics(sims, vot)["MdR"] == 1.5  # numpy median of an even count


def test_shuffled_video_order_gives_same_metrics():
    rng = np.random.default_rng(0)
    num_videos, num_texts = 7, 20
    vot = np.concatenate([np.arange(num_videos), rng.integers(0, num_videos, num_texts - 7)])
    sims = rng.normal(size=(num_texts, num_videos))
    perm = rng.permutation(num_videos)
    inverse = np.argsort(perm)
    sims_perm = sims[:, perm]  # column j of the new matrix is old video perm[j]
    vot_perm = inverse[vot]
    assert t2v_metrics(sims, vot) == t2v_metrics(sims_perm, vot_perm)
    assert v2t_metrics(sims, vot) == v2t_metrics(sims_perm, vot_perm)
    assert np.array_equal(np.sort(v2t_ranks(sims, vot)), np.sort(v2t_ranks(sims_perm, vot_perm)))


def test_rank_metrics_values():
    m = rank_metrics(np.array([1, 2, 5, 6, 10, 11]))
    assert m == {
        "R1": pytest.approx(100 / 6),
        "R5": pytest.approx(50.0),
        "R10": pytest.approx(500 / 6),
        "MdR": 5.5,
        "MnR": pytest.approx(35 / 6),
    }


def test_torch_inputs_accepted():
    sims = torch.tensor([[0.9, 0.1], [0.2, 0.3]])
    assert t2v_ranks(sims, torch.tensor([0, 1])).tolist() == [1, 1]
    assert v2t_metrics(sims, torch.tensor([0, 1]))["R1"] == 100.0


def test_video_without_caption_raises_for_v2t():
    sims = np.zeros((2, 3))
    with pytest.raises(XPoolError, match="no"):
        v2t_ranks(sims, [0, 1])
    # t2v is fine with extra distractor videos
    assert t2v_ranks(sims, [0, 1]).tolist() == [3, 3]


def test_bad_shapes_and_indices_raise():
    with pytest.raises(XPoolError):
        t2v_ranks(np.zeros((2, 2)), [0])
    with pytest.raises(XPoolError):
        t2v_ranks(np.zeros((2, 2)), [0, 2])
    with pytest.raises(XPoolError):
        t2v_ranks(np.zeros(3), [0, 1, 2])


def test_nan_ground_truth_gets_worst_rank():
    sims = np.array([[np.nan, 0.1], [0.2, 0.3]])
    assert t2v_ranks(sims, [0, 1]).tolist() == [2, 1]


def test_dual_softmax_definition():
    sims = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    out = dual_softmax(sims, temperature=10.0)
    prior = np.exp(sims * 10.0) / np.exp(sims * 10.0).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(out, sims * prior)
    out_t = dual_softmax(torch.tensor(sims), temperature=10.0)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out)
    # The softmax is over the text axis: each column of the prior sums to 1.
    np.testing.assert_allclose((out / sims).sum(axis=0), [1.0, 1.0])


def test_dual_softmax_v2t_uses_a_prior_over_videos():
    # Video 0's own caption (text 0) scores 0.5, below text 1's 0.6: plain v2t rank 2. But text 1
    # prefers video 1 far more (0.9), so its prior for video 0 is small and DSL ranks text 0 first.
    sims = np.array([[0.5, 0.1], [0.6, 0.9]])
    assert v2t_ranks(sims, [0, 1]).tolist() == [2, 1]
    out = dual_softmax(sims, temperature=10.0, direction="v2t")
    prior = np.exp(sims * 10.0) / np.exp(sims * 10.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, sims * prior)
    assert v2t_ranks(out, [0, 1]).tolist() == [1, 1]
    # A prior over the query's own candidates would change nothing: it is monotone in the score.
    same_axis = dual_softmax(sims, temperature=10.0, direction="t2v")
    assert v2t_ranks(same_axis, [0, 1]).tolist() == [2, 1]
    torch_out = dual_softmax(torch.tensor(sims), temperature=10.0, direction="v2t")
    np.testing.assert_allclose(torch_out.numpy(), out)
    with pytest.raises(XPoolError, match="direction"):
        dual_softmax(sims, direction="both")
