"""Training: the authors' recipe (AdamW with two learning rates, cosine schedule with linear
warmup, gradient clipping, CLIP's clamped logit scale) with exact resume, DDP and model selection.

`train(cfg)` is what `xpool train` and the notebooks call. A run is identified by its resolved
config (see `xpool.engine.runs`): a finished run is returned from its record instead of retrained.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.datasets import TrainDataset, collate_train
from xpool.data.splits import ensure_data, eval_split, load_split
from xpool.data.transforms import transform_for
from xpool.determinism import HEAD_THREADS, STUDY_THREADS
from xpool.engine.distributed import (
    DistInfo,
    any_rank,
    barrier,
    cleanup_distributed,
    gather_with_grad,
    init_distributed,
)
from xpool.engine.embed import frame_cache
from xpool.engine.evaluate import result_metrics
from xpool.engine.features import (
    FeatureTrainDataset,
    collate_features,
    extract_features,
    feature_dim,
    load_features,
)
from xpool.engine.interrupt import StopRequest, TrainingInterrupted, resume_command
from xpool.engine.preflight import preflight
from xpool.engine.pretrain import resolve_pretrained
from xpool.engine.runs import CsvLog, RunLock, RunRecord
from xpool.engine.selection import eval_steps, evaluate_and_select, selected_result
from xpool.engine.setup import (
    autocast,
    cosine_with_warmup,
    pick_device,
    rng_state,
    seed_everything,
    set_rng_state,
    torch_threads,
)
from xpool.errors import TrainingError, XPoolError
from xpool.exact_gemm import gemm_mode
from xpool.io import torch_load, torch_save, write_json
from xpool.losses import symmetric_infonce
from xpool.model.build import build_model, needs_pretrained
from xpool.model.retrieval import MAX_LOGIT_SCALE, RetrievalModel
from xpool.optim import build_optimizer

__all__ = ["ContrastiveObjective", "EpochSampler", "clamp_logit_scale_", "train"]

LOG_FIELDS = ["step", "epoch", "loss", "lr_clip", "lr_new", "logit_scale", "batch", "skipped",
              "seconds"]


def train(cfg: Config, resume: bool = False, fresh: bool = False,
          progress: bool = True) -> RunRecord:
    """Train (or return the finished record of) the run described by `cfg`.

    resume: continue from the run's last checkpoint if there is one. fresh: ignore any previous
    record and start over. Without either, an unfinished run with a checkpoint is an error, so
    nothing is overwritten by accident. The run folder is locked while training: a second
    process on the same run gets `RunLockedError` naming the PID that holds it.
    """
    record = RunRecord.for_config(cfg)
    if record.finished and not fresh:
        if progress:
            print(f"[xpool] cached run {record.run_dir} (pass fresh=True / --fresh to retrain)")
        return record
    device = pick_device()
    info = init_distributed(device)
    lock = RunLock(record)
    try:
        if info.is_main:
            lock.acquire()
            # Checked under the lock: another process may have finished or checkpointed it.
            if record.finished and not fresh:
                return record
            if record.last_checkpoint.is_file() and not (resume or fresh):
                raise XPoolError(
                    f"run {record.run_dir} has an unfinished checkpoint; continue it with "
                    f"`{resume_command(cfg)}`, or pass --fresh to start over"
                )
            removed = record.remove_stale_temp_files()
            if removed and progress:
                print(f"[xpool] removed {len(removed)} temporary files left by an interrupted "
                      f"write in {record.run_dir}")
        barrier(info)
        with _fixed_threads(cfg, device), gemm_mode(cfg.model.gemm):
            return _train(cfg, record, device, info, resume and not fresh, progress)
    finally:
        lock.release()
        cleanup_distributed()


def _fixed_threads(cfg: Config, device: torch.device) -> AbstractContextManager[None]:
    """Where `model.gemm: exact` promises the same bits on any machine, a CPU run uses a fixed
    intra-op thread count (STUDY_THREADS fine-tuned, HEAD_THREADS frozen), not the machine's:
    the reductions outside the products round differently with 1 and 2 threads (measured: a
    fine-tuned run's losses part by step 8). Elsewhere torch keeps its own count."""
    if device.type != "cpu" or cfg.model.gemm != "exact":
        return nullcontext()
    return torch_threads(HEAD_THREADS if cfg.model.frozen else STUDY_THREADS)


def _train(cfg: Config, record: RunRecord, device: torch.device, info: DistInfo, resume: bool,
           progress: bool) -> RunRecord:
    t_start = time.time()
    pretrained = _prepare_inputs(cfg, info, progress)
    run = _build(cfg, record, device, info, pretrained)
    _start_or_resume(cfg, run, record, info, resume, progress)
    _loop(cfg, run, record, device, info, progress, t_start)
    if info.is_main:
        _finish(cfg, run.model, record, run.state, device,
                run.elapsed_before + time.time() - t_start, progress)
    barrier(info)
    return record


# ----------------------------------------------------------------------------- setup


@dataclass
class _Run:
    """Everything the training loop works on."""

    model: RetrievalModel
    dataset: Dataset
    sampler: EpochSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: torch.nn.Module  # ContrastiveObjective, DDP-wrapped when distributed
    steps_per_epoch: int
    total_steps: int
    eval_split: str
    log: CsvLog
    # The loop's position and selection state; `last.pt` stores it, a resume restores it.
    state: dict[str, Any] = field(default_factory=lambda: {
        "step": 0, "evals": [], "best_score": -1.0, "best_step": None, "skipped": 0,
        "skipped_ids": [], "elapsed_s": 0.0})
    elapsed_before: float = 0.0  # seconds of earlier segments of a resumed run


def _prepare_inputs(cfg: Config, info: DistInfo, progress: bool) -> str | None:
    """Data, checks, cached features and pretrained weights, before anything is seeded (so no
    initialisation depends on whether they had to be made); returns the resolved weights."""
    tc = cfg.train
    if tc.batch_size % info.world_size:
        raise XPoolError(f"train.batch_size={tc.batch_size} must be divisible by the "
                         f"{info.world_size} processes")
    split = eval_split(cfg)
    if info.is_main:
        ensure_data(cfg, progress)
        preflight(cfg, sorted({split, "test"}), progress=progress)
    barrier(info)
    if cfg.model.frozen:
        if info.is_main:
            for s in sorted({"train", split, "test"}):
                extract_features(cfg, s, progress=progress)
        barrier(info)
    # May pretrain the tiny CLIP once (model.pretrained: synthetic, not cached yet).
    return resolve_pretrained(cfg) if needs_pretrained(cfg) else None


def _build(cfg: Config, record: RunRecord, device: torch.device, info: DistInfo,
           pretrained: str | None) -> _Run:
    """Seed, then the model, data, optimizer, schedule and objective, in that order (each draws
    from the seeded RNG)."""
    tc = cfg.train
    seed_everything(tc.seed)
    embed_dim = feature_dim(cfg) if cfg.model.frozen else None
    model = build_model(cfg, pretrained, embed_dim=embed_dim).to(device)
    dataset = _train_dataset(cfg, model)
    sampler = EpochSampler(len(dataset), tc.batch_size, tc.seed, info)
    loader = DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler,
                        num_workers=cfg.data.num_workers, collate_fn=_collate(cfg),
                        generator=torch.Generator().manual_seed(tc.seed),
                        persistent_workers=False)
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)

    # The authors decay every parameter (biases and LayerNorms included); so do we.
    groups = model.param_groups(tc.lr_clip, tc.lr_new, tc.weight_decay, exclude_1d_from_decay=False)
    optimizer = build_optimizer(tc.optimizer, groups, eps=tc.adam_eps, betas=(0.9, 0.999))
    schedule = cosine_with_warmup(total_steps, int(total_steps * tc.warmup_fraction),
                                  tc.warmup_start)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    objective: torch.nn.Module = ContrastiveObjective(
        model, info, cfg.data.num_frames, clamp_in_loss=tc.logit_scale_clamp == "param_and_loss")
    if info.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(model, dataset, sampler, loader, optimizer, scheduler, objective,
                steps_per_epoch, total_steps, eval_split(cfg), CsvLog(record.log_path, LOG_FIELDS))


def _start_or_resume(cfg: Config, run: _Run, record: RunRecord, info: DistInfo, resume: bool,
                     progress: bool) -> None:
    """Continue from `last.pt` (weights, optimizer, schedule, RNGs, loop state), or clear what an
    earlier attempt left and start the record."""
    if resume and record.last_checkpoint.is_file():
        ckpt = torch_load(record.last_checkpoint, "checkpoint",
                          f"delete it and rerun with --fresh to start {record.run_dir.name} over")
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        run.state = ckpt["state"]
        if info.is_main:
            run.log.truncate_after(run.state["step"])
            for p in record.evals_dir.glob("eval_*.json"):
                if int(p.stem.split("_")[1]) > run.state["step"]:
                    p.unlink()
        if progress and info.is_main:
            print(f"[xpool] resuming {record.run_dir} at step {run.state['step']}/"
                  f"{run.total_steps}")
    elif info.is_main:
        # A fresh start: nothing of an earlier attempt may pass for this one's (a finished
        # record, or a checkpoint that --resume would continue).
        for old in (record.metrics_path, record.last_checkpoint, record.best_checkpoint):
            old.unlink(missing_ok=True)
        record.start(cfg)
        run.log.reset()
        for p in record.evals_dir.glob("eval_*.json"):
            p.unlink()
    barrier(info)
    run.elapsed_before = float(run.state.get("elapsed_s", 0.0))


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation cut into global batches; each rank takes its slice.

    `start_batch` skips batches already trained on, which is how a resumed run continues from
    the exact data position of its checkpoint.
    """

    def __init__(self, n: int, global_batch: int, seed: int, info: DistInfo):
        if n < global_batch:
            raise XPoolError(f"training set has {n} items, fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.seed, self.info = n, global_batch, seed, info
        self.local_batch = global_batch // info.world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        lo = self.info.rank * self.local_batch
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = perm[b * self.global_batch : (b + 1) * self.global_batch]
            yield from chunk[lo : lo + self.local_batch]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch


def _train_dataset(cfg: Config, model: RetrievalModel) -> Dataset:
    if cfg.model.frozen:
        return FeatureTrainDataset(load_features(cfg, "train"))
    bb = model.backbone
    transform = transform_for(bb, train=cfg.data.train_augment, antialias=cfg.data.antialias)
    return TrainDataset(load_split(cfg, "train"), bb.tokenize, transform, cfg.data.num_frames,
                        sampling=cfg.data.train_sampling, rule=cfg.data.sampling_rule,
                        frame_cache=frame_cache(cfg, bb.image_size), seed=cfg.train.seed)


def _collate(cfg: Config) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    return collate_features if cfg.model.frozen else collate_train


# ----------------------------------------------------------------------------- the loop


def _loop(cfg: Config, run: _Run, record: RunRecord, device: torch.device, info: DistInfo,
          progress: bool, t_start: float) -> None:
    """Train until `total_steps`, evaluating and checkpointing on schedule; on SIGINT/SIGTERM
    save `last.pt` at the step boundary and raise `TrainingInterrupted`."""
    tc, state = cfg.train, run.state
    eval_at = eval_steps(run.steps_per_epoch, tc.evals_per_epoch, tc.eval_steps)
    bar = tqdm(total=run.total_steps, initial=state["step"], desc=f"train {record.run_dir.name}",
               disable=not (progress and info.is_main), unit="step")
    run.model.train()
    t_last = time.time()
    stop = StopRequest()
    with stop.installed():
        while state["step"] < run.total_steps:
            epoch, in_epoch = divmod(state["step"], run.steps_per_epoch)
            run.sampler.set_epoch(epoch, in_epoch)
            if hasattr(run.dataset, "set_epoch"):
                run.dataset.set_epoch(epoch)
            for batch in run.loader:
                step = state["step"] + 1
                loss_value, n_items = _train_step(cfg, run.model, run.objective, batch,
                                                  run.optimizer, device, step, epoch)
                run.scheduler.step()
                skipped = list(batch.get("skipped", []))
                state["skipped"] += len(skipped)
                state["skipped_ids"].extend(skipped)
                state["step"] = step
                now = time.time()
                if info.is_main:
                    _log_step(run, bar, tc.log_every, step, epoch, loss_value, n_items,
                              len(skipped), now - t_last)
                t_last = now
                step_in_epoch = step - epoch * run.steps_per_epoch
                if step_in_epoch in eval_at or step == run.total_steps:
                    if info.is_main:
                        evaluate_and_select(cfg, run.model, record, state, device, run.eval_split,
                                            epoch, progress)
                    barrier(info)
                saved = info.is_main and (step % tc.checkpoint_every == 0
                                          or step_in_epoch == run.steps_per_epoch
                                          or step == run.total_steps)
                if saved:
                    _save_last(cfg, run, record, t_start)
                barrier(info)
                if step >= run.total_steps:
                    break
                if any_rank(stop.signum is not None, info, device):
                    _stop(cfg, run, record, info, bar, stop.signum, saved, t_start)
    bar.close()


def _log_step(run: _Run, bar: tqdm, log_every: int, step: int, epoch: int, loss: float,
              n_items: int, skipped: int, seconds: float) -> None:
    """One row of the run's training log (every step: the run record's curve), and the progress
    bar every `train.log_every` steps and at the last."""
    lrs = run.scheduler.get_last_lr()
    run.log.append({"step": step, "epoch": epoch, "loss": f"{loss:.6f}",
                    "lr_clip": lrs[0], "lr_new": lrs[-1],
                    "logit_scale": f"{run.model.logit_scale_value().item():.4f}",
                    "batch": n_items, "skipped": skipped, "seconds": f"{seconds:.4f}"})
    if step % log_every == 0 or step == run.total_steps:
        bar.set_postfix(loss=f"{loss:.3f}", vid_s=f"{n_items / max(seconds, 1e-9):.1f}")
        bar.update(step - bar.n)


def _save_last(cfg: Config, run: _Run, record: RunRecord, t_start: float) -> None:
    run.state["elapsed_s"] = run.elapsed_before + time.time() - t_start
    torch_save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(), "rng": rng_state(), "state": run.state,
                "config": cfg.to_dict()}, record.last_checkpoint)


def _stop(cfg: Config, run: _Run, record: RunRecord, info: DistInfo, bar: tqdm,
          signum: int | None, saved: bool, t_start: float) -> None:
    """Save `last.pt` (unless this step just did) and raise `TrainingInterrupted`."""
    step = run.state["step"]
    if info.is_main and not saved:
        _save_last(cfg, run, record, t_start)
    barrier(info)
    bar.close()
    name = signal.Signals(signum).name if signum else "a stop on another rank"
    message = (f"{name} at step {step}/{run.total_steps}: "
               f"saved {record.last_checkpoint}; resume with `{resume_command(cfg)}`")
    if info.is_main:
        print(f"[xpool] {message}", file=sys.stderr, flush=True)
    raise TrainingInterrupted(message)


class ContrastiveObjective(torch.nn.Module):
    """The loss of one batch as a module, so DistributedDataParallel can wrap it.

    Embeddings are gathered from every rank before pooling, so the negatives are the global
    batch and the result does not depend on how many processes share it. A model without a
    backbone (frozen-feature mode) takes the batch's cached features.
    """

    def __init__(self, model: RetrievalModel, info: DistInfo, num_frames: int,
                 clamp_in_loss: bool = True):
        super().__init__()
        self.model, self.info = model, info
        self.num_frames = num_frames
        self.clamp_in_loss = clamp_in_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if self.model.frozen:
            text, frames = batch["text_feats"], batch["frame_feats"]
        elif batch["tokens"].numel() == 0:
            # Every video of this rank's batch failed to decode; other ranks may still have
            # items, so take part in the gather with an empty slice.
            d = self.model.embed_dim
            text = batch["tokens"].new_zeros((0, d), dtype=torch.float32)
            frames = batch["tokens"].new_zeros((0, self.num_frames, d), dtype=torch.float32)
        else:
            text = self.model.encode_text(batch["tokens"])
            frames = self.model.encode_frames(batch["frames"])
        text = gather_with_grad(text.float(), self.info)
        frames = gather_with_grad(frames.float(), self.info)
        n = text.shape[0]
        if n < 2:
            # Every video of the batch failed to decode: nothing to contrast. A zero that
            # touches every parameter keeps DDP's gradient bookkeeping consistent.
            return sum(p.sum() for p in self.model.parameters()) * 0.0, n
        sims = self.model.pairwise_similarity(text, frames)
        return symmetric_infonce(sims, self.model.logit_scale,
                                 clamp_in_loss=self.clamp_in_loss), n


def clamp_logit_scale_(logit_scale: torch.Tensor, mode: str) -> None:
    """Cap the log scale at ln 100 in place after a step. "param" is the authors' clamp (upper
    bound only); "param_and_loss" keeps this project's earlier [0, ln 100] range."""
    if mode == "param":
        logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
    else:
        logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))


def _train_step(cfg: Config, model: RetrievalModel, objective: torch.nn.Module, batch: dict,
                optimizer: torch.optim.Optimizer, device: torch.device, step: int,
                epoch: int) -> tuple[float, int]:
    """One optimisation step; returns (loss, number of pairs in the global batch)."""
    tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with autocast(cfg, device):
        loss, n = objective(tensors)
    if n < 2:
        loss.backward()  # DDP expects a backward after every forward
        optimizer.zero_grad(set_to_none=True)
        return float("nan"), n
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss became {loss.item()} at step {step} (epoch {epoch}); bad videos are already "
            f"skipped, so this is a numerical problem: lower the learning rate or check the "
            f"inputs"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    with torch.no_grad():
        clamp_logit_scale_(model.logit_scale, cfg.train.logit_scale_clamp)
    return float(loss.item()), n


# ----------------------------------------------------------------------------- the end


def _finish(cfg: Config, model: RetrievalModel, record: RunRecord, state: dict[str, Any],
            device: torch.device, wall: float, progress: bool) -> None:
    if state["best_step"] is None:
        raise TrainingError(f"run {record.run_dir} finished without an evaluation")
    result = selected_result(cfg, model, record, state["best_step"], device)
    metrics = {
        "run_id": record.run_dir.name,
        "profile": cfg.profile,
        "pooling": cfg.model.pooling,
        "seed": cfg.train.seed,
        "selection": cfg.train.selection,
        "best_step": state["best_step"],
        "total_steps": state["step"],
        "skipped_videos": state["skipped"],
        "skipped_video_ids": sorted(set(state["skipped_ids"])),
        "wall_time_s": round(wall, 2),
        **result_metrics(result),
    }
    write_json(record.metrics_path, metrics)
    if progress:
        t2v = metrics["t2v"]
        print(f"[xpool] {record.run_dir.name}: test t2v R@1 {t2v['R1']:.2f} R@5 {t2v['R5']:.2f} "
              f"R@10 {t2v['R10']:.2f} MdR {t2v['MdR']:.1f} (selection: {cfg.train.selection}, "
              f"step {state['best_step']}, {wall:.0f} s, {state['skipped']} videos skipped)")
