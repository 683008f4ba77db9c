"""CLIP backbone (tiny configs, offline), pretrained-weight errors, and the retrieval model."""

import math
import os

# Never touch the network: set before open_clip (and huggingface_hub) are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from xpool.config import load_config  # noqa: E402
from xpool.errors import ConfigError, XPoolError  # noqa: E402
from xpool.model.backbone import TINY_MODELS, ClipBackbone, build_backbone  # noqa: E402
from xpool.model.build import build_model  # noqa: E402
from xpool.model.pooling import build_pooling  # noqa: E402
from xpool.model.retrieval import RetrievalModel  # noqa: E402
from xpool.similarity import similarity_matrix  # noqa: E402


@pytest.fixture(scope="module")
def smoke() -> ClipBackbone:
    torch.manual_seed(0)
    return build_backbone("xpool-smoke", pretrained=None)


def test_tiny_configs_registered():
    for name in TINY_MODELS:
        assert name in open_clip.list_models()
        cfg = open_clip.get_model_config(name)
        assert cfg["text_cfg"]["vocab_size"] == 49408
        assert cfg["text_cfg"]["context_length"] == 32
    assert open_clip.get_model_config("xpool-tiny")["vision_cfg"]["image_size"] == 64
    assert open_clip.get_model_config("xpool-smoke")["vision_cfg"]["image_size"] == 32


def test_smoke_backbone_attributes(smoke):
    assert smoke.model_name == "xpool-smoke"
    assert smoke.embed_dim == 64
    assert smoke.image_size == 32
    assert smoke.context_length == 32
    assert len(smoke.image_mean) == 3 and len(smoke.image_std) == 3
    assert isinstance(smoke.logit_scale, torch.nn.Parameter)
    assert smoke.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-4)


def test_tokenizer_offline(smoke):
    tokens = smoke.tokenize(["a red ball bounces", "two dogs run on the grass " * 20])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    sot, eot = 49406, 49407  # CLIP's start/end-of-text tokens: the real BPE vocabulary
    assert tokens[0, 0] == sot and eot in tokens[0].tolist()
    assert tokens[1, -1] == eot  # truncated caption keeps its end token
    assert smoke.tokenize("one caption").shape == (1, 32)


def test_encoders_shapes(smoke):
    tokens = smoke.tokenize(["a", "b c", "d e f"])
    with torch.no_grad():
        text = smoke.encode_text(tokens)
        frames = smoke.encode_frames(torch.randn(2, 4, 3, 32, 32))
        images = smoke.encode_images(torch.randn(5, 3, 32, 32))
    assert text.shape == (3, 64)
    assert frames.shape == (2, 4, 64)
    assert images.shape == (5, 64)
    # frames go through the image tower exactly like images
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(smoke.encode_frames(x)[0], smoke.encode_images(x[0]))
    with pytest.raises(XPoolError):
        smoke.encode_frames(torch.randn(2, 3, 32, 32))


def test_download_failure_names_the_option(monkeypatch):
    def no_network(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    with pytest.raises(XPoolError) as err:
        build_backbone("ViT-B-32", pretrained="openai")
    message = str(err.value)
    assert "download" in message and "failed" in message
    assert "model.pretrained=/path/to/ViT-B-32.pt" in message


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-B-32.pt"
    with pytest.raises(XPoolError) as err:
        build_backbone("xpool-smoke", pretrained=str(missing))
    assert "not found" in str(err.value) and "model.pretrained=" in str(err.value)


def test_unknown_tag_and_model():
    with pytest.raises(XPoolError, match="openai"):
        build_backbone("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(XPoolError, match="xpool-tiny"):
        build_backbone("ViT-Z-99", pretrained=None)


def test_local_checkpoint_roundtrip(tmp_path, smoke):
    path = tmp_path / "smoke.pt"
    torch.save(smoke.model.state_dict(), path)
    loaded = build_backbone("xpool-smoke", pretrained=str(path))
    for key, value in smoke.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    # a ClipBackbone state dict ("model." prefix) loads too
    torch.save(smoke.state_dict(), tmp_path / "wrapped.pt")
    again = build_backbone("xpool-smoke", pretrained=str(tmp_path / "wrapped.pt"))
    assert torch.equal(again.logit_scale, smoke.logit_scale)
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, bad)
    with pytest.raises(XPoolError, match="could not load"):
        build_backbone("xpool-smoke", pretrained=str(bad))


# ---- retrieval model ---------------------------------------------------------------------------


def test_retrieval_model_with_backbone(smoke):
    model = RetrievalModel(smoke, build_pooling("xpool", smoke.embed_dim))
    assert model.logit_scale is smoke.logit_scale
    tokens = smoke.tokenize(["a", "b", "c"])
    frames = torch.randn(2, 3, 3, 32, 32)
    sims = model(tokens, frames)
    assert sims.shape == (3, 2)
    assert sims.abs().max() <= 1.0 + 1e-5
    assert model.logit_scale_value().item() == pytest.approx(1 / 0.07, rel=1e-4)
    with torch.no_grad():
        model.eval()
        t, e = model.encode_text(tokens), model.encode_frames(frames)
        torch.testing.assert_close(
            similarity_matrix(model.pooling, t, e), model.pairwise_similarity(t, e), atol=1e-5,
            rtol=0,
        )


def test_param_groups_with_backbone(smoke):
    model = RetrievalModel(smoke, build_pooling("xpool", smoke.embed_dim))
    groups = model.param_groups(lr_clip=1e-6, lr_new=1e-5, weight_decay=0.2)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"clip", "clip_no_decay", "new", "new_no_decay"}
    assert by_name["clip"]["lr"] == 1e-6 and by_name["new_no_decay"]["lr"] == 1e-5
    assert by_name["clip_no_decay"]["weight_decay"] == 0.0 and by_name["new"]["weight_decay"] == 0.2
    ids = lambda name: {id(p) for p in by_name[name]["params"]}  # noqa: E731
    assert id(model.logit_scale) in ids("clip_no_decay")
    assert ids("new") | ids("new_no_decay") == {id(p) for p in model.pooling.parameters()}
    all_ids = set().union(*(ids(n) for n in by_name))
    assert all_ids == {id(p) for p in model.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decay_all = model.param_groups(1e-6, 1e-5, 0.2, exclude_1d_from_decay=False)
    assert [g["name"] for g in decay_all] == ["clip", "new"]


def test_frozen_feature_mode():
    cfg = load_config("smoke", {"model.frozen": True, "model.num_heads": 2, "model.dropout": 0.4})
    with pytest.raises(XPoolError, match="embed_dim"):
        build_model(cfg, pretrained=None)
    model = build_model(cfg, pretrained=None, embed_dim=64)
    assert model.backbone is None and model.frozen and model.embed_dim == 64
    assert isinstance(model.logit_scale, torch.nn.Parameter)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert "logit_scale" in model.state_dict()
    groups = model.param_groups(1e-6, 3e-5, 0.2)
    assert {g["name"] for g in groups} == {"new", "new_no_decay"}
    assert id(model.logit_scale) in {id(p) for g in groups for p in g["params"]}
    sims = model.pairwise_similarity(torch.randn(4, 64), torch.randn(3, 5, 64))
    assert sims.shape == (4, 3)
    with pytest.raises(XPoolError, match="frozen"):
        model.encode_text(torch.zeros(1, 32, dtype=torch.long))


def test_build_model_text_agnostic(smoke):
    model = build_model(load_config("smoke", {"model.pooling": "mean"}), pretrained=None)
    sims = model.pairwise_similarity(torch.randn(3, 64), torch.randn(2, 4, 64))
    assert sims.shape == (3, 2)
    with pytest.raises(XPoolError):
        RetrievalModel(smoke, build_pooling("mean", 32))


def test_build_model_never_pretrains():
    """`model.pretrained: synthetic` is resolved by the engine (which may pretrain), never here."""
    cfg = load_config("smoke")
    assert cfg.model.pretrained == "synthetic"
    with pytest.raises(ConfigError, match="resolve_pretrained"):
        build_model(cfg, pretrained=cfg.model.pretrained)
