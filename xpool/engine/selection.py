"""Checkpoint selection: when a run evaluates, how the best checkpoint is chosen, and the test
result that goes with it.

The rule is the authors': after each evaluation, the mean t2v R@1 of the last
`train.selection_window` evaluations; the checkpoint where that mean is highest so far is kept
(`best.pt`). Under `train.selection: val` the evaluations run on a held-out validation split and
the chosen checkpoint is tested once at the end; under `test` (the authors' protocol) the chosen
evaluation is itself the test result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.engine.embed import Embeddings
from xpool.engine.evaluate import build_eval_embeddings, score
from xpool.engine.runs import RunRecord
from xpool.io import torch_save, write_json
from xpool.model.build import load_model_state
from xpool.model.retrieval import RetrievalModel

__all__ = ["eval_steps", "evaluate_and_select", "save_test_outputs", "selected_result",
           "window_score"]


def eval_steps(steps_per_epoch: int, evals_per_epoch: int, rule: str = "rounded") -> set[int]:
    """Steps within an epoch (1-based) after which to evaluate; always includes the last.

    "authors": their trainer evaluates after the 0-based batches
    `np.linspace(0, S - 1, n + 1, dtype=int)[1:]`, i.e. after 1-based steps one higher.
    "rounded": after 1-based steps `round(k S / n)`, k = 1..n."""
    if rule == "authors":
        marks = np.linspace(0, steps_per_epoch - 1, evals_per_epoch + 1).astype(int)[1:]
        return {int(b) + 1 for b in marks}
    n = min(evals_per_epoch, steps_per_epoch)
    return {round((k + 1) * steps_per_epoch / n) for k in range(n)}


def window_score(r1s: Sequence[float], window: int) -> float:
    """The selection score after the latest evaluation: the mean R@1 of the last `window`."""
    return float(np.mean(list(r1s)[-window:]))


def evaluate_and_select(cfg: Config, model: RetrievalModel, record: RunRecord,
                        state: dict[str, Any], device: torch.device, split: str, epoch: int,
                        progress: bool) -> None:
    """Evaluate on `split`, record the evaluation, and keep the checkpoint if it is the best."""
    emb = build_eval_embeddings(cfg, model, split, device, progress=False)
    result = score(model.pooling, emb, cfg.eval, device)
    model.train()
    # The per-query ranks stay with every evaluation: checkpoint-selection rules other than the
    # run's own (xpool.protocol) are paired with other runs query by query.
    entry = {"step": state["step"], "epoch": epoch, "split": split, **result}
    write_json(record.evals_dir / f"eval_{state['step']:07d}.json", entry)
    state["evals"].append({"step": state["step"], "R1": result["t2v"]["R1"]})
    sel_score = window_score([e["R1"] for e in state["evals"]], cfg.train.selection_window)
    if progress:
        tqdm.write(f"[xpool] step {state['step']} {split}: t2v R@1 {result['t2v']['R1']:.2f} "
                   f"R@5 {result['t2v']['R5']:.2f} v2t R@1 {result['v2t']['R1']:.2f}")
    if sel_score > state["best_score"]:
        state["best_score"], state["best_step"] = sel_score, state["step"]
        torch_save({"model": model.state_dict(), "step": state["step"], "config": cfg.to_dict()},
                   record.best_checkpoint)
        if split == "test":
            save_test_outputs(record, model, emb, result)


def save_test_outputs(record: RunRecord, model: RetrievalModel, emb: Embeddings,
                      result: dict[str, Any]) -> None:
    """What figures and paired statistics need, small enough to keep with the run."""
    emb.save(record.run_dir / "test_embeddings.pt")
    torch_save(model.pooling.state_dict(), record.run_dir / "pooling_head.pt")
    write_json(record.run_dir / "test_ranks.json", result["ranks"])


def selected_result(cfg: Config, model: RetrievalModel, record: RunRecord, best_step: int,
                    device: torch.device) -> dict[str, Any]:
    """The test result of the selected checkpoint: under `selection: val` it is loaded and
    tested now (and its test outputs saved); under `test` it is the evaluation of `best_step`."""
    if cfg.train.selection == "val":
        load_model_state(model, record.best_checkpoint, cfg)
        emb = build_eval_embeddings(cfg, model, "test", device, progress=False)
        result = score(model.pooling, emb, cfg.eval, device)
        save_test_outputs(record, model, emb, result)
        return result
    return next(e for e in record.evaluations() if e["step"] == best_step)
