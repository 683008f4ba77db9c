"""Hugging Face ``CLIPModel`` weights -> this project's open_clip CLIP (QuickGELU).

The authors' X-Pool code and many users' caches hold CLIP as Hugging Face transformers'
``CLIPModel`` (``openai/clip-vit-base-patch32``). Both implementations compute the same function;
only the parameter layout differs:

- the projections are ``nn.Linear`` weights in HF ([out, in]) and plain matrices applied on the
  right in open_clip ([in, out]), so they are transposed;
- HF keeps separate q/k/v projections, open_clip one packed ``in_proj`` (q, k, v in that order);
- layer and norm names differ (``layer_norm1`` -> ``ln_1``, ``mlp.fc1`` -> ``mlp.c_fc``, ...);
- older transformers versions (4.6.1, which the authors used) store ``position_ids`` buffers,
  which carry no weights and are dropped.

Nothing here imports transformers: a folder or a state dict is read with safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xpool.errors import XPoolError

__all__ = [
    "convert_hf_clip_state_dict",
    "hf_folder_weights",
    "is_hf_clip_state_dict",
    "open_clip_config_from_hf",
    "open_clip_to_hf_state_dict",
    "read_hf_clip_folder",
]

_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
# Per-layer names inside one residual block (q/k/v are packed separately).
_BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def is_hf_clip_state_dict(state: dict[str, Any]) -> bool:
    """True when ``state`` uses Hugging Face CLIPModel key names."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in state)


def convert_hf_clip_state_dict(state: dict[str, Tensor], where: str = "state dict") -> dict[str, Tensor]:
    """Convert a Hugging Face ``CLIPModel`` state dict to open_clip ``CLIP`` key names and layout.

    Raises:
        XPoolError: a key that is not part of a CLIP ViT model (all such keys are listed), or a
            layer whose q, k or v projection is missing.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in _DROPPED:
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _LAYER.match(key)
        if m is None:
            unknown.append(key)
            continue
        tower, idx, rest = m.groups()
        prefix = ("visual." if tower == "vision" else "") + f"transformer.resblocks.{idx}."
        qm = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qm:
            qkv.setdefault((prefix, qm.group(2), tower), {})[qm.group(1)] = value
        elif rest in _BLOCK:
            out[prefix + _BLOCK[rest]] = value
        else:
            unknown.append(key)
    if unknown:
        raise XPoolError(
            f"{where}: {len(unknown)} key(s) are not part of a Hugging Face CLIP ViT model: "
            f"{', '.join(sorted(unknown)[:20])}{' ...' if len(unknown) > 20 else ''}"
        )
    for (prefix, kind, _tower), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise XPoolError(
                f"{where}: layer {prefix!r} lacks the {', '.join(missing)} projection {kind}"
            )
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def open_clip_config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)
    equivalent to a Hugging Face ``CLIPConfig`` (as a dict, e.g. a ``config.json``)."""
    try:
        v, t = config["vision_config"], config["text_config"]
        width_v, width_t = int(v["hidden_size"]), int(t["hidden_size"])
        act = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
        if act != {"quick_gelu"}:
            raise XPoolError(f"HF CLIP config with activation {sorted(act)}; only quick_gelu is supported")
        return {
            "embed_dim": int(config.get("projection_dim", 512)),
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": int(v["image_size"]),
                "layers": int(v["num_hidden_layers"]),
                "width": width_v,
                "head_width": width_v // int(v["num_attention_heads"]),
                "mlp_ratio": int(v["intermediate_size"]) / width_v,
                "patch_size": int(v["patch_size"]),
            },
            "text_cfg": {
                "context_length": int(t.get("max_position_embeddings", 77)),
                "vocab_size": int(t.get("vocab_size", 49408)),
                "width": width_t,
                "heads": int(t["num_attention_heads"]),
                "layers": int(t["num_hidden_layers"]),
                "mlp_ratio": int(t["intermediate_size"]) / width_t,
            },
        }
    except KeyError as err:
        raise XPoolError(f"Hugging Face CLIP config lacks the key {err}") from err


def hf_folder_weights(folder: Path) -> Path | None:
    """The weights file of a Hugging Face model folder (safetensors first), or None."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_hf_clip_folder(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a Hugging Face ``CLIPModel`` folder: (open_clip state dict, HF config dict).

    Raises:
        XPoolError: no weights file or no ``config.json``, or keys that are not CLIP's.
    """
    folder = Path(folder).expanduser()
    weights = hf_folder_weights(folder)
    if weights is None:
        raise XPoolError(
            f"{folder} is not a Hugging Face model folder: it has neither model.safetensors nor "
            "pytorch_model.bin (e.g. the openai/clip-vit-base-patch32 snapshot from the HF cache)"
        )
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights), device="cpu")
    else:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if not is_hf_clip_state_dict(state):
        raise XPoolError(f"{weights} does not hold a Hugging Face CLIPModel (no text_model.* keys)")
    return convert_hf_clip_state_dict(state, where=str(weights)), config


def open_clip_to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``convert_hf_clip_state_dict``: open_clip CLIP keys -> HF ``CLIPModel``.

    For writing test checkpoints in the authors' format without transformers installed.
    """
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            m = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", key)
            if m is None:
                raise XPoolError(f"open_clip key {key!r} has no Hugging Face CLIP counterpart")
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
            elif rest in block:
                out[prefix + block[rest]] = value
            else:
                raise XPoolError(f"open_clip key {key!r} has no Hugging Face CLIP counterpart")
    return out
