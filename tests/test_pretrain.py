"""Pretraining of the tiny CLIP on synthetic scenes: runs, caches, reloads (smoke sizes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import xpool.engine.pretrain as pretrain
from xpool.config import Config, load_config
from xpool.engine.evaluate import evaluate_frozen_mean_pool
from xpool.engine.setup import cosine_with_warmup
from xpool.model.backbone import build_backbone


def smoke(tmp: Path, **overrides) -> Config:
    base = {"pretrain.cache_dir": str(tmp / "cache"), "data.root": str(tmp / "corpus")}
    return load_config("smoke", {**base, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Config, Path]:
    cfg = smoke(tmp_path_factory.mktemp("pretrain"))
    return cfg, pretrain.ensure_pretrained(cfg, progress=False)


def test_pretraining_writes_a_complete_cache_entry(trained: tuple[Config, Path]) -> None:
    cfg, ckpt = trained
    out = ckpt.parent
    assert out == pretrain.cache_path(cfg) and ckpt.name == "checkpoint.pt"
    for name in ("checkpoint.pt", "loss.csv", "loss.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, cfg.pretrain.steps + 1))
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("i2t_R1", "t2i_R1", "train_seconds", "wall_seconds", "chance_R1"):
        assert key in metrics
    assert metrics["eval_images"] == cfg.pretrain.eval_images
    assert 0.0 <= metrics["i2t_R1"] <= 100.0


def test_checkpoint_loads_into_the_backbone(trained: tuple[Config, Path]) -> None:
    cfg, ckpt = trained
    model = build_backbone(cfg.model.backbone, pretrained=str(ckpt))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in model.model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    fresh = build_backbone(cfg.model.backbone, pretrained=None)
    changed = [k for k, v in fresh.model.state_dict().items() if not torch.equal(v, saved[k])]
    assert changed, "pretraining did not change any weight"


def test_second_call_hits_the_cache(trained: tuple[Config, Path], monkeypatch) -> None:
    cfg, ckpt = trained
    stamp = ckpt.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("retrained although the cache was complete")

    monkeypatch.setattr(pretrain, "_pretrain", fail)
    assert pretrain.ensure_pretrained(cfg, progress=False) == ckpt
    assert pretrain.resolve_pretrained(cfg) == str(ckpt)
    assert ckpt.stat().st_mtime_ns == stamp


def test_incomplete_entry_is_retrained_and_training_is_deterministic(tmp_path: Path) -> None:
    tiny = {"pretrain.steps": 2, "pretrain.eval_images": 8}
    cfg = smoke(tmp_path / "a", **tiny)
    out = pretrain.cache_path(cfg)
    out.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"partial")  # no metrics.json: not complete
    ckpt = pretrain.ensure_pretrained(cfg, progress=False)
    build_backbone(cfg.model.backbone, pretrained=str(ckpt))
    assert (out / "metrics.json").is_file()
    # The same seed elsewhere gives the same loss curve and weights.
    again = smoke(tmp_path / "b", **tiny)
    assert pretrain.cache_key(again) == pretrain.cache_key(cfg)
    other = pretrain.ensure_pretrained(again, progress=False)
    assert other != ckpt
    assert (other.parent / "loss.csv").read_text() == (out / "loss.csv").read_text()
    a = torch.load(ckpt, weights_only=True)
    b = torch.load(other, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_key_tracks_its_inputs(tmp_path: Path) -> None:
    key = pretrain.cache_key(smoke(tmp_path))
    assert pretrain.cache_key(smoke(tmp_path / "elsewhere")) == key  # cache_dir is not an input
    assert pretrain.cache_key(smoke(tmp_path, **{"train.epochs": 3})) == key
    for change in (
        {"pretrain.steps": 5},
        {"pretrain.seed": 1},
        {"synth.resolution": 64},
        {"model.backbone": "xpool-tiny"},
    ):
        assert pretrain.cache_key(smoke(tmp_path, **change)) != key, change


def test_resolve_pretrained_passes_other_values_through(tmp_path: Path) -> None:
    assert pretrain.resolve_pretrained(smoke(tmp_path, **{"model.pretrained": None})) is None
    cfg = smoke(tmp_path, **{"model.pretrained": "/some/clip.pt"})
    assert pretrain.resolve_pretrained(cfg) == "/some/clip.pt"
    assert not (tmp_path / "cache").exists()


def test_learning_rate_schedule() -> None:
    f = [cosine_with_warmup(100, 10)(s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))
    assert f[-1] < 0.01


def test_frozen_mean_pool_check_runs(trained: tuple[Config, Path]) -> None:
    from xpool.data.synthetic import ensure_corpus

    cfg, ckpt = trained
    ensure_corpus(cfg, progress=False)
    out = evaluate_frozen_mean_pool(cfg, ckpt, num_frames=4)
    assert out["chance_R1"] == pytest.approx(100.0 / cfg.synth.num_test)
    assert 0.0 <= out["R1"] <= 100.0 and 1.0 <= out["MnR"] <= cfg.synth.num_test


def test_trimmed_text_encoding_matches_the_full_one() -> None:
    from xpool.data.synthetic import ALL_SCENES, SceneImageStream, caption_for

    torch.manual_seed(0)
    model = build_backbone("xpool-smoke", pretrained=None)
    captions = SceneImageStream(32, seed=0).batch(5)[1] + [caption_for(ALL_SCENES[:3]), "a"]
    tokens = model.tokenize(captions)
    with torch.no_grad():
        torch.testing.assert_close(
            pretrain.encode_text_trimmed(model, tokens), model.encode_text(tokens),
            rtol=1e-5, atol=1e-5,
        )


def test_text_tower_is_frozen_during_phase_one(tmp_path: Path) -> None:
    cfg = smoke(tmp_path, **{"pretrain.steps": 2, "pretrain.eval_images": 8,
                             "pretrain.text_freeze": 1.0})
    saved = torch.load(pretrain.ensure_pretrained(cfg, progress=False), weights_only=True)
    torch.manual_seed(cfg.pretrain.seed)  # the same initialisation as the pretraining run
    init = build_backbone(cfg.model.backbone, pretrained=None).model.state_dict()
    text = [k for k in init if pretrain._is_text_param(k)]
    assert "token_embedding.weight" in text and "logit_scale" not in text
    assert all(torch.equal(init[k], saved[k]) for k in text)
    visual = [k for k in init if k.startswith("visual.") and init[k].is_floating_point()]
    assert any(not torch.equal(init[k], saved[k]) for k in visual)
