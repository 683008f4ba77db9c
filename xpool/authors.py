"""Evaluate the authors' released X-Pool checkpoints with a profile's test protocol.

``xpool eval PROFILE --checkpoint model_best.pth`` lands here when the file is in the authors'
format. The profile gives the protocol (``paper-msrvtt9k``: 12 uniform frames, the 1k-A test
split, both directions, DSL re-scoring in separate columns); the checkpoint gives every weight, so
no CLIP weights are downloaded. The result is a run record under
``results/<profile>/authors/<name>/`` (resolved config, environment, checkpoint checksum, metrics)
and a table ``results/<profile>/tables/authors_<name>.{csv,md}`` with the paper's numbers and the
differences beside ours.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xpool import reporting
from xpool.config import Config, dataset_key, load_config, save_config
from xpool.data.splits import ensure_data
from xpool.engine.evaluate import build_eval_embeddings, result_metrics, score
from xpool.engine.runs import environment_info
from xpool.engine.setup import pick_device
from xpool.errors import XPoolError
from xpool.integrity import file_sha256
from xpool.io import torch_save, write_json
from xpool.model.build import build_model
from xpool.model.checkpoints import load_authors_checkpoint
from xpool.model.hf_clip import open_clip_to_hf_state_dict
from xpool.model.pooling import XPool
from xpool.model.retrieval import RetrievalModel
from xpool.study import StudyStop

__all__ = [
    "AUTHORS_CHECKPOINTS",
    "AuthorsEvaluation",
    "AuthorsStudy",
    "authors_study",
    "authors_model",
    "evaluate_authors_checkpoint",
    "missing_checkpoints_message",
]

# dataset key -> (profile that evaluates it, the authors' README R@1 t2v). Their README
# ("Evaluation" table) links one model_best.pth per dataset on Google Drive.
AUTHORS_CHECKPOINTS: dict[str, tuple[str, float]] = {
    "msrvtt9k": ("paper-msrvtt9k", 46.9),
    "msrvtt7k": ("paper-msrvtt7k", 43.9),
    "msvd": ("paper-msvd", 47.2),
    "lsmdc": ("paper-lsmdc", 25.2),
}
AUTHORS_README = "https://github.com/layer6ai-labs/xpool#evaluation"


@dataclass
class AuthorsEvaluation:
    """Metrics, the comparison table and where the record was written."""

    metrics: dict[str, dict[str, float]]
    table: pd.DataFrame
    markdown: str
    record_dir: Path
    table_path: Path


def authors_model(cfg: Config) -> RetrievalModel:
    """A randomly initialised ``RetrievalModel`` of the profile's architecture, to load into.

    QuickGELU, as in OpenAI's and Hugging Face's CLIP; no pretrained weights are fetched since
    the checkpoint replaces every one of them.
    """
    if cfg.model.frozen:
        raise XPoolError(
            f"profile {cfg.profile} is a frozen-feature profile; the authors' checkpoints "
            "fine-tune CLIP: evaluate them with a paper-* profile"
        )
    return build_model(cfg, pretrained=None, quick_gelu=True)


def _record_name(path: Path) -> str:
    # model_best.pth is the same name for every dataset: keep its folder (their exp_name) too.
    raw = f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def evaluate_authors_checkpoint(cfg: Config, checkpoint: str | Path, split: str = "test",
                                progress: bool = True) -> AuthorsEvaluation:
    """Evaluate an authors' checkpoint on ``split`` of the profile's corpus and record it."""
    path = Path(checkpoint).expanduser()
    start = time.perf_counter()
    ensure_data(cfg, progress)
    device = pick_device()
    model = authors_model(cfg)
    ckpt = load_authors_checkpoint(model, path)
    model = model.to(device).eval()
    emb = build_eval_embeddings(cfg, model, split, device, progress=progress)
    result = score(model.pooling, emb, cfg.eval, device)
    metrics = result_metrics(result)

    name = _record_name(path)
    # Path(...).stem: a profile given as a YAML path must not put its folders into that path.
    profile_dir = Path(cfg.output.results_dir) / Path(cfg.profile).stem
    record_dir = profile_dir / "authors" / name
    record_dir.mkdir(parents=True, exist_ok=True)
    recorded = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(path)))
    save_config(recorded, record_dir / "config.yaml")
    write_json(record_dir / "environment.json", environment_info())
    write_json(record_dir / "metrics.json", {
        **metrics,
        "ranks": result["ranks"],
        "checkpoint": str(path),
        "checkpoint_sha256": file_sha256(path),
        "checkpoint_epoch": ckpt.epoch,
        "split": split,
        "num_texts": result["num_texts"],
        "num_videos": result["num_videos"],
        "seconds": round(time.perf_counter() - start, 1),
    })

    dataset = dataset_key(cfg)
    rows = [{"pooling": cfg.model.pooling, "seed": 0, "direction": d, "selection": "authors",
             **{m: float(metrics[d][m]) for m in reporting.METRICS}} for d in metrics]
    table = reporting.results_table(pd.DataFrame(rows), dataset)
    title = (f"Authors' checkpoint {path.name} on {reporting.DATASETS.get(dataset, cfg.data.corpus)}"
             f" ({split}, {result['num_texts']} captions x {result['num_videos']} videos)")
    notes = [f"profile {cfg.profile}; {cfg.data.num_frames} frames; DSL temperature "
             f"{cfg.eval.dsl_temperature}" if cfg.eval.dsl else f"profile {cfg.profile}; no DSL",
             f"checkpoint sha256 {file_sha256(path)[:16]}..., epoch {ckpt.epoch}"]
    markdown = reporting.results_markdown(table, title, notes)
    table_path = reporting.write_table(table, profile_dir / "tables", f"authors_{name}",
                                       markdown)
    return AuthorsEvaluation(metrics, table, markdown, record_dir, table_path)


def missing_checkpoints_message(paths: dict[str, str | None]) -> str | None:
    """None when every given checkpoint exists, else a message naming the missing files."""
    missing = [f"{key}: {p or '(no path given)'}" for key, p in paths.items()
               if not p or not Path(p).expanduser().is_file()]
    if not missing:
        return None
    return ("authors' checkpoints not found: " + "; ".join(missing) + ". Their README links one "
            f"model_best.pth per dataset under 'Evaluation' ({AUTHORS_README}); download them and "
            "pass the paths as the notebook's parameters")


def to_authors_format(model: RetrievalModel, epoch: int = 0) -> dict[str, Any]:
    """A ``RetrievalModel`` with an X-Pool head as an authors' checkpoint dict (HF CLIP names
    under ``clip.``, their head names under ``pool_frames.``): what ``torch.save`` would write."""
    if not isinstance(model.pooling, XPool) or not model.pooling.residual:
        raise XPoolError("only an X-Pool head with the residual block has the authors' layout")
    state = {f"clip.{k}": v for k, v in open_clip_to_hf_state_dict(model.backbone.model.state_dict()).items()}
    for key, value in model.pooling.state_dict().items():
        attn = key.split(".")[0] in ("q_proj", "k_proj", "v_proj", "out_proj")
        state[f"pool_frames.{'cross_attn.' if attn else ''}{key}"] = value
    return {"epoch": epoch, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def random_smoke_checkpoint(cfg: Config, path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random model of ``cfg``'s architecture in the authors' format (for the
    smoke profile: it exercises the whole path; its numbers mean nothing)."""
    torch.manual_seed(seed)
    model = authors_model(cfg)
    return torch_save(to_authors_format(model), path)


@dataclass
class AuthorsStudy:
    """Notebook 09's result: one comparison table per evaluated checkpoint."""

    evaluations: dict[str, AuthorsEvaluation]
    markdown: str
    missing: str | None


def authors_study(profile: str, checkpoints: dict[str, str | None],
                  roots: dict[str, str | None], output_dir: str | Path | None = None,
                  progress: bool = False) -> AuthorsStudy:
    """Evaluate every available authors' checkpoint with its paper profile (notebook 09).

    ``checkpoints`` and ``roots``: dataset key (msrvtt9k, msrvtt7k, msvd, lsmdc) -> path. Under
    the smoke profile (a synthetic corpus) a seeded random model converted to the authors'
    format is evaluated instead, and the title says so.

    Raises:
        StudyStop: no checkpoint (or no corpus for one) is present; the message names the
            missing files and where the authors link them.
    """
    base = load_config(profile)
    results_dir = str(Path(output_dir).parent) if output_dir else base.output.results_dir
    if base.data.corpus == "synthetic":
        cfg = load_config(profile, {"output.results_dir": results_dir,
                                    "model.pretrained": None})
        ensure_data(cfg, progress)
        ckpt = random_smoke_checkpoint(
            cfg, Path(results_dir) / Path(profile).stem / "authors" / "random" / "model_best.pth")
        ev = evaluate_authors_checkpoint(cfg, ckpt, progress=progress)
        title = (f"# SMOKE TEST: a random {cfg.model.backbone} model converted to the authors' "
                 "checkpoint format, evaluated on the synthetic corpus. Its numbers mean nothing; "
                 "it checks the conversion and the evaluation path.\n\n")
        return AuthorsStudy({"random": ev}, title + ev.markdown, None)
    unknown = sorted(set(checkpoints) - set(AUTHORS_CHECKPOINTS))
    if unknown:
        raise XPoolError(f"unknown dataset keys {unknown}; valid: {list(AUTHORS_CHECKPOINTS)}")
    missing = missing_checkpoints_message(checkpoints)
    evaluations = {}
    for key, path in checkpoints.items():
        if not path or not Path(path).expanduser().is_file():
            continue
        paper_profile = AUTHORS_CHECKPOINTS[key][0]
        overrides: dict[str, Any] = {"output.results_dir": results_dir}
        if roots.get(key):
            overrides["data.root"] = roots[key]
        cfg = load_config(paper_profile, overrides)
        if not cfg.data_root.is_dir():
            missing = (missing + "; " if missing else "") + f"{key}: corpus {cfg.data_root} absent"
            continue
        evaluations[key] = evaluate_authors_checkpoint(cfg, path, progress=progress)
    if not evaluations:
        raise StudyStop(missing or "no authors' checkpoint given")
    parts = [ev.markdown for ev in evaluations.values()]
    if missing:
        parts.append(f"Not evaluated: {missing}")
    return AuthorsStudy(evaluations, "\n".join(parts), missing)
