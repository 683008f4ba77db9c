"""Points 3 and 4 of the fidelity issue: the authors' AdamW and the logit-scale clamp."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from xpool.engine.train import clamp_logit_scale_
from xpool.losses import symmetric_infonce
from xpool.optim import HFAdamW, build_optimizer


def _hand_steps(p0, grads, lr, b1, b2, eps, wd):
    """HF AdamW by hand in float64, one scalar parameter."""
    p, m, v = p0, 0.0, 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - step * m / (math.sqrt(v) + eps)
        p = p - lr * wd * p
        out.append(p)
    return out


def test_hf_adamw_matches_hand_computed_steps():
    grads = [0.3, -0.1, 0.05, 2.0, -0.7]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-3, 0.2
    p = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = HFAdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expected = _hand_steps(1.5, grads, lr, b1, b2, eps, wd)
    for g, e in zip(grads, expected, strict=True):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert p.item() == pytest.approx(e, rel=1e-12, abs=1e-15)


def test_first_step_exact_value():
    # t = 1: m = 0.1 g, v = 0.001 g^2, step = lr sqrt(0.001) / 0.1; so the Adam part is
    # -lr * g / (|g| + eps / sqrt(0.001))... written out for g = 1e-4, lr = 1, eps = 1e-6:
    p = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = HFAdamW([p], lr=1.0, eps=1e-6, weight_decay=0.0)
    p.grad = torch.tensor([1e-4], dtype=torch.float64)
    opt.step()
    m, v = 1e-5, 1e-11
    expected = -(math.sqrt(1 - 0.999) / 0.1) * m / (math.sqrt(v) + 1e-6)
    assert p.item() == pytest.approx(expected, rel=1e-12)
    # torch's AdamW on the same gradient: eps after the bias correction, a different number.
    q = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    topt = torch.optim.AdamW([q], lr=1.0, eps=1e-6, weight_decay=0.0)
    q.grad = torch.tensor([1e-4], dtype=torch.float64)
    topt.step()
    assert abs(q.item() - p.item()) / abs(p.item()) > 0.02


def test_agrees_with_torch_adamw_without_eps_and_decay():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    oa = HFAdamW([a], lr=1e-3, eps=0.0, weight_decay=0.0)
    ob = torch.optim.AdamW([b], lr=1e-3, eps=0.0, weight_decay=0.0)
    for _ in range(20):
        g = torch.randn(5, 3, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_decay_on_every_parameter_including_logit_scale_and_groups():
    w = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    scale = torch.nn.Parameter(torch.tensor([math.log(100.0)], dtype=torch.float64))
    groups = [{"params": [w], "lr": 0.1, "weight_decay": 0.2},
              {"params": [scale], "lr": 0.01, "weight_decay": 0.2}]
    opt = build_optimizer("hf_adamw", groups, eps=1e-6)
    assert isinstance(opt, HFAdamW)
    w.grad = torch.zeros(1, dtype=torch.float64)
    scale.grad = torch.zeros(1, dtype=torch.float64)
    opt.step()  # zero gradient: only the decoupled decay moves them
    assert w.item() == pytest.approx(2.0 * (1 - 0.1 * 0.2), rel=1e-14)
    assert scale.item() == pytest.approx(math.log(100.0) * (1 - 0.01 * 0.2), rel=1e-14)


def test_state_dict_round_trip():
    p = torch.nn.Parameter(torch.ones(3))
    opt = HFAdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = HFAdamW([q], lr=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    p.grad, q.grad = torch.full((3,), 0.5), torch.full((3,), 0.5)
    opt.step()
    opt2.step()
    torch.testing.assert_close(p, q)


def test_paper_profile_uses_hf_adamw_and_embedded_keeps_torch():
    from xpool.config import load_config

    assert load_config("paper-msrvtt9k").train.optimizer == "hf_adamw"
    assert load_config("embedded").train.optimizer == "torch_adamw"


# ---------------------------------------------------------------- point 4: the logit scale


def test_logit_scale_gradient_nonzero_at_the_cap():
    sims = torch.tensor([[0.10, 0.09], [0.08, 0.10]])
    scale = torch.nn.Parameter(torch.tensor(math.log(100.0) + 1e-3))  # just above the cap
    symmetric_infonce(sims, scale, clamp_in_loss=False).backward()
    assert scale.grad is not None and scale.grad.abs().item() > 1e-4
    scale.grad = None
    symmetric_infonce(sims, scale, clamp_in_loss=True).backward()
    assert scale.grad.abs().item() == 0.0  # today's in-loss clamp kills it


def test_loss_uses_exp_scale_unclamped():
    sims = torch.tensor([[0.5, 0.1], [0.3, 0.4]])
    s = 5.0  # exp(5) = 148 > 100: the loss must not cap it
    logits = sims * math.exp(s)
    t2v = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    v2t = torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    got = symmetric_infonce(sims, torch.tensor(s), clamp_in_loss=False)
    assert got.item() == pytest.approx(((t2v + v2t) / 2).item(), rel=1e-6)


def test_parameter_clamp_after_step():
    x = torch.tensor(7.0)
    clamp_logit_scale_(x, "param")
    assert x.item() == pytest.approx(math.log(100.0))
    y = torch.tensor(-1.0)
    clamp_logit_scale_(y, "param")  # the authors clamp only from above
    assert y.item() == -1.0
    clamp_logit_scale_(y, "param_and_loss")
    assert y.item() == 0.0


@pytest.mark.parametrize("mode, grad_nonzero", [("param", True), ("param_and_loss", False)])
def test_objective_gradient_at_the_cap(mode, grad_nonzero):
    """The training objective, as _train builds it from train.logit_scale_clamp."""
    from xpool.engine.distributed import DistInfo
    from xpool.engine.train import ContrastiveObjective
    from xpool.model.pooling import MeanPooling
    from xpool.model.retrieval import RetrievalModel

    torch.manual_seed(0)
    model = RetrievalModel(None, MeanPooling(4), embed_dim=4)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0) + 1e-4)
    obj = ContrastiveObjective(model, DistInfo(), 3, clamp_in_loss=mode == "param_and_loss")
    loss, _ = obj({"text_feats": torch.randn(4, 4), "frame_feats": torch.randn(4, 3, 4)})
    loss.backward()
    assert (model.logit_scale.grad.abs().item() > 0) is grad_nonzero


def test_paper_profiles_clamp_the_parameter_only():
    from xpool.config import load_config

    for name in ("paper-msrvtt9k", "paper-msrvtt7k", "paper-msvd", "paper-lsmdc", "frozen-msvd"):
        assert load_config(name).train.logit_scale_clamp == "param"
    assert load_config("embedded").train.logit_scale_clamp == "param_and_loss"
