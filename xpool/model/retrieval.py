"""The retrieval model: CLIP backbone (or cached features) + a pooling head + a logit scale."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xpool.errors import XPoolError
from xpool.model.backbone import ClipBackbone

__all__ = ["MAX_LOGIT_SCALE", "RetrievalModel"]

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the temperature-inverse (exp of the logit scale) at 100


class RetrievalModel(nn.Module):
    """Text-video retrieval: ``sims[t, v] = cos(text_t, pool(text_t, frames_v))``.

    With a backbone, texts and frames are encoded by CLIP and the logit scale is CLIP's own
    learnable parameter. With ``backbone=None`` (frozen-feature mode) the model works on cached
    CLIP features: only the pooling head and the model's own ``logit_scale`` parameter
    (initialised to log(1/0.07), like CLIP) are trained.
    """

    def __init__(
        self,
        backbone: ClipBackbone | None,
        pooling: nn.Module,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        head_dim = getattr(pooling, "embed_dim", None)
        if backbone is not None:
            if embed_dim is not None and embed_dim != backbone.embed_dim:
                raise XPoolError(
                    f"embed_dim {embed_dim} differs from the backbone's {backbone.embed_dim}"
                )
            embed_dim = backbone.embed_dim
        else:
            embed_dim = embed_dim if embed_dim is not None else head_dim
            if embed_dim is None:
                raise XPoolError("frozen-feature mode (backbone=None) needs embed_dim")
            self.register_parameter("logit_scale", nn.Parameter(torch.tensor(math.log(1 / 0.07))))
        if head_dim is not None and head_dim != embed_dim:
            raise XPoolError(f"pooling head has embed_dim {head_dim}, the model {embed_dim}")
        self.embed_dim = int(embed_dim)

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable log scale: CLIP's with a backbone, the model's own without."""
        if self.backbone is not None:
            return self.backbone.logit_scale
        try:
            return self._parameters["logit_scale"]
        except KeyError:
            raise AttributeError("logit_scale") from None

    @property
    def frozen(self) -> bool:
        """True in frozen-feature mode (no backbone)."""
        return self.backbone is None

    def _need_backbone(self, what: str) -> ClipBackbone:
        if self.backbone is None:
            raise XPoolError(
                f"{what} needs a CLIP backbone; this model is in frozen-feature mode: pass cached "
                "text and frame embeddings to pairwise_similarity instead"
            )
        return self.backbone

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Text embeddings [T, D] (not normalized)."""
        return self._need_backbone("encode_text").encode_text(tokens)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Frame embeddings [B, F, D] (not normalized) of frames [B, F, 3, H, W]."""
        return self._need_backbone("encode_frames").encode_frames(frames)

    def pairwise_similarity(self, text_embeds: Tensor, frame_embeds: Tensor) -> Tensor:
        """Cosine similarities [T, V] via the head's forward: pool, L2-normalize, dot.

        This is the plain differentiable path used in training (dropout active in train mode).
        For large evaluation sets use ``xpool.similarity.similarity_matrix``.
        """
        pooled = self.pooling(text_embeds, frame_embeds)
        t = F.normalize(text_embeds, dim=-1)
        if self.pooling.text_conditioned:
            return torch.einsum("vtd,td->tv", F.normalize(pooled, dim=-1), t)
        return t @ F.normalize(pooled, dim=-1).T

    def forward(self, tokens: Tensor, frames: Tensor) -> Tensor:
        """Cosine similarities [T, V] of tokenized captions against videos' frames."""
        return self.pairwise_similarity(self.encode_text(tokens), self.encode_frames(frames))

    def logit_scale_value(self) -> Tensor:
        """exp(logit_scale), clamped at 100 like CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def param_groups(
        self,
        lr_clip: float,
        lr_new: float,
        weight_decay: float,
        exclude_1d_from_decay: bool = True,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: CLIP parameters at ``lr_clip``, new ones at ``lr_new``.

        CLIP parameters are the backbone's, including its logit scale. New parameters are the
        pooling head's; in frozen-feature mode the model's own logit scale is new too (there is
        no CLIP group). With ``exclude_1d_from_decay`` (the usual CLIP fine-tuning rule),
        parameters with fewer than 2 dimensions (biases, LayerNorm gains and biases, the logit
        scale, class embeddings) get weight decay 0. The authors' X-Pool code decays every
        parameter; pass ``exclude_1d_from_decay=False`` to match it. Empty groups are left out;
        each group has a ``name`` key (``clip``, ``clip_no_decay``, ``new``, ``new_no_decay``).
        """
        clip_params: list[tuple[str, nn.Parameter]] = []
        new_params: list[tuple[str, nn.Parameter]] = []
        clip_ids: set[int] = set()
        if self.backbone is not None:
            for name, p in self.backbone.named_parameters():
                clip_params.append((name, p))
                clip_ids.add(id(p))
        for name, p in self.named_parameters():
            if id(p) not in clip_ids:
                new_params.append((name, p))

        groups: list[dict[str, Any]] = []
        for label, params, lr in (("clip", clip_params, lr_clip), ("new", new_params, lr_new)):
            trainable = [p for _, p in params if p.requires_grad]
            skip_decay = [exclude_1d_from_decay and p.ndim < 2 for p in trainable]
            decay = [p for p, skip in zip(trainable, skip_decay, strict=True) if not skip]
            no_decay = [p for p, skip in zip(trainable, skip_decay, strict=True) if skip]
            if decay:
                groups.append(
                    {"name": label, "params": decay, "lr": lr, "weight_decay": weight_decay}
                )
            if no_decay:
                groups.append(
                    {"name": f"{label}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
                )
        return groups

