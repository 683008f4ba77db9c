"""Pooling heads: shapes, X-Pool formula, invariances, gradients.

The formula: docs/architecture.md, "The X-Pool head".
"""

import pytest
import torch
import torch.nn.functional as F

from xpool.config import POOLINGS
from xpool.errors import XPoolError
from xpool.model.pooling import (
    XPool,
    build_pooling,
    convert_authors_xpool_state_dict,
)

D = 32


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, D, generator=g), torch.randn(3, 6, D, generator=g)


def _randomize(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", POOLINGS)
def test_shapes_and_kind(name, inputs):
    t, e = inputs
    head = build_pooling(name, D, **({"num_heads": 4} if name == "self_attention" else {}))
    out = head(t, e)
    if head.text_conditioned:
        assert name in ("topk", "attention", "xpool")
        assert out.shape == (3, 5, D)
    else:
        assert name in ("mean", "self_attention")
        assert out.shape == (3, D)


@pytest.mark.parametrize("num_heads", [1, 8])
def test_xpool_attention_sums_to_one(num_heads, inputs):
    t, e = inputs
    head = build_pooling("xpool", D, num_heads=num_heads)
    _randomize(head)
    head.eval()
    out, attn = head(t, e, return_attention=True)
    assert out.shape == (3, 5, D)
    assert attn.shape == (3, 5, 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 5))
    per_head = head.attention_weights(t, e)
    assert per_head.shape == (3, 5, num_heads, 6)
    torch.testing.assert_close(per_head.sum(-1), torch.ones(3, 5, num_heads))
    torch.testing.assert_close(per_head.mean(2), attn)


def test_xpool_identity_init_one_frame_by_hand():
    """With identity Linear layers, zero biases and one frame, every step follows by hand."""
    head = build_pooling("xpool", D)
    head.eval()
    for layer in (head.q_proj, head.k_proj, head.v_proj, head.out_proj, head.linear_proj):
        assert torch.equal(layer.weight, torch.eye(D)) and torch.equal(layer.bias, torch.zeros(D))
    g = torch.Generator().manual_seed(3)
    t = torch.randn(4, D, generator=g)
    e = torch.randn(2, 1, D, generator=g) * 3 + 1

    def norm(x, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps)

    # one frame: the attention weight is 1, so o = out_proj(v_proj(ln1(e))) = ln1(e);
    # y = ln2(o); z = ln3(y + linear_proj(y)) = ln3(2 y). The text plays no role.
    expected = norm(2 * norm(norm(e[:, 0])))  # [V, D]
    out = head(t, e)
    assert out.shape == (2, 4, D)
    torch.testing.assert_close(out, expected[:, None, :].expand(2, 4, D), atol=1e-5, rtol=1e-5)


def test_xpool_no_residual_variant():
    head = build_pooling("xpool", D, residual=False)
    assert head.linear_proj is None and head.layer_norm3 is None and head.dropout is None
    head.eval()
    e = torch.randn(2, 1, D)
    out = head(torch.randn(3, D), e)
    expected = F.layer_norm(F.layer_norm(e[:, 0], (D,)), (D,))
    torch.testing.assert_close(out, expected[:, None].expand(2, 3, D), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mean", "topk", "attention", "xpool"])
def test_frame_permutation_invariance(name, inputs):
    t, e = inputs
    head = build_pooling(name, D)
    _randomize(head)
    head.eval()
    perm = torch.randperm(e.shape[1], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(head(t, e[:, perm]), head(t, e), atol=1e-5, rtol=1e-5)


def test_self_attention_depends_on_frame_order(inputs):
    t, e = inputs
    head = build_pooling("self_attention", D, num_heads=4, num_layers=2)
    head.eval()
    perm = torch.arange(e.shape[1]).flip(0)
    assert not torch.allclose(head(t, e[:, perm]), head(t, e), atol=1e-4)


@pytest.mark.parametrize(
    "options", [{"num_heads": 1}, {"num_heads": 8}, {"num_heads": 8, "residual": False}]
)
def test_xpool_gradients_reach_every_parameter(options, inputs):
    t, e = inputs
    head = build_pooling("xpool", D, **options)
    _randomize(head)
    head.train()
    target = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(9))
    (head(t.requires_grad_(), e.requires_grad_()) * target).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        if name == "k_proj.bias":
            # q . b_k is the same for every frame, so the softmax cancels it: zero gradient by
            # construction (as in the authors' head).
            assert p.grad.abs().max() < 1e-5
        else:
            assert p.grad.abs().sum() > 0, name
    assert t.grad.abs().sum() > 0 and e.grad.abs().sum() > 0


def test_self_attention_gradients(inputs):
    t, e = inputs
    head = build_pooling("self_attention", D, num_heads=4, num_layers=2)
    head(t, e).pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_self_attention_too_many_frames():
    head = build_pooling("self_attention", D, num_heads=4, max_frames=4)
    with pytest.raises(XPoolError, match="max_frames"):
        head(torch.randn(2, D), torch.randn(1, 5, D))


def test_topk_by_hand():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    t = torch.tensor([[1.0, 0.1]])
    head = build_pooling("topk", 2, k=2)
    out = head(t, e)
    expected = (F.normalize(e[0, 0], dim=0) + F.normalize(e[0, 2], dim=0)) / 2
    torch.testing.assert_close(out[0, 0], expected)
    # k larger than the number of frames uses every frame
    assert build_pooling("topk", 2, k=10)(t, e).shape == (1, 1, 2)


def test_attention_pooling_low_temperature_picks_best_frame():
    e = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[0.0, 1.0]])
    out = build_pooling("attention", 2, temperature=0.001)(t, e)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 1.0]))


def test_mean_pooling_normalizes_frames():
    e = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])
    out = build_pooling("mean", 2)(torch.zeros(1, 2), e)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5]]))


def test_unknown_name_and_option():
    with pytest.raises(XPoolError, match="xpool") as err:
        build_pooling("maxpool", D)
    assert "maxpool" in str(err.value)
    with pytest.raises(XPoolError, match="num_heads") as err:
        build_pooling("xpool", D, heads=2)
    assert "heads" in str(err.value)
    with pytest.raises(XPoolError, match="none"):
        build_pooling("mean", D, k=3)
    with pytest.raises(XPoolError, match="divisible"):
        build_pooling("xpool", D, num_heads=5)


def test_xpool_attribute_names_and_authors_keys():
    head = build_pooling("xpool", D, num_heads=2, dropout=0.4)
    assert isinstance(head, XPool)
    assert head.num_heads == 2 and head.dropout.p == 0.4
    for name in (
        "layer_norm1",
        "layer_norm2",
        "layer_norm3",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "linear_proj",
        "dropout",
    ):
        assert hasattr(head, name)
    _randomize(head)
    authors = {}
    for key, value in head.state_dict().items():
        if key.split(".")[0] in ("q_proj", "k_proj", "v_proj", "out_proj"):
            key = "cross_attn." + key
        authors["pool_frames." + key] = value.clone()
    authors["clip.logit_scale"] = torch.tensor(4.6)
    fresh = build_pooling("xpool", D, num_heads=2)
    fresh.load_state_dict(convert_authors_xpool_state_dict(authors))
    for key, value in head.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
