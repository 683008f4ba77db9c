"""Symmetric InfoNCE over an in-batch text-video similarity matrix (CLIP / X-Pool training loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xpool.errors import XPoolError
from xpool.model.retrieval import MAX_LOGIT_SCALE

__all__ = ["symmetric_infonce"]


def symmetric_infonce(
    sims: Tensor,
    logit_scale: Tensor,
    offset: int = 0,
    sims_v2t: Tensor | None = None,
    clamp_in_loss: bool = True,
) -> Tensor:
    """Mean of the text-to-video and video-to-text cross-entropies; positives on the diagonal.

    Args:
        sims: cosine similarities, [B, B] (texts x videos, pair i = (text i, video i)), or in DDP
            [B_local, B_global]: this rank's texts against the videos of all ranks, where local
            text i's positive is column ``offset + i``. Works for any pooling head: for
            text-conditioned heads ``sims`` comes from ``RetrievalModel.pairwise_similarity``
            like for the others.
        logit_scale: CLIP's *log* scale (the learnable parameter, e.g. ``model.logit_scale``);
            the logits are ``sims * exp(logit_scale)``, or ``sims * min(exp(logit_scale), 100)``
            with ``clamp_in_loss``.
        offset: column of local row 0's positive (this rank's start in the gathered batch).
        sims_v2t: DDP only, [B_local, B_global]: this rank's videos (rows) against the texts of
            all ranks (for X-Pool: ``pairwise_similarity(all_texts, local_frames).T``). With it
            both directions use the whole global batch as negatives, and averaging the ranks'
            losses gives the full-batch loss (the open_clip gather scheme). Without it, the
            video-to-text term of a non-square ``sims`` uses the local block only: local video
            ``offset + i`` against this rank's B_local texts.
        clamp_in_loss: also cap the scale at 100 here. The authors do not: they clamp the
            parameter after each optimizer step (``xpool.engine.train.clamp_logit_scale_``), so
            at the cap the scale keeps a non-zero gradient. Clamping here zeroes it above 100.

    Returns:
        scalar loss.
    """
    if sims.dim() != 2:
        raise XPoolError(f"sims must be a 2-D matrix, got shape {tuple(sims.shape)}")
    rows, cols = sims.shape
    if rows == 0:
        raise XPoolError("sims is empty")
    if offset < 0 or offset + rows > cols:
        raise XPoolError(
            f"positives at columns {offset}..{offset + rows - 1} do not fit sims of shape "
            f"{tuple(sims.shape)}"
        )
    if sims_v2t is not None and sims_v2t.shape != sims.shape:
        raise XPoolError(
            f"sims_v2t must have the shape of sims {tuple(sims.shape)}, got {tuple(sims_v2t.shape)}"
        )
    scale = logit_scale.exp()
    if clamp_in_loss:
        scale = scale.clamp(max=MAX_LOGIT_SCALE)
    targets = torch.arange(offset, offset + rows, device=sims.device)
    t2v = F.cross_entropy(sims * scale, targets)
    if sims_v2t is not None:
        v2t = F.cross_entropy(sims_v2t * scale, targets)
    else:
        # Columns of the local block: video offset+i against the local texts (all texts when square).
        block = sims[:, offset : offset + rows]
        v2t = F.cross_entropy(block.T * scale, torch.arange(rows, device=sims.device))
    return (t2v + v2t) / 2
