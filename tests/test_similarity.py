"""The fast exact similarity equals the plain computation.

Derivation: docs/architecture.md, "Fast exact similarity".
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from head_helpers import random_weights

from xpool.errors import XPoolError
from xpool.metrics import t2v_ranks, v2t_ranks
from xpool.model.pooling import build_pooling
from xpool.similarity import plain_similarity_matrix, similarity_chunks, similarity_matrix

D = 64


def _inputs(num_texts=37, num_videos=23, num_frames=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = 2.0 * torch.randn(num_texts, D, generator=g) + 0.5
    e = 1.5 * torch.randn(num_videos, num_frames, D, generator=g) - 0.3
    return t, e


HEADS = [
    ("xpool", {"num_heads": 1}),
    ("xpool", {"num_heads": 4}),
    ("xpool", {"num_heads": 1, "residual": False}),
    ("xpool", {"num_heads": 4, "residual": False}),
    ("topk", {}),
    ("topk", {"k": 1}),
    ("attention", {}),
    ("attention", {"temperature": 0.5}),
    ("mean", {}),
    ("self_attention", {"num_heads": 4, "num_layers": 2}),
]


@pytest.mark.parametrize("name,options", HEADS)
@pytest.mark.parametrize("chunk_size", [None, 2, 5, 64])
def test_fast_equals_plain(name, options, chunk_size):
    head = build_pooling(name, D, **options)
    random_weights(head)
    t, e = _inputs()
    plain = plain_similarity_matrix(head, t, e, chunk_size=7)
    fast = similarity_matrix(head, t, e, chunk_size=chunk_size)
    assert fast.shape == (37, 23) and fast.dtype == torch.float32
    assert (fast - plain).abs().max().item() <= 1e-5
    # identical ranks: both protocols, with captions spread over the videos
    video_of_text = np.arange(37) % 23
    assert np.array_equal(t2v_ranks(fast, video_of_text), t2v_ranks(plain, video_of_text))
    assert np.array_equal(v2t_ranks(fast, video_of_text), v2t_ranks(plain, video_of_text))


@pytest.mark.parametrize("num_heads", [1, 4])
def test_xpool_plain_is_the_definition(num_heads):
    """plain_similarity_matrix is literally: forward, normalize, dot."""
    head = build_pooling("xpool", D, num_heads=num_heads)
    random_weights(head, seed=3)
    head.eval()
    t, e = _inputs(9, 4, 3, seed=2)
    pooled = head(t, e)  # [V, T, D]
    expected = torch.einsum("vtd,td->tv", F.normalize(pooled, dim=-1), F.normalize(t, dim=-1))
    fast = similarity_matrix(head, t, e)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain_similarity_matrix(head, t, e), expected, atol=1e-6, rtol=0)


def test_eval_mode_and_state_restored():
    head = build_pooling("xpool", D, dropout=0.5)
    random_weights(head)
    head.train()
    t, e = _inputs(6, 5, 4)
    a = similarity_matrix(head, t, e)
    b = plain_similarity_matrix(head, t, e)
    assert head.training  # restored
    assert (a - b).abs().max() <= 1e-5  # dropout was off in both
    assert not a.requires_grad


def test_more_videos_than_texts_and_single_frame():
    head = build_pooling("xpool", D, num_heads=2)
    random_weights(head, seed=5)
    t, e = _inputs(3, 40, 1)
    fast = similarity_matrix(head, t, e, chunk_size=2)
    plain = plain_similarity_matrix(head, t, e)
    assert (fast - plain).abs().max() <= 1e-5


def test_topk_with_k_above_frames():
    head = build_pooling("topk", D, k=10)
    t, e = _inputs(8, 6, 4)
    assert (similarity_matrix(head, t, e) - plain_similarity_matrix(head, t, e)).abs().max() <= 1e-5


def test_bad_inputs():
    head = build_pooling("xpool", D)
    t, e = _inputs(4, 3, 2)
    with pytest.raises(XPoolError):
        similarity_matrix(head, t, e[0])
    with pytest.raises(XPoolError):
        similarity_matrix(head, t[:, :10], e)
    with pytest.raises(XPoolError):
        similarity_matrix(head, t, e, chunk_size=0)


def test_xpool_fast_path_never_calls_forward(monkeypatch):
    """The fast path never pools per pair (no [V, T, D] tensor): the forward is not used."""
    head = build_pooling("xpool", D, num_heads=2)
    random_weights(head)
    t, e = _inputs(10, 8, 5)
    expected = plain_similarity_matrix(head, t, e)

    def forbidden(*args, **kwargs):
        raise AssertionError("forward called")

    monkeypatch.setattr(type(head), "forward", forbidden)
    assert (similarity_matrix(head, t, e) - expected).abs().max() <= 1e-5


def test_clip_like_inputs_near_identity_head():
    """Default (identity) init plus a little training noise, correlated frames as in real video."""
    g = torch.Generator().manual_seed(7)
    head = build_pooling("xpool", D)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    base = torch.randn(30, 1, D, generator=g) * 0.4
    e = base + 0.1 * torch.randn(30, 12, D, generator=g)  # frames of a video are similar
    t = torch.randn(50, D, generator=g) * 0.4
    fast = similarity_matrix(head, t, e)
    plain = plain_similarity_matrix(head, t, e)
    assert (fast - plain).abs().max() <= 1e-5
    vot = np.arange(50) % 30
    assert np.array_equal(t2v_ranks(fast, vot), t2v_ranks(plain, vot))


@pytest.mark.parametrize("name", ["xpool", "mean", "topk"])
def test_chunks_reassemble_the_matrix(name):
    head = build_pooling(name, D, **({"k": 3} if name == "topk" else {}))
    random_weights(head)
    t, e = _inputs()
    chunks = list(similarity_chunks(head, t, e, chunk_size=10))
    assert [s0 for s0, _ in chunks] == [0, 10, 20, 30]
    assert torch.equal(torch.cat([b for _, b in chunks]), similarity_matrix(head, t, e, chunk_size=10))
    assert head.training  # the head's mode is restored once the chunks are consumed


XPOOL_VARIANTS = [
    {"num_heads": 1},
    {"num_heads": 1, "residual": False},
    {"num_heads": 4},
    {"num_heads": 2, "residual": False},
]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 texts and a few videos, basis GEMM blocks of 2 videos: every boundary is hit."""
    from xpool.similarity import base, factored

    monkeypatch.setattr(factored, "_TILE_TEXTS", 4)
    monkeypatch.setattr(factored, "_TILE_BYTES", 1)  # as few pairs per tile as the GEMM rule allows
    monkeypatch.setattr(base, "MIN_GEMM_ROWS", 20)
    monkeypatch.setattr(factored, "_BASIS_ROWS", 14)
    monkeypatch.setattr(factored, "_STATS_BYTES", 1)  # the per-pair steps once per video tile
    return factored


@pytest.mark.parametrize("options", XPOOL_VARIANTS)
@pytest.mark.parametrize("shape", [(37, 23, 7), (5, 41, 1), (1, 9, 3), (26, 1, 12)])
def test_xpool_tiles_match_plain(small_tiles, options, shape):
    """Text tiles, video tiles and basis blocks with remainders (T != V, one frame, one text,
    one video): the fast path still equals the plain one, and equals the one-tile result up to
    float rounding."""
    num_texts, num_videos, num_frames = shape
    head = build_pooling("xpool", D, **options)
    random_weights(head, seed=11)
    t, e = _inputs(num_texts, num_videos, num_frames, seed=4)
    plan = small_tiles.xpool_plan(num_texts, num_videos, num_frames * head.num_heads, 40, None,
                                  small_tiles.base.DEFAULT_MEMORY_BUDGET)
    assert plan[1] <= 4 and plan[2] <= max(1, -(-20 // num_frames))
    fast = similarity_matrix(head, t, e, chunk_size=9)
    plain = plain_similarity_matrix(head, t, e)
    assert fast.shape == (num_texts, num_videos)
    assert (fast - plain).abs().max().item() <= 1e-5
    with pytest.MonkeyPatch.context() as mp:  # one tile per chunk, one basis block
        mp.setattr(small_tiles, "_TILE_TEXTS", 1 << 20)
        mp.setattr(small_tiles, "_TILE_BYTES", 1 << 40)
        mp.setattr(small_tiles, "_BASIS_ROWS", 1 << 20)
        mp.setattr(small_tiles, "_STATS_BYTES", 1 << 40)
        whole = similarity_matrix(head, t, e, chunk_size=9)
    assert (fast - whole).abs().max().item() <= 1e-6


def test_xpool_tiles_are_deterministic(small_tiles):
    head = build_pooling("xpool", D)
    random_weights(head, seed=2)
    t, e = _inputs(30, 17, 5)
    assert torch.equal(similarity_matrix(head, t, e), similarity_matrix(head, t, e))
    chunks = list(similarity_chunks(head, t, e, chunk_size=7))
    assert torch.equal(torch.cat([b for _, b in chunks]), similarity_matrix(head, t, e, chunk_size=7))


@pytest.mark.parametrize("options", XPOOL_VARIANTS[:3])
def test_xpool_empty_inputs(options):
    head = build_pooling("xpool", D, **options)
    t, e = _inputs(6, 4, 3)
    assert similarity_matrix(head, t[:0], e).shape == (0, 4)
    assert similarity_matrix(head, t, e[:0]).shape == (6, 0)


@pytest.mark.parametrize("options", XPOOL_VARIANTS)
def test_xpool_texts_at_any_scale(options):
    """The fast path folds 1 / |t| into the text side: scaling a text leaves its cosines alone
    (up to layer_norm1's eps, which the plain path applies to the raw text too)."""
    head = build_pooling("xpool", D, **options)
    random_weights(head, seed=6)
    t, e = _inputs(12, 8, 4)
    t = t * torch.logspace(-1, 2, 12)[:, None]
    plain = plain_similarity_matrix(head, t, e)
    assert (similarity_matrix(head, t, e) - plain).abs().max().item() <= 1e-5


@pytest.mark.parametrize("options", XPOOL_VARIANTS)
def test_xpool_bits_do_not_depend_on_the_thread_count(options):
    """Same bits with 1 and 2 threads, on tiles whose widths (300 = 256 + 44 texts) are not a
    multiple of the vector width: torch.softmax over a middle dimension fails this."""
    head = build_pooling("xpool", D, **options)
    random_weights(head, seed=9)
    t, e = _inputs(300, 130, 12, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = similarity_matrix(head, t, e)
        torch.set_num_threads(2)
        two = similarity_matrix(head, t, e)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
