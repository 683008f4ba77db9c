"""Frame pooling heads: how a video's frame embeddings become one embedding.

The exact X-Pool head and its baselines: docs/architecture.md, "The X-Pool head".

Every head has the same call: ``forward(text_embeds [T, D], frame_embeds [V, F, D])``.
Text-agnostic heads (``text_conditioned = False``: ``mean``, ``self_attention``) return [V, D];
text-conditioned heads (``text_conditioned = True``: ``topk``, ``attention``, ``xpool``) return
[V, T, D], one pooled embedding per (video, text) pair. The similarity used for retrieval is the
cosine between the raw text embedding and the pooled embedding (see ``xpool.similarity``).

The parameter-free baselines (``mean``, ``topk``, ``attention``) work on L2-normalized frame
embeddings (and ``topk``/``attention`` on a normalized text), as in the authors' baseline code.
``xpool`` and ``self_attention`` take the raw (unnormalized) CLIP features; ``self_attention``
(CLIP4Clip's seqTransf) normalizes each frame after its transformer and residual, as CLIP4Clip.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xpool.config import POOLINGS
from xpool.errors import XPoolError

__all__ = [
    "AttentionPooling",
    "MeanPooling",
    "SelfAttentionPooling",
    "TopKPooling",
    "XPool",
    "build_pooling",
    "convert_authors_xpool_state_dict",
]

def _check_inputs(text_embeds: Tensor, frame_embeds: Tensor, embed_dim: int) -> None:
    if text_embeds.dim() != 2 or text_embeds.shape[-1] != embed_dim:
        raise XPoolError(
            f"text_embeds must be [T, {embed_dim}], got shape {tuple(text_embeds.shape)}"
        )
    if frame_embeds.dim() != 3 or frame_embeds.shape[-1] != embed_dim:
        raise XPoolError(
            f"frame_embeds must be [V, F, {embed_dim}], got shape {tuple(frame_embeds.shape)}"
        )
    if frame_embeds.shape[1] == 0:
        raise XPoolError("frame_embeds has no frames (F = 0)")


def _normalized_inputs(text_embeds: Tensor, frame_embeds: Tensor,
                       embed_dim: int) -> tuple[Tensor, Tensor]:
    """Checked inputs, L2-normalized: text [T, D] and frames [V, F, D] (the parameter-free
    text-conditioned heads work on unit vectors)."""
    _check_inputs(text_embeds, frame_embeds, embed_dim)
    return F.normalize(text_embeds, dim=-1), F.normalize(frame_embeds, dim=-1)


class MeanPooling(nn.Module):
    """Mean of the L2-normalized frame embeddings. Text-agnostic: returns [V, D]."""

    text_conditioned = False

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        _check_inputs(text_embeds, frame_embeds, self.embed_dim)
        return F.normalize(frame_embeds, dim=-1).mean(dim=1)


class QuickGELU(nn.Module):
    """CLIP's activation, ``x * sigmoid(1.702 x)`` (CLIP4Clip's seqTransf uses it too)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _SeqTransfBlock(nn.Module):
    """A pre-LN residual attention block with CLIP's parameter names (so CLIP's text layers load).

    LayerNorms use eps 1e-12: CLIP4Clip builds this block with its TF-style LayerNorm.
    No dropout anywhere, as in CLIP4Clip.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _SeqTransf(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_SeqTransfBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class SelfAttentionPooling(nn.Module):
    """CLIP4Clip's ``seqTransf`` head (Luo et al. 2022, ``modules/modeling.py``). Text-agnostic.

    ``x = frames + frame_position_embeddings[:F]``; ``x = transformer(x) + frames`` (residual to
    the input frames); each frame L2-normalised, then averaged over frames. Returns [V, D].
    The transformer is CLIP's residual attention block (pre-LN, QuickGELU MLP of width 4D, no
    dropout, every frame attends to every frame). Parameter names are CLIP4Clip's
    (``frame_position_embeddings``, ``transformerClip.resblocks.N...``), so its checkpoints load.

    Initialisation: CLIP4Clip's ``init_weights`` (normal std 0.02 for Linear and Embedding
    weights, zero biases, unit LayerNorms) by default; ``init_from_clip_text`` then copies CLIP's
    text transformer layers and position embedding, which is what CLIP4Clip trains from.
    """

    text_conditioned = False

    def __init__(
        self,
        embed_dim: int,
        num_layers: int = 4,
        num_heads: int = 8,
        max_frames: int = 77,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise XPoolError(
                f"self_attention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.max_frames = max_frames
        self.frame_position_embeddings = nn.Embedding(max_frames, embed_dim)
        self.transformerClip = _SeqTransf(embed_dim, num_layers, num_heads)
        self.initialised_from = "random"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP4Clip's ``PreTrainedModel.init_weights`` applied to this head."""
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()  # torch's own init of the packed in-projection
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.initialised_from = "random"

    @torch.no_grad()
    def init_from_clip_text(self, clip_model: nn.Module) -> None:
        """Copy CLIP's text position embedding and first text layers, as CLIP4Clip does.

        ``clip_model`` is an open_clip CLIP (``positional_embedding``, ``transformer.resblocks``).
        Position rows beyond CLIP's context length, and layers beyond its text depth, keep their
        init_weights values (CLIP4Clip copies layers ``< cross_num_hidden_layers`` the same way).

        Raises:
            XPoolError: if the text transformer's width or head count differs from this head's.
        """
        pos = getattr(clip_model, "positional_embedding", None)
        blocks = getattr(getattr(clip_model, "transformer", None), "resblocks", None)
        if pos is None or blocks is None:
            raise XPoolError(
                "self_attention: sa_init=clip_text needs a CLIP model with a text transformer "
                "(positional_embedding, transformer.resblocks); use model.sa_init=random"
            )
        width = pos.shape[1]
        heads = blocks[0].attn.num_heads
        if width != self.embed_dim or heads != self.num_heads:
            raise XPoolError(
                f"self_attention: CLIP's text transformer has width {width} and {heads} heads, the "
                f"head has embed_dim {self.embed_dim} and {self.num_heads} heads; set "
                f"model.sa_heads={heads} (and a backbone whose text width equals its embed_dim) "
                "or model.sa_init=random"
            )
        rows = min(self.max_frames, pos.shape[0])
        self.frame_position_embeddings.weight[:rows].copy_(pos[:rows])
        for i in range(min(self.num_layers, len(blocks))):
            src = {k: v for k, v in blocks[i].state_dict().items()
                   if not k.startswith(("ls_1", "ls_2"))}
            extra = [k for k in blocks[i].state_dict() if k.startswith(("ls_1", "ls_2"))]
            if extra:
                raise XPoolError(f"self_attention: CLIP's text layer {i} has layer scale {extra}, "
                                 "which CLIP4Clip's block does not have")
            self.transformerClip.resblocks[i].load_state_dict(src, strict=True)
        self.initialised_from = "clip_text"

    def forward(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        _check_inputs(text_embeds, frame_embeds, self.embed_dim)
        num_frames = frame_embeds.shape[1]
        if num_frames > self.max_frames:
            raise XPoolError(
                f"self_attention: {num_frames} frames exceed max_frames={self.max_frames}; "
                "build the head with a larger max_frames"
            )
        pos = self.frame_position_embeddings.weight[:num_frames].to(frame_embeds.dtype)
        x = self.transformerClip(frame_embeds + pos) + frame_embeds
        return F.normalize(x, dim=-1).mean(dim=1)


class TopKPooling(nn.Module):
    """Per (text, video): mean of the k normalized frames most cosine-similar to the text.

    Parameter-free and text-conditioned: returns [V, T, D]. With fewer than k frames, all frames
    are used.
    """

    text_conditioned = True

    def __init__(self, embed_dim: int, k: int = 3) -> None:
        super().__init__()
        if int(k) < 1:
            raise XPoolError(f"topk: k must be >= 1, got {k}")
        self.embed_dim = embed_dim
        self.k = int(k)

    def forward(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        t, e = _normalized_inputs(text_embeds, frame_embeds, self.embed_dim)
        k = min(self.k, e.shape[1])
        sims = torch.einsum("vfd,td->vtf", e, t)
        idx = sims.topk(k, dim=-1).indices  # [V, T, k]
        num_videos, num_texts = idx.shape[:2]
        # Gather the chosen frames per pair: [V, T, k, D].
        chosen = torch.gather(
            e.unsqueeze(1).expand(num_videos, num_texts, -1, -1),
            2,
            idx.unsqueeze(-1).expand(-1, -1, -1, e.shape[-1]),
        )
        return chosen.mean(dim=2)


class AttentionPooling(nn.Module):
    """Parameter-free attention: frames weighted by softmax_f(cos(t, e_f) / temperature).

    Text-conditioned: returns [V, T, D] (weighted sums of the normalized frames).
    """

    text_conditioned = True

    def __init__(self, embed_dim: int, temperature: float = 0.01) -> None:
        super().__init__()
        if not float(temperature) > 0.0:
            raise XPoolError(f"attention: temperature must be > 0, got {temperature}")
        self.embed_dim = embed_dim
        self.temperature = float(temperature)

    def forward(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        t, e = _normalized_inputs(text_embeds, frame_embeds, self.embed_dim)
        weights = torch.softmax(torch.einsum("vfd,td->vtf", e, t) / self.temperature, dim=-1)
        return torch.bmm(weights, e)


class XPool(nn.Module):
    """X-Pool: text-conditioned cross-attention pooling (Gorti et al., CVPR 2022).

    Exactly as in docs/architecture.md, "The X-Pool head"::

        t' = layer_norm1(t), e' = layer_norm1(e)
        q = q_proj(t'), k = k_proj(e'), v = v_proj(e')          # num_heads heads of D/num_heads
        a = softmax_f(q . k_f / sqrt(D/num_heads))               # per head
        o = out_proj(concat_heads(sum_f a_f v_f))
        y = layer_norm2(o)
        z = layer_norm3(y + dropout(linear_proj(y)))             # residual FC
        output: z, one vector per (video, text) pair: [V, T, D]

    All five Linear layers start as the identity with zero bias, as in the authors' code.

    ``residual=False`` is the ablation "without the residual FC": the whole block after
    ``layer_norm2`` is removed, so the output is ``y = layer_norm2(o)`` and the head has no
    ``linear_proj``, ``dropout`` or ``layer_norm3`` (those attributes are ``None``, so every
    parameter the head owns is used and receives a gradient).
    """

    text_conditioned = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        dropout: float = 0.3,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads != 0:
            raise XPoolError(
                f"xpool: embed_dim {embed_dim} must be divisible by num_heads {num_heads}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise XPoolError(f"xpool: dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.num_heads = int(num_heads)
        self.head_dim = embed_dim // self.num_heads
        self.residual = bool(residual)

        self.layer_norm1 = nn.LayerNorm(embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.layer_norm2 = nn.LayerNorm(embed_dim)
        self.linear_proj: nn.Linear | None
        self.dropout: nn.Dropout | None
        self.layer_norm3: nn.LayerNorm | None
        if self.residual:
            self.linear_proj = nn.Linear(embed_dim, embed_dim)
            self.dropout = nn.Dropout(float(dropout))
            self.layer_norm3 = nn.LayerNorm(embed_dim)
        else:
            self.linear_proj = None
            self.dropout = None
            self.layer_norm3 = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity weights and zero biases for the Linear layers, default LayerNorms."""
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear_proj):
            if layer is not None:
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)
        for norm in (self.layer_norm1, self.layer_norm2, self.layer_norm3):
            if norm is not None:
                norm.reset_parameters()

    def attention_weights(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        """Attention of every text over every video's frames, per head: [V, T, H, F]."""
        _check_inputs(text_embeds, frame_embeds, self.embed_dim)
        t = self.layer_norm1(text_embeds)
        e = self.layer_norm1(frame_embeds)
        return self._attention(t, e)[0]

    def _attention(self, t: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        num_texts = t.shape[0]
        num_videos, num_frames, _ = e.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(t).view(num_texts, heads, hd)
        k = self.k_proj(e).view(num_videos, num_frames, heads, hd)
        v = self.v_proj(e).view(num_videos, num_frames, heads, hd)
        logits = torch.einsum("thd,vfhd->vthf", q, k) / math.sqrt(hd)
        attn = torch.softmax(logits, dim=-1)  # [V, T, H, F]
        pooled = torch.einsum("vthf,vfhd->vthd", attn, v)
        return attn, pooled.reshape(num_videos, num_texts, self.embed_dim)

    def forward(
        self, text_embeds: Tensor, frame_embeds: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool [V, F, D] frames for every text: returns [V, T, D].

        With ``return_attention=True`` also returns the attention weights averaged over heads,
        [V, T, F] (each row sums to 1); use ``attention_weights`` for the per-head [V, T, H, F].
        """
        _check_inputs(text_embeds, frame_embeds, self.embed_dim)
        t = self.layer_norm1(text_embeds)
        e = self.layer_norm1(frame_embeds)
        attn, pooled = self._attention(t, e)
        y = self.layer_norm2(self.out_proj(pooled))
        if self.residual:
            assert self.linear_proj is not None and self.dropout is not None
            assert self.layer_norm3 is not None
            y = self.layer_norm3(y + self.dropout(self.linear_proj(y)))
        if return_attention:
            return y, attn.mean(dim=2)
        return y


_POOLING_CLASSES: dict[str, type[nn.Module]] = {
    "mean": MeanPooling,
    "self_attention": SelfAttentionPooling,
    "topk": TopKPooling,
    "attention": AttentionPooling,
    "xpool": XPool,
}

_POOLING_OPTIONS: dict[str, tuple[str, ...]] = {
    "mean": (),
    "self_attention": ("num_layers", "num_heads", "max_frames"),
    "topk": ("k",),
    "attention": ("temperature",),
    "xpool": ("num_heads", "dropout", "residual"),
}


def build_pooling(name: str, embed_dim: int, **options: Any) -> nn.Module:
    """Build a pooling head by name (one of ``xpool.config.POOLINGS``) with its options.

    Options: ``xpool``: num_heads=1, dropout=0.3, residual=True; ``self_attention``:
    num_layers=4, num_heads=8, max_frames=77; ``topk``: k=3; ``attention``:
    temperature=0.01; ``mean``: none.

    Raises:
        XPoolError: for an unknown name or option (naming the valid ones).
    """
    if name not in _POOLING_CLASSES:
        raise XPoolError(f"unknown pooling {name!r}; valid names: {', '.join(POOLINGS)}")
    valid = _POOLING_OPTIONS[name]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise XPoolError(
            f"unknown option(s) {', '.join(unknown)} for pooling {name!r}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    if not isinstance(embed_dim, int) or embed_dim < 1:
        raise XPoolError(f"embed_dim must be a positive integer, got {embed_dim!r}")
    return _POOLING_CLASSES[name](embed_dim, **options)


def convert_authors_xpool_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map the authors' X-Pool head keys (``pool_frames.cross_attn.q_proj.weight``, ...) to ours.

    Accepts either a whole authors' model state dict (keys under ``pool_frames.``) or the head's
    own; keys outside the head are dropped.
    """
    prefix = "pool_frames."
    has_prefix = any(key.startswith(prefix) for key in state_dict)
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if has_prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :]
        if key.startswith("cross_attn."):
            key = key[len("cross_attn.") :]
        converted[key] = value
    return converted
