"""Points 8 and 11 of the fidelity issue: CLIP4Clip's seqTransf and the authors' X-Pool names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xpool.errors import XPoolError
from xpool.model.pooling import XPool, build_pooling, convert_authors_xpool_state_dict


@pytest.fixture(scope="module")
def tiny_clip():
    from xpool.model.backbone import build_backbone

    torch.manual_seed(0)
    return build_backbone("xpool-smoke", pretrained=None)  # text width 64 = embed_dim, 2 heads


# ------------------------------------------------------------ CLIP4Clip seqTransf, in the test


class _TFLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + 1e-12) + self.bias


class _Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)  # sequence-first, as CLIP4Clip
        self.ln_1, self.ln_2 = _TFLayerNorm(d), _TFLayerNorm(d)
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.h = h

    def forward(self, x, mask):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask.repeat(self.h, 1, 1))[0]
        z = self.c_fc(self.ln_2(x))
        return x + self.c_proj(z * torch.sigmoid(1.702 * z))


def _clip4clip_seqtransf(frames, pos, blocks):
    """CLIP4Clip `_loose_similarity` for sim_header seqTransf, video side, all frames valid."""
    v, f, _ = frames.shape
    x = frames + pos[:f].unsqueeze(0)
    mask = torch.zeros(v, f, f)  # (1 - video_mask) * -1e6 with every frame valid
    x = x.permute(1, 0, 2)
    for b in blocks:
        x = b(x, mask)
    x = x.permute(1, 0, 2) + frames
    x = x / x.norm(dim=-1, keepdim=True)
    x = x.mean(dim=1)
    return x / x.norm(dim=-1, keepdim=True)


def _reference_from_clip(clip_model, layers, heads):
    d = clip_model.positional_embedding.shape[1]
    blocks = []
    for i in range(layers):
        b = _Block(d, heads)
        src = clip_model.transformer.resblocks[i]
        sd = {k: v for k, v in src.state_dict().items() if not k.startswith("ls_")}
        sd = {k.replace("mlp.", ""): v for k, v in sd.items()}
        b.load_state_dict(sd, strict=True)
        blocks.append(b)
    return clip_model.positional_embedding.detach(), blocks


def test_seqtransf_equals_clip4clip_from_clip_text(tiny_clip):
    clip = tiny_clip.model
    head = build_pooling("self_attention", 64, num_layers=2, num_heads=2)
    head.init_from_clip_text(clip)
    assert head.initialised_from == "clip_text"
    torch.testing.assert_close(head.frame_position_embeddings.weight[:32],
                               clip.positional_embedding.detach())
    pos, blocks = _reference_from_clip(clip, 2, 2)
    torch.manual_seed(1)
    frames = torch.randn(5, 12, 64)
    text = torch.randn(3, 64)
    ours = nn.functional.normalize(head(text, frames), dim=-1)
    torch.testing.assert_close(ours, _clip4clip_seqtransf(frames, pos, blocks), rtol=1e-5,
                               atol=1e-5)


def test_seqtransf_no_dropout_and_quickgelu(tiny_clip):
    head = build_pooling("self_attention", 64, num_layers=2, num_heads=2)
    frames, text = torch.randn(2, 6, 64), torch.randn(1, 64)
    head.train()
    a = head(text, frames)
    head.eval()
    torch.testing.assert_close(a, head(text, frames))  # no dropout anywhere
    assert type(head.transformerClip.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())


def test_seqtransf_layers_beyond_clip_depth_keep_init(tiny_clip):
    head = build_pooling("self_attention", 64, num_layers=4, num_heads=2)
    before = head.transformerClip.resblocks[3].mlp.c_fc.weight.detach().clone()
    head.init_from_clip_text(tiny_clip.model)  # the smoke text tower has 2 layers
    torch.testing.assert_close(head.transformerClip.resblocks[3].mlp.c_fc.weight, before)
    torch.testing.assert_close(head.transformerClip.resblocks[1].mlp.c_fc.weight,
                               tiny_clip.model.transformer.resblocks[1].mlp.c_fc.weight)


def test_seqtransf_head_mismatch_raises(tiny_clip):
    head = build_pooling("self_attention", 64, num_layers=2, num_heads=8)
    with pytest.raises(XPoolError, match="sa_heads=2"):
        head.init_from_clip_text(tiny_clip.model)


def test_seqtransf_random_init_is_clip4clip_init_weights():
    torch.manual_seed(0)
    head = build_pooling("self_attention", 256, num_layers=1, num_heads=8)
    w = head.transformerClip.resblocks[0].mlp.c_fc.weight
    assert abs(w.std().item() - 0.02) < 0.002 and head.frame_position_embeddings.weight.std() < 0.03
    assert torch.all(head.transformerClip.resblocks[0].mlp.c_fc.bias == 0)


def test_seqtransf_trains_in_the_new_parameter_group(tiny_clip):
    from xpool.model.retrieval import RetrievalModel

    head = build_pooling("self_attention", 64, num_layers=2, num_heads=2)
    head.init_from_clip_text(tiny_clip.model)
    model = RetrievalModel(tiny_clip, head)
    groups = model.param_groups(1e-6, 1e-4, 0.2, exclude_1d_from_decay=False)
    new = next(g for g in groups if g["name"] == "new")
    ids = {id(p) for p in new["params"]}
    assert all(id(p) in ids for p in head.parameters()) and new["lr"] == 1e-4


def test_build_model_initialises_from_clip_text():
    from xpool.config import load_config
    from xpool.model.build import build_model

    cfg = load_config("smoke", {"model.pooling": "self_attention", "model.sa_init": "clip_text",
                                "model.sa_heads": 2, "model.sa_layers": 2,
                                "model.pretrained": None})
    model = build_model(cfg, pretrained=None)
    assert model.pooling.initialised_from == "clip_text"
    torch.testing.assert_close(model.pooling.transformerClip.resblocks[0].attn.in_proj_weight,
                               model.backbone.model.transformer.resblocks[0].attn.in_proj_weight)


# ------------------------------------------------------------ the authors' X-Pool head names


class _AuthorsMHA(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)


class _AuthorsTransformer(nn.Module):
    """Their modules/transformer.py Transformer's parameter layout and forward (1 head)."""

    def __init__(self, d):
        super().__init__()
        self.cross_attn = _AuthorsMHA(d)
        self.linear_proj = nn.Linear(d, d)
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.layer_norm3 = nn.LayerNorm(d)

    def forward(self, t, v):
        t, v = self.layer_norm1(t), self.layer_norm1(v)
        q = self.cross_attn.q_proj(t)
        k, val = self.cross_attn.k_proj(v), self.cross_attn.v_proj(v)
        w = torch.softmax(torch.einsum("vfd,td->vft", k, q) / math.sqrt(q.shape[-1]), dim=1)
        o = self.cross_attn.out_proj(torch.einsum("vft,vfd->vtd", w, val))
        o = self.layer_norm2(o)
        return self.layer_norm3(o + self.linear_proj(o))


def test_authors_state_dict_loads_strictly_and_agrees():
    torch.manual_seed(0)
    theirs = _AuthorsTransformer(16)
    for p in theirs.parameters():
        nn.init.normal_(p, std=0.3)
    full = {f"pool_frames.{k}": v for k, v in theirs.state_dict().items()}
    full["clip.logit_scale"] = torch.tensor(4.6)
    assert "pool_frames.cross_attn.q_proj.weight" in full
    head = XPool(16, num_heads=1, dropout=0.3)
    result = head.load_state_dict(convert_authors_xpool_state_dict(full), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    head.eval()
    t, v = torch.randn(3, 16), torch.randn(4, 5, 16)
    torch.testing.assert_close(head(t, v), theirs(t, v), rtol=1e-5, atol=1e-5)
