"""Points 1, 2 and 12 of the fidelity issue, and the paper profiles item by item against the
authors' published settings (README training commands at bc88718, config/all_config.py)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xpool.config import load_config
from xpool.recipe import deviations, recipe_notes

# Transcribed from the authors' repository: all_config.py defaults, then the README's per-dataset
# training flags (--batch_size=32 --noclip_lr=... --transformer_dropout=...). "ours" names the key.
ALL_CONFIG = {
    "data.num_frames": 12,             # --num_frames 12
    "data.train_sampling": "uniform",  # --video_sample_type uniform
    "train.evals_per_epoch": 10,       # --evals_per_epoch 10
    "train.selection_window": 5,       # --eval_window_size 5
    "model.backbone": "ViT-B-32",      # --clip_arch ViT-B/32
    "train.lr_clip": 1e-6,             # --clip_lr 1e-6
    "train.epochs": 5,                 # --num_epochs 5
    "train.weight_decay": 0.2,         # --weight_decay 0.2
    "train.warmup_fraction": 0.1,      # --warmup_proportion 0.1
    "model.num_heads": 1,              # --num_mha_heads 1
    "train.seed": 24,                  # --seed 24
    "train.batch_size": 32,            # README: --batch_size=32
    "train.adam_eps": 1e-6,            # HF AdamW's default eps (train.py passes none)
    "train.grad_clip": 1.0,            # trainer.py: clip_grad_norm_(..., 1.0)
    "train.selection": "test",         # trainer.py selects on valid_data_loader = the test split
}
README = {
    "paper-msrvtt9k": {"train.lr_new": 3e-5, "model.dropout": 0.3, "data.corpus": "msrvtt",
                       "data.train_list": "9k"},
    "paper-msrvtt7k": {"train.lr_new": 1e-5, "model.dropout": 0.4, "data.corpus": "msrvtt",
                       "data.train_list": "7k"},
    "paper-msvd": {"train.lr_new": 1e-5, "model.dropout": 0.4, "data.corpus": "msvd"},
    "paper-lsmdc": {"train.lr_new": 1e-5, "model.dropout": 0.3, "data.corpus": "lsmdc"},
}
# The behaviours of points 2-7 and 9 as config values.
BEHAVIOUR = {
    "train.precision": "fp32", "train.optimizer": "hf_adamw", "train.logit_scale_clamp": "param",
    "data.sampling_rule": "authors", "data.antialias": False, "data.train_augment": True,
    "eval.v2t_convention": "groups", "model.pretrained": "openai", "model.frozen": False,
    "data.lsmdc_captions": "authors", "model.sa_init": "clip_text", "model.sa_layers": 4,
    "model.sa_heads": 8, "train.warmup_start": "zero", "train.eval_steps": "authors",
}


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("profile", sorted(README))
def test_paper_profile_is_the_authors_recipe(profile):
    cfg = load_config(profile)
    expected = {**ALL_CONFIG, **BEHAVIOUR, **README[profile]}
    wrong = {k: (_get(cfg, k), v) for k, v in expected.items()
             if (_get(cfg, k) != pytest.approx(v) if isinstance(v, float) else _get(cfg, k) != v)}
    assert not wrong, wrong
    assert deviations(cfg) == []
    assert deviations(load_config(profile, {"model.pooling": "self_attention"})) == []


def test_deviations_name_each_changed_item():
    cfg = load_config("paper-msvd", {"train.precision": "bf16", "eval.v2t_convention": "captions"})
    assert {d[0] for d in deviations(cfg)} == {"train.precision", "eval.v2t_convention"}
    notes = " ".join(recipe_notes([cfg]))
    assert "train.precision = 'bf16' (authors: 'fp32')" in notes
    assert "captions: each video ranks every individual caption" in notes
    assert "Deviations" not in " ".join(recipe_notes([load_config("paper-msvd")]))
    assert "Deviations" not in " ".join(recipe_notes([cfg], real=False))


# ------------------------------------------------------------------- point 2: precision


def test_fp32_never_autocasts_and_auto_does_on_gpu():
    from xpool.engine.setup import uses_bf16

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert not uses_bf16(load_config("paper-msrvtt9k"), gpu)
    assert uses_bf16(load_config("paper-msrvtt9k", {"train.precision": "bf16"}), gpu)
    assert uses_bf16(load_config("embedded"), gpu) and not uses_bf16(load_config("embedded"), cpu)


# ------------------------------------------------------------ point 1: model selection


def _authors_choice(r1s, window):
    """trainer.py: deque(maxlen=eval_window_size) of R1, keep when its mean beats the best."""
    win, best, chosen = deque(maxlen=window), -1.0, None
    for i, r in enumerate(r1s):
        win.append(r)
        if np.mean(win) > best:
            best, chosen = float(np.mean(win)), i
    return chosen


def _run_selection(monkeypatch, cfg, r1s, tmp_path):
    from xpool.engine import selection as sel

    seq = iter(r1s)
    monkeypatch.setattr(sel, "build_eval_embeddings", lambda *a, **k: None)
    monkeypatch.setattr(sel, "score", lambda *a, **k: {"t2v": {"R1": next(seq)},
                                                       "v2t": {"R1": 0.0}, "ranks": {}})
    monkeypatch.setattr(sel, "write_json", lambda *a, **k: None)
    monkeypatch.setattr(sel, "torch_save", lambda *a, **k: None)
    monkeypatch.setattr(sel, "save_test_outputs", lambda *a, **k: None)
    model = SimpleNamespace(pooling=None, train=lambda: None, state_dict=lambda: {})
    record = SimpleNamespace(evals_dir=Path(tmp_path), best_checkpoint=Path(tmp_path) / "b.pt")
    state = {"step": 0, "evals": [], "best_score": -1.0, "best_step": None}
    for i in range(len(r1s)):
        state["step"] = i + 1
        sel.evaluate_and_select(cfg, model, record, state, torch.device("cpu"), "test", 0, False)
    return state["best_step"] - 1


def test_window_of_five_picks_a_different_step_than_one(monkeypatch, tmp_path):
    r1s = [10.0, 30.0, 12.0, 25.0, 26.0, 27.0, 28.0, 20.0]
    assert _authors_choice(r1s, 1) == 1 and _authors_choice(r1s, 5) == 7
    paper = load_config("paper-msrvtt9k")
    assert _run_selection(monkeypatch, paper, r1s, tmp_path) == _authors_choice(r1s, 5)
    one = load_config("paper-msrvtt9k", {"train.selection_window": 1})
    assert _run_selection(monkeypatch, one, r1s, tmp_path) == _authors_choice(r1s, 1)


# ------------------------------------------------------------------- point 12: the CLI


def test_config_verb_prints_the_resolved_recipe(capsys):
    from xpool.cli import main

    assert main(["config", "paper-msrvtt9k"]) == 0
    out = capsys.readouterr().out
    assert "optimizer: hf_adamw" in out and "selection_window: 5" in out
    assert "deviations from the authors' recipe (docs/fidelity.md): none" in out
    assert main(["config", "paper-msrvtt9k", "train.precision=bf16"]) == 0
    assert "train.precision: 'bf16' (authors: 'fp32')" in capsys.readouterr().out


def test_fidelity_table_lists_every_recipe_item():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "fidelity.md").read_text()
    for key in {**ALL_CONFIG, **BEHAVIOUR}:
        assert f"`{key}`" in doc, key
    for name in ("test_fidelity_recipe", "test_fidelity_optim", "test_fidelity_frames",
                 "test_fidelity_metrics", "test_fidelity_heads", "test_fidelity_corpora"):
        assert name in doc


def _hf_cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Hugging Face transformers' get_cosine_schedule_with_warmup lr_lambda (num_cycles 0.5),
    re-implemented here from its definition."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + np.cos(np.pi * 2.0 * 0.5 * progress)))


@pytest.mark.parametrize("total", [7, 140, 1407])
def test_warmup_start_zero_is_the_hf_schedule(total):
    from xpool.engine.setup import cosine_with_warmup

    warmup = int(total * 0.1)  # train.warmup_fraction 0.1, as the training loop rounds it
    ours = cosine_with_warmup(total, warmup, "zero")
    for step in range(total):
        assert ours(step) == pytest.approx(_hf_cosine_with_warmup(step, warmup, total), abs=1e-12)
    if warmup:
        assert ours(0) == 0.0
        # The older rule starts one step ahead: it differs from HF's on every warmup step.
        assert cosine_with_warmup(total, warmup, "one")(0) == pytest.approx(1 / warmup)


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 11, 57, 281, 2812])
def test_authors_eval_steps(steps):
    from xpool.engine.selection import eval_steps

    # trainer.py: evaluate after 0-based batch_idx in linspace(0, S-1, 11, dtype=int)[1:].
    expected = set()
    for k in range(1, 11):
        batch_idx = int(k * (steps - 1) / 10)  # linspace point k, cast to int (floor, >= 0)
        expected.add(batch_idx + 1)
    assert eval_steps(steps, 10, "authors") == expected
    assert steps in expected  # the last batch always evaluates


def test_eval_step_rules_differ_for_some_epoch_length():
    from xpool.engine.selection import eval_steps

    differ = [s for s in range(10, 400) if eval_steps(s, 10, "authors") != eval_steps(s, 10)]
    assert differ, "the two evaluation-step rules should differ for some epoch lengths"
