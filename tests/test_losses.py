"""Symmetric InfoNCE against hand computation."""

import math

import pytest
import torch

from xpool.errors import XPoolError
from xpool.losses import symmetric_infonce


def _ce(logits_row, target):
    return -logits_row[target] + math.log(sum(math.exp(x) for x in logits_row))


def test_two_by_two_by_hand():
    sims = torch.tensor([[0.8, 0.1], [0.3, 0.5]])
    log_scale = torch.tensor(math.log(10.0))
    s = 10.0
    rows = [[0.8 * s, 0.1 * s], [0.3 * s, 0.5 * s]]
    cols = [[0.8 * s, 0.3 * s], [0.1 * s, 0.5 * s]]
    t2v = (_ce(rows[0], 0) + _ce(rows[1], 1)) / 2
    v2t = (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2
    expected = (t2v + v2t) / 2
    assert symmetric_infonce(sims, log_scale).item() == pytest.approx(expected, rel=1e-6)


def test_scale_is_clamped_at_100():
    sims = torch.tensor([[0.8, 0.1], [0.3, 0.5]])
    big = symmetric_infonce(sims, torch.tensor(10.0))
    at_100 = symmetric_infonce(sims, torch.tensor(math.log(100.0)))
    assert big.item() == pytest.approx(at_100.item(), rel=1e-6)


def test_gradient_reaches_logit_scale():
    sims = torch.tensor([[0.8, 0.1], [0.3, 0.5]], requires_grad=True)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    symmetric_infonce(sims, scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    assert sims.grad.abs().sum() > 0


def test_ddp_blocks_sum_to_full_batch_loss():
    """Per-rank losses with global negatives (sims_v2t) average to the full-batch loss."""
    g = torch.Generator().manual_seed(0)
    full = torch.randn(6, 6, generator=g).tanh()
    scale = torch.tensor(2.0)
    expected = symmetric_infonce(full, scale)
    ranks = []
    for start in (0, 3):
        local_rows = full[start : start + 3]  # local texts x global videos
        local_cols = full[:, start : start + 3].T  # local videos x global texts
        ranks.append(symmetric_infonce(local_rows, scale, offset=start, sims_v2t=local_cols))
    assert torch.stack(ranks).mean().item() == pytest.approx(expected.item(), rel=1e-6)


def test_non_square_without_v2t_uses_local_block():
    g = torch.Generator().manual_seed(1)
    sims = torch.randn(2, 5, generator=g)
    scale = torch.tensor(1.0)
    loss = symmetric_infonce(sims, scale, offset=3)
    logits = sims * math.e
    t2v = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 4]))
    v2t = torch.nn.functional.cross_entropy(logits[:, 3:5].T, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(((t2v + v2t) / 2).item(), rel=1e-6)


def test_bad_offset():
    with pytest.raises(XPoolError):
        symmetric_infonce(torch.zeros(2, 3), torch.tensor(1.0), offset=2)
    with pytest.raises(XPoolError):
        symmetric_infonce(torch.zeros(3), torch.tensor(1.0))
