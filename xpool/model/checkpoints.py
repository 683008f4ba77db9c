"""The authors' released X-Pool checkpoints (``model_best.pth``) in this project's model.

Their training code (``trainer/base_trainer.py``) saves ``{'epoch', 'state_dict', 'optimizer'}``
with ``torch.save`` from CUDA under torch 1.8. The model's state dict holds Hugging Face's
``CLIPModel`` under ``clip.`` (or OpenAI's CLIP names without ``--huggingface``) and the X-Pool
head under ``pool_frames.`` (``pool_frames.cross_attn.q_proj.weight``, ``pool_frames.linear_proj``,
``pool_frames.layer_norm1..3``). Here such a file is read with ``weights_only=True`` onto the CPU
(nothing in it is unpickled as an arbitrary object), the CLIP part is converted with
``xpool.model.hf_clip`` and the head with ``convert_authors_xpool_state_dict``; loading is strict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.model.hf_clip import convert_hf_clip_state_dict, is_hf_clip_state_dict
from xpool.model.pooling import convert_authors_xpool_state_dict

__all__ = [
    "AuthorsCheckpoint",
    "authors_clip_state",
    "is_authors_checkpoint",
    "is_authors_file",
    "load_authors_checkpoint",
    "read_authors_checkpoint",
    "state_dict_problems",
]

CLIP_PREFIX = "clip."
HEAD_PREFIX = "pool_frames."


def _model_state(obj: Any) -> dict[str, Any] | None:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    return None


def is_authors_checkpoint(obj: Any) -> bool:
    """True for a loaded ``{'state_dict': {'clip.…', 'pool_frames.…'}}`` dict (the authors' format)."""
    state = _model_state(obj)
    if not state:
        return False
    keys = [k for k in state if isinstance(k, str)]
    return (
        any(k.startswith(CLIP_PREFIX) for k in keys)
        and all(k.startswith((CLIP_PREFIX, HEAD_PREFIX)) for k in keys)
    )


def is_authors_file(path: str | Path) -> bool:
    """True when the file at ``path`` is an authors' checkpoint (read lazily, memory-mapped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return False
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file, or one weights_only refuses: not theirs
        return False
    return is_authors_checkpoint(obj)


def authors_clip_state(obj: Any, where: str = "checkpoint") -> dict[str, Tensor]:
    """The CLIP part of an authors' checkpoint with open_clip key names."""
    state = _model_state(obj)
    if state is None:
        raise XPoolError(f"{where}: not an authors' checkpoint (no 'state_dict' dict)")
    clip = {k[len(CLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    if is_hf_clip_state_dict(clip):
        return convert_hf_clip_state_dict(clip, where=f"{where} (clip.*)")
    # Without --huggingface their CLIP is OpenAI's module, whose names open_clip kept.
    return clip


@dataclass
class AuthorsCheckpoint:
    """An authors' checkpoint, converted: CLIP (open_clip names) and head (our names)."""

    path: Path
    epoch: int | None
    clip_state: dict[str, Tensor]
    head_state: dict[str, Tensor]


def read_authors_checkpoint(path: str | Path) -> AuthorsCheckpoint:
    """Read and convert an authors' ``model_best.pth`` (CUDA tensors land on the CPU).

    Raises:
        XPoolError: a missing or unreadable file, or one not in the authors' format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise XPoolError(
            f"authors' checkpoint not found: {path}. Their README links one model_best.pth per "
            "dataset (MSR-VTT 9k, MSR-VTT 7k, MSVD, LSMDC) under 'Evaluation'"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, foreign pickle, wrong format
        raise XPoolError(
            f"could not read {path} as a torch checkpoint with weights_only=True: {err}"
        ) from err
    if not is_authors_checkpoint(obj):
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise XPoolError(
            f"{path} is not an authors' X-Pool checkpoint: expected a dict with 'state_dict' "
            f"holding clip.* and pool_frames.* keys; found {found}"
        )
    state = obj["state_dict"]
    head = convert_authors_xpool_state_dict(
        {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    ) if any(k.startswith(HEAD_PREFIX) for k in state) else {}
    epoch = obj.get("epoch")
    return AuthorsCheckpoint(
        path=path,
        epoch=int(epoch) if isinstance(epoch, int) else None,
        clip_state=authors_clip_state(obj, where=str(path)),
        head_state=head,
    )


def state_dict_problems(module: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``module`` (empty if none)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "")
            problems.append(f"{label}: {shown}")
    return problems


def load_authors_checkpoint(model: nn.Module, path: str | Path) -> AuthorsCheckpoint:
    """Load an authors' checkpoint into a ``RetrievalModel`` (backbone and head), strictly.

    Raises:
        XPoolError: listing every missing, unexpected or mis-shaped key (with the file's and the
            model's shapes), or when the model has no backbone (frozen-feature mode).
    """
    ckpt = read_authors_checkpoint(path)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise XPoolError(
            f"{ckpt.path}: the authors' checkpoints fine-tune CLIP, so they need a model with a "
            "backbone: evaluate them with a paper-* profile (model.frozen=false)"
        )
    state = {f"backbone.model.{k}": v for k, v in ckpt.clip_state.items()}
    state.update({f"pooling.{k}": v for k, v in ckpt.head_state.items()})
    scale = state.get("backbone.model.logit_scale")
    if scale is not None and scale.ndim == 1 and scale.numel() == 1:
        state["backbone.model.logit_scale"] = scale.reshape(())
    problems = state_dict_problems(model, state)
    if problems:
        raise XPoolError(
            f"{ckpt.path} does not fit the configured model (model.backbone, model.pooling, "
            f"model.num_heads, model.residual): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return ckpt
