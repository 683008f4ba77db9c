"""Two-stage retrieval: the shortlist indexes, the exact rerank, and K >= V = exhaustive."""

from __future__ import annotations

import pytest
import torch

from xpool.errors import XPoolError
from xpool.model.pooling import build_pooling
from xpool.similarity import GalleryScorer, similarity_matrix
from xpool.twostage import ShortlistIndex, TwoStageSearch, mean_pooled, two_stage_search

D = 24


def _head(name="xpool", seed=0, **options):
    head = build_pooling(name, D, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return head


def _inputs(num_texts=19, num_videos=41, frames=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_texts, D, generator=g), torch.randn(num_videos, frames, D, generator=g)


@pytest.mark.parametrize("options", [{"num_heads": 1}, {"num_heads": 4}, {"residual": False}])
@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_shortlist_of_whole_gallery_is_the_exhaustive_ranking(options, kind):
    head = _head(**options)
    t, e = _inputs()
    exhaustive = similarity_matrix(head, t, e).topk(10, dim=1)
    for k in (41, 500):  # K = V and K > V
        scores, idx = two_stage_search(head, t, e, k=k, top=10, kind=kind)
        assert torch.equal(idx, exhaustive.indices)
        assert torch.allclose(scores, exhaustive.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,options", [("xpool", {}), ("mean", {}), ("topk", {"k": 2})])
def test_rerank_scores_equal_the_full_matrix(name, options):
    head = _head(name, **options)
    t, e = _inputs()
    full = similarity_matrix(head, t, e)
    cand = torch.randint(0, 41, (19, 7), generator=torch.Generator().manual_seed(2))
    cand[3, 5] = -1  # an unfilled slot
    got = GalleryScorer(head, e).score(t, cand)
    expected = torch.gather(full, 1, cand.clamp_min(0))
    expected[3, 5] = -torch.inf
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_hand_checked_shortlist_and_rerank():
    # Mean-pooled gallery: video 0 points along x, video 1 along y, video 2 along -x.
    e = torch.zeros(3, 2, D)
    e[0, :, 0] = 1.0
    e[1, :, 1] = 1.0
    e[2, :, 0] = -1.0
    q = torch.zeros(2, D)
    q[0, 0] = 2.0  # closest: 0, then 1 (cosine 0), then 2 (cosine -1)
    q[1, 1] = 1.0
    q[1, 0] = -0.5  # closest: 1, then 2, then 0
    assert ShortlistIndex.build(mean_pooled(e)).search(q, 2).tolist() == [[0, 1], [1, 2]]
    # A mean-pooling head reranks to the same cosines: video 0 exactly 1.0 for query 0.
    scores, idx = TwoStageSearch(build_pooling("mean", D), e).search(q, k=2, top=2)
    assert idx.tolist() == [[0, 1], [1, 2]]
    assert scores[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert scores[1].tolist() == pytest.approx([1 / 1.25**0.5, 0.5 / 1.25**0.5], abs=1e-6)


def test_shortlist_outside_k_is_never_returned():
    head = _head()
    t, e = _inputs()
    search = TwoStageSearch(head, e)
    shortlist = search.index.search(t, 5)
    _, idx = search.search(t, k=5, top=10)
    assert idx.shape == (19, 5)  # top is capped at the shortlist size
    for row, cands in zip(idx.tolist(), shortlist.tolist(), strict=True):
        assert set(row) == set(cands)


def test_flat_faiss_equals_torch_topk():
    pytest.importorskip("faiss")
    _, e = _inputs(num_videos=300)
    g = mean_pooled(e)
    q = torch.randn(50, D, generator=torch.Generator().manual_seed(4))
    exact = ShortlistIndex.build(g, "exact").search(q, 20)
    flat = ShortlistIndex.build(g, "flat").search(q, 20)
    assert torch.equal(exact, flat)


def test_ivf_with_every_cell_probed_is_exact():
    pytest.importorskip("faiss")
    _, e = _inputs(num_videos=400)
    g = mean_pooled(e)
    q = torch.randn(30, D, generator=torch.Generator().manual_seed(5))
    ivf = ShortlistIndex.build(g, "ivf", nlist=8, nprobe=8)
    assert ivf.nlist == 8 and ivf.nprobe == 8
    assert torch.equal(ivf.search(q, 10), ShortlistIndex.build(g, "exact").search(q, 10))
    # One probed cell out of 8 must lose some of the true neighbours (it is approximate).
    one = ShortlistIndex.build(g, "ivf", nlist=8, nprobe=1).search(q, 10)
    assert not torch.equal(one, ShortlistIndex.build(g, "exact").search(q, 10))


def test_bad_input_errors():
    _, e = _inputs()
    with pytest.raises(XPoolError, match="index kind"):
        ShortlistIndex.build(mean_pooled(e), "hnsw")
    with pytest.raises(XPoolError, match="k must be >= 1"):
        ShortlistIndex.build(mean_pooled(e)).search(torch.randn(2, D), 0)
    with pytest.raises(XPoolError, match="outside"):
        GalleryScorer(_head(), e).score(torch.randn(2, D), torch.tensor([[0], [41]]))
    with pytest.raises(XPoolError, match="V, F, D"):
        mean_pooled(torch.randn(3, D))


def test_search_switches_to_two_stage_above_the_threshold(monkeypatch):
    """`xpool search` ranks exhaustively up to TWO_STAGE_ABOVE videos and two-stage above; with a
    shortlist as large as the gallery both give the same top videos and exact scores."""
    import xpool.search as xsearch
    from xpool.model.pooling import XPool
    from xpool.similarity import similarity_matrix

    torch.manual_seed(0)
    head = XPool(16, num_heads=1).eval()
    frames = torch.randn(40, 6, 16)
    text = torch.randn(1, 16)
    exact = similarity_matrix(head, text, frames).float()[0]
    assert xsearch.search_method(40, 5).startswith("exhaustive")
    i_ex, s_ex = xsearch.rank_videos(head, text, frames, 5)
    monkeypatch.setattr(xsearch, "TWO_STAGE_ABOVE", 10)
    monkeypatch.setattr(xsearch, "SHORTLIST_K", 40)
    assert xsearch.search_method(40, 5).startswith("two-stage")
    i_2s, s_2s = xsearch.rank_videos(head, text, frames, 5)
    assert i_2s.tolist() == i_ex.tolist() == exact.topk(5).indices.tolist()
    torch.testing.assert_close(s_2s, s_ex, atol=1e-5, rtol=1e-5)
