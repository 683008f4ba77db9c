"""Training: the authors' recipe (AdamW with two learning rates, cosine schedule with linear
warmup, gradient clipping, CLIP's clamped logit scale) with exact resume, DDP and model selection.

`train(cfg)` is what `xpool train` and the notebooks call. A run is identified by its resolved
config (see `xpool.runs`): a finished run is returned from its record instead of retrained.
"""

from __future__ import annotations

import math
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.corpora import Corpus, load_corpus
from xpool.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    gather_with_grad,
    init_distributed,
)
from xpool.errors import TrainingError, XPoolError
from xpool.evaluate import EvalEmbeddings, embed_texts, embed_videos, score
from xpool.io import torch_load, torch_save, write_json
from xpool.losses import symmetric_infonce
from xpool.model.retrieval import RetrievalModel
from xpool.optim import build_optimizer
from xpool.paths import resolve
from xpool.runs import CsvLog, RunLock, RunRecord

LOG_FIELDS = ["step", "epoch", "loss", "lr_clip", "lr_new", "logit_scale", "batch", "skipped",
              "seconds"]


def pick_device() -> torch.device:
    """CUDA when present (the local rank's GPU under torchrun), else the CPU."""
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch limited to `n` intra-op threads, restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pooling_options(cfg: Config) -> dict[str, Any]:
    """The options `build_pooling` takes for the configured head."""
    m = cfg.model
    return {
        "mean": {},
        # 77 positions, CLIP's text context, as CLIP4Clip's frame_position_embeddings.
        "self_attention": {"num_layers": m.sa_layers, "num_heads": m.sa_heads,
                           "max_frames": max(77, cfg.data.num_frames)},
        "topk": {"k": m.topk},
        "attention": {"temperature": m.attention_temperature},
        "xpool": {"num_heads": m.num_heads, "dropout": m.dropout, "residual": m.residual},
    }[m.pooling]


def make_model(cfg: Config, embed_dim: int | None = None) -> RetrievalModel:
    """Backbone + pooling head from the config (backbone-free in frozen-feature mode)."""
    from xpool.model.backbone import build_backbone
    from xpool.model.pooling import build_pooling

    if cfg.model.frozen:
        if embed_dim is None:
            from xpool.features import feature_dim

            embed_dim = feature_dim(cfg)
        pooling = build_pooling(cfg.model.pooling, embed_dim, **pooling_options(cfg))
        if cfg.model.pooling == "self_attention" and cfg.model.sa_init == "clip_text":
            from xpool.pretrain import resolve_pretrained

            # Frozen mode has no backbone in the model; build it once to read its text layers.
            clip = build_backbone(cfg.model.backbone, pretrained=resolve_pretrained(cfg))
            pooling.init_from_clip_text(clip.model)
        return RetrievalModel(None, pooling, embed_dim=embed_dim)
    from xpool.pretrain import resolve_pretrained

    backbone = build_backbone(cfg.model.backbone, pretrained=resolve_pretrained(cfg))
    pooling = build_pooling(cfg.model.pooling, backbone.embed_dim, **pooling_options(cfg))
    if cfg.model.pooling == "self_attention" and cfg.model.sa_init == "clip_text":
        pooling.init_from_clip_text(backbone.model)
    return RetrievalModel(backbone, pooling)


def load_model_state(model: RetrievalModel, path: str | Path,
                     cfg: Config | None = None) -> dict[str, Any]:
    """Load a run checkpoint (`best.pt`, `last.pt`) into `model`; returns the checkpoint.

    Weights that do not fit `model` raise an XPoolError naming the config keys (model section)
    in which the checkpoint's stored config differs from `cfg`."""
    from xpool.evaluate import checkpoint_mismatch

    path = Path(path)
    ckpt = torch_load(path, "checkpoint", "pass the best.pt or last.pt of a run, or retrain the "
                      "run (`xpool train PROFILE ... --fresh`)")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise XPoolError(f"checkpoint {path} is not an xpool run checkpoint (no 'model' state "
                         f"dict); pass the best.pt or last.pt of a run")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise XPoolError(checkpoint_mismatch(path, ckpt.get("config"), e, cfg)) from None
    return ckpt


# ----------------------------------------------------------------------------- data


def ensure_data(cfg: Config, progress: bool = True) -> None:
    """Generate the synthetic corpus when the config uses it (cached; real corpora are
    downloaded explicitly with `xpool download`)."""
    if cfg.data.corpus == "synthetic" and cfg.data.root is None:
        from xpool.data.synthetic import ensure_corpus

        ensure_corpus(cfg, progress=progress)


def load_split(cfg: Config, split: str) -> Corpus:
    """The corpus of a split. For corpora without a validation split (MSR-VTT, synthetic),
    `val` is `data.val_videos` training videos held out (fixed seed) and removed from `train`."""
    native_val = cfg.data.corpus in ("msvd", "lsmdc")
    kwargs: dict[str, Any] = {"missing": cfg.data.missing, "videos_dir": cfg.data.videos_dir}
    if cfg.data.corpus == "lsmdc":
        kwargs["captions"] = cfg.data.lsmdc_captions
    if cfg.data.corpus in ("msrvtt", "synthetic"):
        kwargs["train_list"] = cfg.data.train_list
    if split == "val" and native_val:
        return load_corpus(cfg.data.corpus, cfg.data_root, "val", **kwargs)
    if split not in ("val", "train"):
        return load_corpus(cfg.data.corpus, cfg.data_root, split, **kwargs)
    train = load_corpus(cfg.data.corpus, cfg.data_root, "train", **kwargs)
    if native_val or cfg.data.val_videos == 0:
        if split == "val":
            raise XPoolError(
                f"{cfg.data.corpus} has no validation split: set data.val_videos=N to hold out N "
                f"training videos for selection: val"
            )
        return train
    ids = train.video_ids
    if cfg.data.val_videos >= len(ids):
        raise XPoolError(f"data.val_videos={cfg.data.val_videos} >= {len(ids)} training videos")
    held = set(np.random.default_rng(0).choice(ids, cfg.data.val_videos, replace=False).tolist())
    keep = [v for v in ids if (v in held) == (split == "val")]
    return train.subset(keep)


def _frame_cache(cfg: Config, size: int):
    if not cfg.data.frame_cache:
        return None
    from xpool.data.frame_cache import FrameCache

    return FrameCache(resolve("cache") / "frames" / cfg.data.corpus, cfg.data.num_frames, size)


def build_eval_embeddings(cfg: Config, model: RetrievalModel, split: str, device: torch.device,
                          progress: bool = True) -> EvalEmbeddings:
    """Embed every video and caption of `split` (from the feature cache in frozen mode)."""
    if cfg.model.frozen:
        from xpool.features import load_features

        return load_features(cfg, split).eval_embeddings()
    from xpool.data.datasets import EvalSet, VideoClipDataset
    from xpool.data.transforms import VideoTransform

    corpus = load_split(cfg, split)
    es = EvalSet(corpus)
    bb = model.backbone
    transform = VideoTransform(bb.image_size, bb.image_mean, bb.image_std, train=False,
                               antialias=cfg.data.antialias)
    clips = VideoClipDataset([corpus.videos[v] for v in es.video_ids], transform,
                             cfg.data.num_frames, frame_cache=_frame_cache(cfg, bb.image_size),
                             rule=cfg.data.sampling_rule)
    model.eval()
    frames = embed_videos(model, clips, cfg.eval.batch_size, device, cfg.data.num_workers, progress)
    texts = embed_texts(model, es.texts, cfg.eval.batch_size, device, progress)
    return EvalEmbeddings(texts, frames, es.video_of_text, list(es.video_ids), list(es.texts))


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


def _train_dataset(cfg: Config, model: RetrievalModel):
    if cfg.model.frozen:
        from xpool.features import FeatureTrainDataset, load_features

        return FeatureTrainDataset(load_features(cfg, "train"))
    from xpool.data.datasets import TrainDataset
    from xpool.data.transforms import VideoTransform

    bb = model.backbone
    transform = VideoTransform(bb.image_size, bb.image_mean, bb.image_std,
                               train=cfg.data.train_augment, antialias=cfg.data.antialias)
    return TrainDataset(load_split(cfg, "train"), bb.tokenize, transform, cfg.data.num_frames,
                        sampling=cfg.data.train_sampling, rule=cfg.data.sampling_rule,
                        frame_cache=_frame_cache(cfg, bb.image_size), seed=cfg.train.seed)


def _collate(cfg: Config):
    if cfg.model.frozen:
        from xpool.features import collate_features

        return collate_features
    from xpool.data.datasets import collate_train

    return collate_train


# ----------------------------------------------------------------------------- optimisation


def cosine_with_warmup(total_steps: int, warmup_fraction: float, start: str = "one"):
    """LR multiplier of 0-based `step`: linear warmup over the first fraction of steps, then
    cosine to zero. `start="zero"` is Hugging Face's `get_cosine_schedule_with_warmup` (the
    authors'), whose first update has multiplier 0; `start="one"` begins at 1 / warmup."""
    warmup = int(total_steps * warmup_fraction)
    offset = 0 if start == "zero" else 1

    def factor(step: int) -> float:
        if step < warmup:
            return (step + offset) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state() -> dict[str, Any]:
    """Every RNG's state in types `torch.load(weights_only=True)` accepts (tensors, ints, str)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether training autocasts to bf16: `bf16`, or `auto` on a GPU. `fp32` (the authors'
    precision, the paper profiles' default) never does."""
    if cfg.train.precision == "bf16" and device.type != "cuda":
        raise XPoolError("train.precision=bf16 needs a GPU; use auto or fp32 on the CPU")
    return device.type == "cuda" and cfg.train.precision in ("auto", "bf16")


def _autocast(cfg: Config, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=uses_bf16(cfg, device))


def clamp_logit_scale_(logit_scale: torch.Tensor, mode: str) -> None:
    """Cap the log scale at ln 100 in place after a step. "param" is the authors' clamp (upper
    bound only); "param_and_loss" keeps this project's earlier [0, ln 100] range."""
    if mode == "param":
        logit_scale.clamp_(max=math.log(100.0))
    else:
        logit_scale.clamp_(0, math.log(100.0))


def _eval_steps(steps_per_epoch: int, evals_per_epoch: int, rule: str = "rounded") -> set[int]:
    """Steps within an epoch (1-based) after which to evaluate; always includes the last.

    "authors": their trainer evaluates after the 0-based batches
    `np.linspace(0, S - 1, n + 1, dtype=int)[1:]`, i.e. after 1-based steps one higher.
    "rounded": after 1-based steps `round(k S / n)`, k = 1..n."""
    if rule == "authors":
        marks = np.linspace(0, steps_per_epoch - 1, evals_per_epoch + 1).astype(int)[1:]
        return {int(b) + 1 for b in marks}
    n = min(evals_per_epoch, steps_per_epoch)
    return {round((k + 1) * steps_per_epoch / n) for k in range(n)}


# ----------------------------------------------------------------------------- the loop


def resume_command(cfg: Config) -> str:
    """The exact `xpool train ... --resume` command that continues the run of `cfg`: the profile
    plus an override for every key whose value differs from the profile's."""
    import yaml

    from xpool.config import load_config

    base, cur = load_config(cfg.profile).to_dict(), cfg.to_dict()
    overrides = []
    for section, values in cur.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if base[section].get(key) != value:
                text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                text = text.removesuffix("...").strip()
                overrides.append(shlex.quote(f"{section}.{key}={text}"))
    return " ".join(["xpool", "train", shlex.quote(cfg.profile), *overrides, "--resume"])


class _StopRequest:
    """SIGINT/SIGTERM handler that asks the training loop to stop at the next step boundary
    (where it saves `last.pt`); a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}

        def handler(signum: int, frame: Any) -> None:
            if self.signum is not None:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
            self.signum = signum
            print(f"\n[xpool] {signal.Signals(signum).name}: saving a checkpoint after this "
                  f"step (send it again to stop at once)", file=sys.stderr, flush=True)

        for s in self.SIGNALS:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether any process has `flag` set, so every rank stops at the same step (under DDP a
    signal can reach the ranks at different steps)."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving `last.pt`; the message holds the command
    that resumes it."""


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
        return _train(cfg, record, device, info, resume and not fresh, progress)
    finally:
        lock.release()
        cleanup_distributed()


def _train(cfg: Config, record: RunRecord, device: torch.device, info: DistInfo, resume: bool,
           progress: bool) -> RunRecord:
    t_start = time.time()
    tc = cfg.train
    if tc.batch_size % info.world_size:
        raise XPoolError(f"train.batch_size={tc.batch_size} must be divisible by the "
                         f"{info.world_size} processes")
    eval_split = "val" if tc.selection == "val" else "test"
    if info.is_main:
        ensure_data(cfg, progress)
        from xpool.preflight import preflight

        preflight(cfg, sorted({eval_split, "test"}), progress=progress)
    barrier(info)
    if cfg.model.frozen:
        from xpool.features import extract_features

        if info.is_main:
            for split in sorted({"train", eval_split, "test"}):
                extract_features(cfg, split, progress=progress)
        barrier(info)
    else:
        from xpool.pretrain import resolve_pretrained

        resolve_pretrained(cfg)  # may pretrain once; done before seeding so init never depends on it
    seed_everything(tc.seed)
    model = make_model(cfg).to(device)
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, tc.warmup_fraction, tc.warmup_start))
    objective: torch.nn.Module = ContrastiveObjective(
        model, info, cfg.model.frozen, cfg.data.num_frames,
        clamp_in_loss=tc.logit_scale_clamp == "param_and_loss")
    if info.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)

    state: dict[str, Any] = {"step": 0, "evals": [], "best_score": -1.0, "best_step": None,
                             "skipped": 0, "skipped_ids": [], "elapsed_s": 0.0}
    log = CsvLog(record.log_path, LOG_FIELDS)
    if resume and record.last_checkpoint.is_file():
        ckpt = torch_load(record.last_checkpoint, "checkpoint",
                          f"delete it and rerun with --fresh to start {record.run_dir.name} over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        if info.is_main:
            log.truncate_after(state["step"])
            for p in record.evals_dir.glob("eval_*.json"):
                if int(p.stem.split("_")[1]) > state["step"]:
                    p.unlink()
        if progress and info.is_main:
            print(f"[xpool] resuming {record.run_dir} at step {state['step']}/{total_steps}")
    elif info.is_main:
        # A fresh start: nothing of an earlier attempt may pass for this one's (a finished
        # record, or a checkpoint that --resume would continue).
        for old in (record.metrics_path, record.last_checkpoint, record.best_checkpoint):
            old.unlink(missing_ok=True)
        record.start(cfg)
        log.reset()
        for p in record.evals_dir.glob("eval_*.json"):
            p.unlink()
    barrier(info)
    # Seconds spent in earlier segments of a resumed run, so wall time adds up across resumes.
    elapsed_before = float(state.get("elapsed_s", 0.0))

    eval_at = _eval_steps(steps_per_epoch, tc.evals_per_epoch, tc.eval_steps)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {record.run_dir.name}",
               disable=not (progress and info.is_main), unit="step")
    model.train()
    t_last = time.time()
    stop = _StopRequest()
    with stop.installed():
        while state["step"] < total_steps:
            epoch, in_epoch = divmod(state["step"], steps_per_epoch)
            sampler.set_epoch(epoch, in_epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for batch in loader:
                step = state["step"] + 1
                loss_value, n_items = _train_step(cfg, model, objective, batch, optimizer, device,
                                                  step, epoch)
                scheduler.step()
                skipped = list(batch.get("skipped", []))
                state["skipped"] += len(skipped)
                state["skipped_ids"].extend(skipped)
                state["step"] = step
                now = time.time()
                if info.is_main:
                    lrs = scheduler.get_last_lr()
                    log.append({"step": step, "epoch": epoch, "loss": f"{loss_value:.6f}",
                                "lr_clip": lrs[0], "lr_new": lrs[-1],
                                "logit_scale": f"{model.logit_scale_value().item():.4f}",
                                "batch": n_items, "skipped": len(skipped),
                                "seconds": f"{now - t_last:.4f}"})
                    bar.set_postfix(loss=f"{loss_value:.3f}", vid_s=f"{n_items / max(now - t_last, 1e-9):.1f}")
                    bar.update(1)
                t_last = now
                step_in_epoch = step - epoch * steps_per_epoch
                if step_in_epoch in eval_at or step == total_steps:
                    if info.is_main:
                        _evaluate_and_select(cfg, model, record, state, device, eval_split, epoch,
                                             progress)
                    barrier(info)
                if info.is_main and (step % tc.checkpoint_every == 0 or step_in_epoch == steps_per_epoch
                                     or step == total_steps):
                    state["elapsed_s"] = elapsed_before + time.time() - t_start
                    _save_checkpoint(record.last_checkpoint, model, optimizer, scheduler, state, cfg)
                    saved = True
                else:
                    saved = False
                barrier(info)
                if step >= total_steps:
                    break
                if _any_rank(stop.signum is not None, info, device):
                    if info.is_main and not saved:
                        state["elapsed_s"] = elapsed_before + time.time() - t_start
                        _save_checkpoint(record.last_checkpoint, model, optimizer, scheduler, state,
                                         cfg)
                    barrier(info)
                    bar.close()
                    name = (signal.Signals(stop.signum).name if stop.signum
                            else "a stop on another rank")
                    message = (f"{name} at step {step}/{total_steps}: "
                               f"saved {record.last_checkpoint}; resume with `{resume_command(cfg)}`")
                    if info.is_main:
                        print(f"[xpool] {message}", file=sys.stderr, flush=True)
                    raise TrainingInterrupted(message)
    bar.close()

    if info.is_main:
        _finish(cfg, model, record, state, device, elapsed_before + time.time() - t_start,
                progress)
    barrier(info)
    return record


class ContrastiveObjective(torch.nn.Module):
    """The loss of one batch as a module, so DistributedDataParallel can wrap it.

    Embeddings are gathered from every rank before pooling, so the negatives are the global
    batch and the result does not depend on how many processes share it.
    """

    def __init__(self, model: RetrievalModel, info: DistInfo, frozen: bool, num_frames: int,
                 clamp_in_loss: bool = True):
        super().__init__()
        self.model, self.info, self.frozen = model, info, frozen
        self.num_frames = num_frames
        self.clamp_in_loss = clamp_in_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if self.frozen:
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


def _train_step(cfg: Config, model: RetrievalModel, objective: torch.nn.Module, batch: dict,
                optimizer: torch.optim.Optimizer, device: torch.device, step: int,
                epoch: int) -> tuple[float, int]:
    """One optimisation step; returns (loss, number of pairs in the global batch)."""
    tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with _autocast(cfg, device):
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


def _save_checkpoint(path: Path, model, optimizer, scheduler, state, cfg: Config) -> None:
    torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), "state": state,
                "config": cfg.to_dict()}, path)


def _evaluate_and_select(cfg: Config, model: RetrievalModel, record: RunRecord,
                         state: dict[str, Any], device: torch.device, split: str, epoch: int,
                         progress: bool) -> None:
    emb = build_eval_embeddings(cfg, model, split, device, progress=False)
    result = score(model.pooling, emb, cfg.eval, device)
    model.train()
    # The per-query ranks stay with every evaluation: checkpoint-selection rules other than the
    # run's own (xpool.protocol) are paired with other runs query by query.
    entry = {"step": state["step"], "epoch": epoch, "split": split, **result}
    write_json(record.evals_dir / f"eval_{state['step']:07d}.json", entry)
    state["evals"].append({"step": state["step"], "R1": result["t2v"]["R1"]})
    window = [e["R1"] for e in state["evals"][-cfg.train.selection_window:]]
    sel_score = float(np.mean(window))
    if progress:
        tqdm.write(f"[xpool] step {state['step']} {split}: t2v R@1 {result['t2v']['R1']:.2f} "
                   f"R@5 {result['t2v']['R5']:.2f} v2t R@1 {result['v2t']['R1']:.2f}")
    if sel_score > state["best_score"]:
        state["best_score"], state["best_step"] = sel_score, state["step"]
        torch_save({"model": model.state_dict(), "step": state["step"], "config": cfg.to_dict()},
                   record.best_checkpoint)
        if split == "test":
            _save_outputs(record, model, emb, result)


def _save_outputs(record: RunRecord, model: RetrievalModel, emb: EvalEmbeddings,
                  result: dict[str, Any]) -> None:
    """What figures and paired statistics need, small enough to keep with the run."""
    emb.save(record.run_dir / "test_embeddings.pt")
    torch_save(model.pooling.state_dict(), record.run_dir / "pooling_head.pt")
    write_json(record.run_dir / "test_ranks.json", result["ranks"])


def _finish(cfg: Config, model: RetrievalModel, record: RunRecord, state: dict[str, Any],
            device: torch.device, wall: float, progress: bool) -> None:
    if state["best_step"] is None:
        raise TrainingError(f"run {record.run_dir} finished without an evaluation")
    if cfg.train.selection == "val":
        load_model_state(model, record.best_checkpoint, cfg)
        emb = build_eval_embeddings(cfg, model, "test", device, progress=False)
        result = score(model.pooling, emb, cfg.eval, device)
        _save_outputs(record, model, emb, result)
    else:
        best = next(e for e in record.evaluations() if e["step"] == state["best_step"])
        result = best
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
        **{k: result[k] for k in ("t2v", "v2t", "t2v_dsl", "v2t_dsl") if k in result},
    }
    write_json(record.metrics_path, metrics)
    if progress:
        t2v = metrics["t2v"]
        print(f"[xpool] {record.run_dir.name}: test t2v R@1 {t2v['R1']:.2f} R@5 {t2v['R5']:.2f} "
              f"R@10 {t2v['R10']:.2f} MdR {t2v['MdR']:.1f} (selection: {cfg.train.selection}, "
              f"step {state['best_step']}, {wall:.0f} s, {state['skipped']} videos skipped)")
