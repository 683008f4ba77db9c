"""CLIP backbone: an open_clip model with the few operations the retrieval model needs.

Importing this module registers the project's tiny open_clip configs (``xpool/model/configs``):

- ``xpool-tiny``: open_clip's ModifiedResNet image tower (64 px, one bottleneck block per stage,
  stem width 16, attention pooling) and a 2-layer text transformer (width 128, 4 heads, 32 tokens,
  CLIP's 49,408-token BPE vocabulary), embed_dim 128. Pretrains contrastively on 2 CPU cores in
  about 80 s (150-250 s with the embedded profile's exact GEMM, by CPU). A ViT tower of the same cost did not
  learn shape and motion within that budget; the convolutional stem did. The tower has BatchNorm, which in
  training normalises over all frames of the batch.
- ``xpool-mini``: ``xpool-tiny`` with half its image-tower width (stem width 8), for the
  ``embedded-quick`` profile: its exact-GEMM pretraining steps cost about half as much.
- ``xpool-smoke``: a ViT tower at 32 px (patch 8, width 64, 2 layers), embed_dim 64, for tests.

All use open_clip's own tokenizer (``open_clip.get_tokenizer``), which ships its vocabulary with
the package, so nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.model.checkpoints import authors_clip_state, is_authors_checkpoint
from xpool.model.hf_clip import (
    convert_hf_clip_state_dict,
    hf_folder_weights,
    is_hf_clip_state_dict,
    read_hf_clip_folder,
)

__all__ = ["CONFIG_DIR", "TINY_MODELS", "ClipBackbone", "build_backbone"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_MODELS = ("xpool-tiny", "xpool-mini", "xpool-smoke")

open_clip.add_model_config(CONFIG_DIR)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class ClipBackbone(nn.Module):
    """An open_clip CLIP model with text/frame encoders, its tokenizer and preprocessing settings.

    Attributes:
        model: the wrapped open_clip model (its state dict is what ``build_backbone`` loads).
        model_name: the open_clip architecture name.
        embed_dim: size of the joint embedding space.
        image_size: input side in pixels (square).
        image_mean, image_std: per-channel normalization the image tower expects.
        context_length: token sequence length.
    """

    def __init__(self, model: nn.Module, model_name: str) -> None:
        super().__init__()
        self.model = model
        self.model_name = model_name
        visual = model.visual
        self.embed_dim = int(getattr(visual, "output_dim", 0) or _probe_embed_dim(model))
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, Sequence) else size)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.image_mean = tuple(float(x) for x in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.image_std = tuple(float(x) for x in cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.context_length = int(getattr(model, "context_length", 77))
        self._tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learnable log temperature (a parameter of ``model``)."""
        return self.model.logit_scale

    def tokenize(self, texts: Sequence[str] | str) -> Tensor:
        """Tokenize captions with CLIP's BPE tokenizer: LongTensor [N, context_length].

        Captions longer than the context are truncated (keeping the end-of-text token).
        """
        if isinstance(texts, str):
            texts = [texts]
        tokens = self._tokenizer(list(texts))
        return tokens.to(device=self.logit_scale.device, dtype=torch.long)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Text embeddings [T, D] (not normalized)."""
        if tokens.dim() != 2:
            raise XPoolError(f"tokens must be [T, L], got shape {tuple(tokens.shape)}")
        return self.model.encode_text(tokens)

    def encode_images(self, images: Tensor) -> Tensor:
        """Image embeddings [N, D] (not normalized) of normalized images [N, 3, H, W]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise XPoolError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
        return self.model.encode_image(images)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Frame embeddings [B, F, D] (not normalized) of frames [B, F, 3, H, W].

        All B*F frames go through the image tower as one batch.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise XPoolError(f"frames must be [B, F, 3, H, W], got shape {tuple(frames.shape)}")
        batch, num_frames = frames.shape[:2]
        flat = self.encode_images(frames.reshape(batch * num_frames, *frames.shape[2:]))
        return flat.view(batch, num_frames, -1)

    def forward(self, tokens: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(text embeddings [T, D], frame embeddings [B, F, D])."""
        return self.encode_text(tokens), self.encode_frames(frames)


def _probe_embed_dim(model: nn.Module) -> int:
    with torch.no_grad():
        return int(model.encode_text(torch.zeros(1, 8, dtype=torch.long)).shape[-1])


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on every random init; for tiny in-study models that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _is_torchscript(path: Path) -> bool:
    """OpenAI's released CLIP checkpoints are TorchScript archives (zip with a code/ folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _read_state_dict(path: Path) -> tuple[dict[str, Tensor], bool]:
    """(open_clip state dict, whether the weights are OpenAI's QuickGELU CLIP family).

    Reads OpenAI's TorchScript files, open_clip or ``ClipBackbone`` state dicts, Hugging Face
    ``CLIPModel`` weights (a model folder or its weights file) and the authors' X-Pool
    checkpoints (``{'epoch', 'state_dict', 'optimizer'}`` with ``clip.`` keys).
    """
    if path.is_dir():
        return read_hf_clip_folder(path)[0], True
    if _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return state, True
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
        if is_authors_checkpoint(obj):
            return authors_clip_state(obj, where=str(path)), True
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict):
            raise XPoolError(f"{path} does not hold a state dict (found {type(obj).__name__})")
        state = dict(obj)
    # Accept DDP ("module.") and ClipBackbone ("model.") prefixes as well as bare open_clip keys.
    for prefix in ("module.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    if is_hf_clip_state_dict(state):
        return convert_hf_clip_state_dict(state, where=str(path)), True
    return state, False


def _load_local_checkpoint(model: nn.Module, path: Path, state: dict[str, Tensor]) -> None:
    try:
        scale = state.get("logit_scale")
        if scale is not None and scale.ndim != model.logit_scale.ndim:
            state["logit_scale"] = scale.reshape(model.logit_scale.shape)
        model.load_state_dict(state, strict=True)
    except XPoolError:
        raise
    except Exception as err:  # any loader failure becomes one clear message
        raise XPoolError(
            f"could not load the CLIP checkpoint {path} into {type(model).__name__}: {err}"
        ) from err


def build_backbone(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    cache_dir: str | None = None,
    quick_gelu: bool | None = None,
) -> ClipBackbone:
    """Build an open_clip CLIP backbone.

    Args:
        model_name: any open_clip architecture (``ViT-B-32``) or a tiny project config
            (``xpool-tiny``, ``xpool-mini``, ``xpool-smoke``).
        pretrained: an open_clip tag (``openai``), a path to a local checkpoint (OpenAI's
            TorchScript release, an open_clip state dict, a saved ``ClipBackbone`` state dict, a
            Hugging Face ``CLIPModel`` folder with ``model.safetensors`` or
            ``pytorch_model.bin``, or one of the authors' X-Pool checkpoints, whose CLIP part is
            used), or ``None`` for random initialisation.
        cache_dir: where open_clip caches downloads.
        quick_gelu: use QuickGELU activations (what OpenAI's CLIP was trained with). ``None``
            decides automatically: on for tags trained with it (``openai``), for OpenAI's
            TorchScript files and for Hugging Face / authors' weights, off otherwise.

    Raises:
        XPoolError: unknown architecture or tag, a missing or unreadable checkpoint file, or a
            download that failed (the message names the ``model.pretrained`` option to use).
    """
    if model_name not in open_clip.list_models():
        raise XPoolError(
            f"unknown open_clip model {model_name!r}; tiny project configs: "
            f"{', '.join(TINY_MODELS)}; see open_clip.list_models() for the others"
        )
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none", "null"):
        pretrained = None

    if pretrained is None:
        with _quiet_random_init():
            model = open_clip.create_model(
                model_name, pretrained=None, force_quick_gelu=bool(quick_gelu)
            )
        return ClipBackbone(model, model_name)

    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_cfg:
        gelu = bool(tag_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
        try:
            model = open_clip.create_model(
                model_name, pretrained=pretrained, cache_dir=cache_dir, force_quick_gelu=gelu
            )
        except Exception as err:  # network, checksum and hub errors alike
            raise XPoolError(
                f"could not download the pretrained CLIP weights {pretrained!r} for {model_name} "
                f"(download failed: {err}). Without network access, fetch the checkpoint on "
                f"another machine and point to the file with "
                f"model.pretrained=/path/to/{model_name}.pt"
            ) from err
        return ClipBackbone(model, model_name)

    if not _looks_like_path(pretrained) and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise XPoolError(
            f"unknown pretrained tag {pretrained!r} for {model_name}; known tags: "
            f"{', '.join(tags) if tags else '(none)'}; or give a local checkpoint with "
            f"model.pretrained=/path/to/{model_name}.pt"
        )
    path = Path(pretrained).expanduser()
    if path.is_dir() and hf_folder_weights(path) is None:
        raise XPoolError(
            f"{path} is a folder without model.safetensors or pytorch_model.bin; model.pretrained "
            "takes a Hugging Face CLIPModel folder, a checkpoint file or a tag such as openai"
        )
    if not path.exists():
        raise XPoolError(
            f"CLIP checkpoint file not found: {path}. Point model.pretrained=/path/to/"
            f"{model_name}.pt at an existing file, or use a tag such as model.pretrained=openai "
            "where the weights can be downloaded"
        )
    try:
        state, openai_family = _read_state_dict(path)
    except XPoolError:
        raise
    except Exception as err:  # unreadable, truncated or foreign files alike
        raise XPoolError(f"could not read the CLIP checkpoint {path}: {err}") from err
    gelu = openai_family if quick_gelu is None else quick_gelu
    with _quiet_random_init():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=gelu)
    _load_local_checkpoint(model, path, state)
    return ClipBackbone(model, model_name)
