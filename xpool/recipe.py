"""The authors' recipe as config values, and the deviations of a config from it.

`AUTHORS` maps config keys to the value the authors' code uses (layer6ai-labs/xpool; the sources
are in docs/fidelity.md). `deviations(cfg)` lists where a config differs, and `recipe_notes`
turns that into the table notes that every result table made from such runs carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xpool.config import Config, dataset_key

__all__ = ["AUTHORS", "AUTHORS_PER_DATASET", "deviations", "recipe_notes", "flatten"]

# Recipe items common to every dataset.
AUTHORS: dict[str, Any] = {
    "data.num_frames": 12,
    "data.train_sampling": "uniform",
    "data.sampling_rule": "authors",
    "data.train_augment": True,
    "data.antialias": False,
    "model.backbone": "ViT-B-32",
    "model.pretrained": "openai",
    "model.num_heads": 1,
    "model.frozen": False,
    "train.epochs": 5,
    "train.batch_size": 32,
    "train.lr_clip": 1e-6,
    "train.weight_decay": 0.2,
    "train.adam_eps": 1e-6,
    "train.optimizer": "hf_adamw",
    "train.warmup_fraction": 0.1,
    "train.warmup_start": "zero",
    "train.eval_steps": "authors",
    "train.grad_clip": 1.0,
    "train.logit_scale_clamp": "param",
    "train.seed": 24,
    "train.precision": "fp32",
    "train.evals_per_epoch": 10,
    "train.selection": "test",
    "train.selection_window": 5,
    "eval.v2t_convention": "groups",
}

# The README's training commands: --noclip_lr and --transformer_dropout per dataset.
AUTHORS_PER_DATASET: dict[str, dict[str, Any]] = {
    "msrvtt9k": {"train.lr_new": 3e-5, "model.dropout": 0.3},
    "msrvtt7k": {"train.lr_new": 1e-5, "model.dropout": 0.4},
    "msvd": {"train.lr_new": 1e-5, "model.dropout": 0.4},
    "lsmdc": {"train.lr_new": 1e-5, "model.dropout": 0.3},
}

# CLIP4Clip's seqTransf, for runs of the self_attention head.
CLIP4CLIP_SEQTRANSF: dict[str, Any] = {"model.sa_layers": 4, "model.sa_heads": 8,
                                       "model.sa_init": "clip_text"}


def flatten(cfg: Config) -> dict[str, Any]:
    """`section.key` -> value for every key of the resolved config."""
    out: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def authors_values(cfg: Config) -> dict[str, Any]:
    """The authors' value of every recipe item that applies to this config's corpus and head."""
    values = dict(AUTHORS)
    values.update(AUTHORS_PER_DATASET.get(dataset_key(cfg) or "", {}))
    if cfg.model.pooling == "self_attention":
        values.update(CLIP4CLIP_SEQTRANSF)
    return values


def deviations(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, ours, authors') for every recipe item where `cfg` differs from the authors."""
    ours = flatten(cfg)
    out = []
    for key, theirs in authors_values(cfg).items():
        mine = ours[key]
        same = (abs(mine - theirs) <= 1e-12 * max(1.0, abs(theirs))
                if isinstance(theirs, float) and isinstance(mine, int | float) else mine == theirs)
        if not same:
            out.append((key, mine, theirs))
    return out


def recipe_notes(configs: Sequence[Config], real: bool = True) -> list[str]:
    """Table notes: the video-to-text convention, and (for real corpora) every deviation from
    the authors' recipe among the runs tabulated."""
    conventions = sorted({c.eval.v2t_convention for c in configs})
    what = {"groups": "each video ranks the caption groups of all videos (the authors' and "
                      "CLIP4Clip's v2t_metrics)",
            "captions": "each video ranks every individual caption (not the published "
                        "convention; equal to it with one caption per video)"}
    notes = ["Video-to-text convention: " + "; ".join(f"{c}: {what[c]}" for c in conventions)
             + "."]
    if real:
        devs: dict[str, tuple[set[str], Any]] = {}
        for c in configs:
            for key, mine, theirs in deviations(c):
                devs.setdefault(key, (set(), theirs))[0].add(repr(mine))
        if devs:
            items = [f"{k} = {', '.join(sorted(v[0]))} (authors: {v[1]!r})"
                     for k, v in sorted(devs.items())]
            if any(c.train.precision == "auto" for c in configs):
                items.append("precision 'auto' means bf16 autocast on a GPU")
            notes.append("Deviations from the authors' recipe: " + "; ".join(items) + ".")
        else:
            notes.append("Recipe: the authors' in every item of docs/fidelity.md.")
    return notes
