"""Contrastive image-text pretraining of the tiny CLIP on single synthetic scenes.

This stands in for CLIP's web-scale image-text pretraining (docs/architecture.md, "The synthetic
benchmark"): the tiny open_clip
model named by `model.backbone` is trained from scratch with the symmetric InfoNCE loss on images
from `SceneImageStream` and their single-scene captions (the phrases video captions are made of),
so the video study starts from an encoder that already knows the scene vocabulary.

Recipe: AdamW with linear warmup and cosine decay, batches of scenes grouped with one-attribute
variants (hard negatives), and two phases: for the first `pretrain.text_freeze` of the steps the
text tower stays at its random initialisation and only the image tower (and the logit scale)
learns; then both train. Trained jointly from the first step, the two towers agree early on to
ignore the attributes that are subtle in pixels (motion, shape) and stay stuck there.
`python -m xpool.engine.pretrain_check PROFILE` pretrains (or reuses the cache) and also reports a
frozen mean-pooling check on the video test split.

Results are cached under `pretrain.cache_dir/<key>/`, where the key hashes everything that
determines the weights (backbone name, the pretrain section, the render resolution and the
renderer version): `checkpoint.pt` (open_clip state dict, loadable with
`build_backbone(name, pretrained=<path>)`), `loss.csv`, `loss.png` and `metrics.json` (held-out
image->text and text->image retrieval, wall time). `metrics.json` (`METRICS_FILE`) is written last
and marks a complete entry; a second call with the same inputs reuses it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.synthetic import RENDERER_VERSION, SceneImageStream, held_out_scenes
from xpool.data.transforms import VideoTransform, transform_for
from xpool.determinism import STUDY_THREADS
from xpool.engine.setup import cosine_with_warmup, torch_threads
from xpool.errors import ConfigError, TrainingError, XPoolError
from xpool.exact_gemm import gemm_key, gemm_mode
from xpool.integrity import tensors_sha256
from xpool.io import atomic_write, atomic_write_text, read_json, torch_save, write_json
from xpool.losses import symmetric_infonce
from xpool.metrics import t2v_metrics
from xpool.model.backbone import ClipBackbone, build_backbone
from xpool.paths import resolve

__all__ = [
    "cache_key",
    "cache_path",
    "ensure_pretrained",
    "evaluate_held_out",
    "load_metrics",
    "resolve_pretrained",
    "verify_checkpoint",
]

# Bump when the training procedure changes, so old checkpoints are not reused.
PRETRAIN_VERSION = 1
CHECKPOINT = "checkpoint.pt"
METRICS_FILE = "metrics.json"
# The held-out set depends only on its size and the resolution (not on the training seed), so
# checkpoints trained with different seeds are scored on the same images.
HELD_OUT_SEED = 0


def cache_key(config: Config) -> str:
    """Hash of everything that determines the pretrained weights and their metrics."""
    pre = dataclasses.asdict(config.pretrain)
    pre.pop("cache_dir")  # where the cache lives does not change what is in it
    payload = {
        "backbone": config.model.backbone,
        "pretrain": pre,
        "resolution": config.synth.resolution,
        "renderer_version": RENDERER_VERSION,
        "pretrain_version": PRETRAIN_VERSION,
    }
    if config.model.gemm != "native":  # keys of native caches unchanged
        payload["gemm"] = gemm_key(config.model.gemm)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(config: Config) -> Path:
    """The cache directory of this configuration's pretrained tiny CLIP."""
    return resolve(config.pretrain.cache_dir) / cache_key(config)


def resolve_pretrained(config: Config) -> str | None:
    """What to pass to `build_backbone(..., pretrained=)`: the in-study checkpoint (trained if
    needed) when `model.pretrained` is `synthetic`, otherwise `model.pretrained` unchanged."""
    if config.model.pretrained == "synthetic":
        return str(ensure_pretrained(config))
    return config.model.pretrained


def ensure_pretrained(config: Config, progress: bool = True) -> Path:
    """The path of the pretrained checkpoint for `config`, training it first if not cached.

    A cached checkpoint is reused only if its tensors still have the sha256 recorded when it was
    trained; anything else is an XPoolError naming the cache entry.
    """
    out = cache_path(config)
    ckpt = out / CHECKPOINT
    if (out / METRICS_FILE).is_file() and ckpt.is_file():
        verify_checkpoint(out)
        return ckpt
    if config.pretrain.steps == 0:
        raise ConfigError("pretrain.steps = 0: nothing to train; use model.pretrained=null instead")
    # Callers may hold `torch.no_grad()` (feature extraction does); pretraining needs gradients.
    with torch.enable_grad():
        _pretrain(config, out, progress)
    return ckpt


# Checkpoints verified in this process (path -> (mtime_ns, size)): a study calls ensure_pretrained
# once per run, and hashing the tensors each time would be wasted work.
_VERIFIED: dict[Path, tuple[int, int]] = {}


def verify_checkpoint(out: Path) -> str:
    """Check the cached checkpoint's tensors against the sha256 in its metrics; returns it."""
    ckpt = out / CHECKPOINT
    expected = read_json(out / METRICS_FILE).get("tensors_sha256")
    if not expected:
        raise XPoolError(f"{out / METRICS_FILE} records no tensors_sha256 (made by an older xpool): "
                         f"delete {out} so that the tiny CLIP is pretrained again")
    st = ckpt.stat()
    if _VERIFIED.get(ckpt) == (st.st_mtime_ns, st.st_size):
        return expected
    actual = tensors_sha256(torch.load(ckpt, map_location="cpu", weights_only=True))
    if actual != expected:
        raise XPoolError(f"{ckpt}: its tensors' sha256 is {actual}, but {out / METRICS_FILE} records "
                         f"{expected}: the file was changed or damaged; delete {out} so that the "
                         f"tiny CLIP is pretrained again")
    _VERIFIED[ckpt] = (st.st_mtime_ns, st.st_size)
    return expected


def _transform(backbone: ClipBackbone) -> VideoTransform:
    # The engine's test-time frame transform, so pretraining sees frames exactly as the study
    # will (resize + center crop to the model's input size, CLIP normalization).
    return transform_for(backbone, train=False)


def _is_text_param(name: str) -> bool:
    """Parameters of the text tower (open_clip CLIP: everything outside `visual.` except the
    shared logit scale)."""
    name = name.removeprefix("model.")
    return not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: [image decay, image no-decay, text decay, text no-decay].

    As CLIP: no weight decay on gains, biases, embeddings and the logit scale. The text groups
    come last so the schedule can hold them still while the text tower is frozen.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
        (t, d): [] for t in (False, True) for d in (True, False)
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        groups[(_is_text_param(name), not no_decay)].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0}
        for (_, decay), params in groups.items()
    ]


def encode_text_trimmed(backbone: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`backbone.encode_text(tokens)`, computed on the positions up to the last end-of-text token.

    CLIP's text transformer is causal and pools at the end-of-text token, so the padding after
    it never influences the result: cutting it off gives the same embeddings (up to float
    rounding) at a fraction of the cost (a scene caption uses 11 of 32 positions). Falls back to
    the full computation for models that do not have that structure.
    """
    m = getattr(backbone, "model", None)
    mask = getattr(m, "attn_mask", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if (
        getattr(m, "text_pool_type", None) != "argmax"
        or mask is None
        or not all(hasattr(m, name) for name in needed)
    ):
        return backbone.encode_text(tokens)
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
    length = int(eot.max()) + 1
    cast = m.transformer.get_cast_dtype()
    x = m.token_embedding(tokens[:, :length]).to(cast)
    x = x + m.positional_embedding[:length].to(cast)
    x = m.transformer(x, attn_mask=mask[:length, :length])
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = m.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _pretrain(config: Config, out: Path, progress: bool) -> None:
    # A fixed thread count: the reductions' rounding depends on it (see xpool.determinism).
    with torch_threads(STUDY_THREADS), gemm_mode(config.model.gemm):
        start = time.perf_counter()
        torch.manual_seed(config.pretrain.seed)
        run = _setup(config)
        rows = _loop(run, config.pretrain.steps, config.pretrain.batch_size, progress)
        train_seconds = time.perf_counter() - start
        _report(config, run, rows, out, start, train_seconds, progress)


@dataclasses.dataclass
class _Pretraining:
    """What the pretraining loop works on: the model, its data, optimizer and schedule."""

    backbone: ClipBackbone
    transform: VideoTransform
    stream: SceneImageStream
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    freeze: int  # steps during which the text tower stays at its initialisation
    text_params: list[torch.nn.Parameter]


def _setup(config: Config) -> _Pretraining:
    """A randomly initialised backbone (from torch's RNG, seeded by the caller), the scene
    stream, AdamW and the two-phase schedule."""
    p = config.pretrain
    backbone = build_backbone(config.model.backbone, pretrained=None)
    backbone.train()
    transform = _transform(backbone)
    stream = SceneImageStream(config.synth.resolution, seed=p.seed, group_size=p.group_size)
    # The fused kernel is several times faster on CPU; most of the work is the 49k-row token
    # embedding, whose rows outside the scene vocabulary never get a gradient.
    opt = torch.optim.AdamW(
        _param_groups(backbone, p.weight_decay), lr=p.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    # Two phases. Trained jointly from scratch, both towers settle into ignoring the attributes
    # that are subtle in pixels (motion, shape): the text tower learns to drop words the image
    # tower cannot see yet, which removes the image tower's signal for them. Phase 1 therefore
    # trains the image tower against the frozen, randomly initialised text tower (whose outputs
    # differ for every caption); phase 2 trains both, with a fresh warmup for the text tower.
    freeze = round(p.text_freeze * p.steps)
    text_params = [q for n, q in backbone.named_parameters() if _is_text_param(n)]
    image_factor = cosine_with_warmup(p.steps, p.warmup_steps)
    text_factor = _text_schedule(image_factor, freeze, p.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [image_factor, image_factor, text_factor, text_factor]
    )
    return _Pretraining(backbone, transform, stream, opt, sched, freeze, text_params)


def _text_schedule(schedule: Callable[[int], float], freeze: int,
                   warmup: int) -> Callable[[int], float]:
    """The text tower's multiplier: 0 while frozen, then a fresh linear warmup times `schedule`."""

    def factor(s: int) -> float:
        if s < freeze:
            return 0.0
        return min(1.0, (s - freeze + 1) / max(1, warmup)) * schedule(s)

    return factor


def _loop(run: _Pretraining, steps: int, batch_size: int, progress: bool) -> list[dict[str, float]]:
    """`steps` contrastive steps; returns one row (loss, learning rates, scale) per step."""
    backbone = run.backbone
    rows: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc="pretrain tiny CLIP", unit="step", disable=not progress)
    for step in bar:
        text_trains = step >= run.freeze
        for q in run.text_params:
            q.requires_grad_(text_trains)  # frozen: no text backward at all (cheaper steps)
        images, captions = run.stream.batch(batch_size)
        x = run.transform(images)
        tokens = backbone.tokenize(captions)
        img = F.normalize(backbone.encode_images(x), dim=-1)
        with torch.set_grad_enabled(text_trains):
            txt = F.normalize(encode_text_trimmed(backbone, tokens), dim=-1)
        # Rows are texts, columns images: the loss is symmetric, so the orientation only fixes
        # which term is called t2v.
        loss = symmetric_infonce(txt @ img.T, backbone.logit_scale)
        if not torch.isfinite(loss):
            raise TrainingError(f"pretraining loss is {loss.item()} at step {step}")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        run.opt.step()
        run.sched.step()
        rows.append(
            {
                "step": step + 1,
                "loss": float(loss.item()),
                "lr": float(run.opt.param_groups[0]["lr"]),
                "text_lr": float(run.opt.param_groups[2]["lr"]),
                "logit_scale": float(backbone.logit_scale.exp().item()),
            }
        )
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
    bar.close()
    return rows


def _report(config: Config, run: _Pretraining, rows: list[dict[str, float]], out: Path,
            start: float, train_seconds: float, progress: bool) -> None:
    """Held-out retrieval, then the cache entry: checkpoint, loss curve, and `metrics.json`
    last (it marks the entry complete)."""
    p, backbone = config.pretrain, run.backbone
    backbone.eval()
    metrics = evaluate_held_out(backbone, p.eval_images, config.synth.resolution)
    metrics.update(
        {
            "backbone": config.model.backbone,
            "steps": p.steps,
            "batch_size": p.batch_size,
            "final_loss": rows[-1]["loss"],
            "final_loss_mean_last_20": float(np.mean([r["loss"] for r in rows[-20:]])),
            "train_seconds": round(train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - start, 2),
            "torch_threads": torch.get_num_threads(),
            "cache_key": cache_key(config),
            "resolution": config.synth.resolution,
            "renderer_version": RENDERER_VERSION,
            "pretrain": dataclasses.asdict(p),
            "tensors_sha256": tensors_sha256(backbone.model.state_dict()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    )
    torch_save(backbone.model.state_dict(), out / CHECKPOINT)
    _write_curve(rows, out, text_from=run.freeze)
    write_json(out / METRICS_FILE, metrics)  # last: marks the cache entry complete
    if progress:
        print(
            f"pretrained {config.model.backbone} in {train_seconds:.0f}s: held-out R@1 "
            f"image->text {metrics['i2t_R1']:.1f}%, text->image {metrics['t2i_R1']:.1f}% "
            f"(chance {metrics['chance_R1']:.2f}%) -> {out / CHECKPOINT}"
        )


@torch.no_grad()
def evaluate_held_out(
    backbone: Any, n: int, resolution: int, batch_size: int = 256
) -> dict[str, float]:
    """Image->text and text->image retrieval over `n` held-out single-scene images.

    Captions are pairwise distinct, so every image has exactly one correct caption; R@K in
    percent with ties counted against the query (xpool.metrics).
    """
    images, captions, _ = held_out_scenes(n, resolution, seed=HELD_OUT_SEED)
    transform = _transform(backbone)
    img = torch.cat(
        [
            F.normalize(backbone.encode_images(transform(images[i : i + batch_size])), dim=-1)
            for i in range(0, n, batch_size)
        ]
    )
    tokens = backbone.tokenize(captions)
    txt = torch.cat(
        [
            F.normalize(backbone.encode_text(tokens[i : i + batch_size]), dim=-1)
            for i in range(0, n, batch_size)
        ]
    )
    sims = (txt @ img.T).cpu().numpy()  # [texts, images]
    truth = np.arange(n)
    t2i = t2v_metrics(sims, truth)
    i2t = t2v_metrics(sims.T, truth)
    out: dict[str, float] = {"eval_images": n, "chance_R1": 100.0 / n}
    out.update({f"t2i_{k}": v for k, v in t2i.items()})
    out.update({f"i2t_{k}": v for k, v in i2t.items()})
    return out


def _write_curve(rows: list[dict[str, float]], out: Path, text_from: int = 0) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "loss.csv", buf.getvalue())

    # The object-oriented API (no pyplot): no global backend state, safe in any process.
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(steps, loss, lw=0.8, alpha=0.4, label="per step")
    k = max(1, len(loss) // 25)
    if len(loss) >= k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.6, label=f"mean of {k}")
    if 0 < text_from < len(rows):
        ax.axvline(text_from, color="grey", ls="--", lw=0.8, label="text tower starts training")
    ax.set_xlabel("step")
    ax.set_ylabel("symmetric InfoNCE")
    ax.set_title("tiny CLIP pretraining on synthetic scenes")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "loss.png", lambda path: fig.savefig(path, format="png", dpi=120))


def load_metrics(config: Config) -> dict[str, Any]:
    """The cached pretraining metrics of `config` (after `ensure_pretrained`)."""
    return read_json(cache_path(config) / METRICS_FILE)
