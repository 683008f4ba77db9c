"""Sharded exact evaluation: 2 gloo processes on loopback give the metrics of 1 process."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xpool.errors import XPoolError
from xpool.metrics import t2v_metrics, t2v_ranks, v2t_metrics, v2t_ranks
from xpool.model.pooling import build_pooling
from xpool.sharded import shard_range, sharded_ranks, sharded_retrieval_metrics
from xpool.similarity import similarity_matrix

NUM_VIDEOS, FRAMES, DIM = 13, 5, 16


def _problem():
    """T != V, several captions per video (1 to 3, uneven), a head with non-trivial weights."""
    g = torch.Generator().manual_seed(3)
    head = build_pooling("xpool", DIM, num_heads=1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    per_video = [1 + (v * 7) % 3 for v in range(NUM_VIDEOS)]
    vot = np.repeat(np.arange(NUM_VIDEOS), per_video)
    vot = vot[np.random.default_rng(0).permutation(vot.size)]  # captions not grouped by video
    e = torch.randn(NUM_VIDEOS, FRAMES, DIM, generator=g)
    t = e[torch.as_tensor(vot)].mean(1) + 0.7 * torch.randn(vot.size, DIM, generator=g)
    return head, t, e, vot


def _tied_sims(vot: np.ndarray) -> torch.Tensor:
    """Scores on a coarse grid (many exact ties, some across the shard boundary) and a NaN."""
    g = torch.Generator().manual_seed(5)
    s = torch.randint(0, 3, (vot.size, NUM_VIDEOS), generator=g).float() / 2
    s[4, vot[4]] = float("nan")
    return s


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        head, t, e, vot = _problem()
        lo, hi = shard_range(NUM_VIDEOS, world, rank)
        result = {}
        for chunk in (None, 4):  # one text chunk (kept for v2t) and several (second pass)
            result[f"head_{chunk}"] = sharded_retrieval_metrics(
                head, t, e[lo:hi], vot, (lo, hi), NUM_VIDEOS, chunk_size=chunk
            )
        sims = _tied_sims(vot)[:, lo:hi]

        def blocks():
            for s0 in range(0, sims.shape[0], 5):
                yield s0, sims[s0 : s0 + 5]

        ranks = sharded_ranks(blocks, vot, (lo, hi), NUM_VIDEOS)
        result["tied"] = {k: v.tolist() for k, v in ranks.items()}
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), tmp), nprocs=2, join=True)
        yield [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(2)]


def test_two_gloo_processes_equal_one_process(two_ranks):
    head, t, e, vot = _problem()
    assert len(t) != NUM_VIDEOS and np.bincount(vot).max() == 3
    sims = similarity_matrix(head, t, e)
    expected = {"t2v": t2v_metrics(sims, vot), "v2t": v2t_metrics(sims, vot)}
    assert expected["t2v"]["R1"] not in (0.0, 100.0)  # the test can tell orderings apart
    for result in two_ranks:
        assert result["head_None"] == expected
        assert result["head_4"] == expected
    one = sharded_retrieval_metrics(head, t, e, vot, (0, NUM_VIDEOS), NUM_VIDEOS)
    assert one == expected


def test_ties_and_nan_counted_against_the_query_across_ranks(two_ranks):
    _, _, _, vot = _problem()
    sims = _tied_sims(vot).numpy()
    expected_t2v, expected_v2t = t2v_ranks(sims, vot), v2t_ranks(sims, vot)
    assert expected_t2v[4] == NUM_VIDEOS  # NaN ground truth: worst rank
    for result in two_ranks:
        assert result["tied"]["t2v"] == expected_t2v.tolist()
        assert result["tied"]["v2t"] == expected_v2t.tolist()


def test_hand_checked_ranks_in_one_process():
    # 3 captions, 2 videos; caption 0 and 2 belong to video 0, caption 1 to video 1.
    sims = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.3]])
    vot = [0, 1, 0]
    ranks = sharded_ranks(lambda: [(0, sims)], vot, (0, 2), 2)
    assert ranks["t2v"].tolist() == [2, 2, 2]  # tie counts against caption 0
    # video 0: best own 0.5 (caption 0); captions >= 0.5 in column 0: 0.5, 0.9 -> rank 2.
    # video 1: own 0.1; every caption scores >= 0.1 -> rank 3.
    assert ranks["v2t"].tolist() == [2, 3]


def test_shard_range_covers_the_gallery_once():
    for world in (1, 2, 3, 5):
        parts = [shard_range(13, world, r) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == 13
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    with pytest.raises(XPoolError, match="outside a world"):
        shard_range(13, 2, 2)


def test_bad_blocks_and_directions_are_errors():
    sims = torch.zeros(2, 2)
    with pytest.raises(XPoolError, match="directions"):
        sharded_ranks(lambda: [(0, sims)], [0, 1], (0, 2), 2, directions=("x",))
    with pytest.raises(XPoolError, match="covered 1 texts"):
        sharded_ranks(lambda: [(0, sims[:1])], [0, 1], (0, 2), 2)
    with pytest.raises(XPoolError, match="columns"):
        sharded_ranks(lambda: [(0, sims[:, :1])], [0, 1], (0, 2), 2)
