"""What every exact similarity path shares: input checks, the eval-mode guard and tile sizing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from xpool.errors import XPoolError

__all__ = ["DEFAULT_MEMORY_BUDGET", "MIN_GEMM_ROWS", "NORM_EPS", "check_chunk", "check_inputs",
           "eval_mode", "tiles"]

# Default bound on the per-chunk temporaries (bytes); the inputs and the [T, V] output come on top.
DEFAULT_MEMORY_BUDGET = 512 * 1024**2

NORM_EPS = 1e-12  # F.normalize's default eps: the plain path divides by max(norm, eps)
# A GEMM with very few rows runs far below peak: video blocks have at least this many rows.
MIN_GEMM_ROWS = 256


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def check_inputs(pooling: nn.Module, text_embeds: Tensor, frame_embeds: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(pooling, nn.Module) or not hasattr(pooling, "text_conditioned"):
        raise XPoolError(
            f"pooling must be a head from xpool.model.pooling.build_pooling, got {type(pooling)}"
        )
    if text_embeds.dim() != 2:
        raise XPoolError(f"text_embeds must be [T, D], got shape {tuple(text_embeds.shape)}")
    if frame_embeds.dim() != 3:
        raise XPoolError(f"frame_embeds must be [V, F, D], got shape {tuple(frame_embeds.shape)}")
    if text_embeds.shape[1] != frame_embeds.shape[2]:
        raise XPoolError(
            f"embedding sizes differ: text {text_embeds.shape[1]}, frames {frame_embeds.shape[2]}"
        )
    param = next(iter(pooling.parameters()), None)
    device = param.device if param is not None else text_embeds.device
    return (
        text_embeds.detach().to(device=device, dtype=torch.float32),
        frame_embeds.detach().to(device=device, dtype=torch.float32),
    )


def check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise XPoolError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def tiles(
    num_texts: int,
    num_videos: int,
    basis: int,
    per_pair_floats: int,
    chunk_size: int | None,
    memory_budget: int,
) -> tuple[int, int]:
    """Pick (texts per chunk, videos per block) so a tile's temporaries fit ``memory_budget``.

    Tiles are as large as the budget allows (the top-k and attention heads; X-Pool uses this for
    its chunks only, see ``xpool_plan``): every tile costs a few tensor operations, and on a
    busy machine each parallel operation can stall for a scheduler time slice.
    """
    pairs = max(1, memory_budget // (4 * max(1, per_pair_floats)))
    if chunk_size is None:
        chunk_size = max(64, pairs // max(1, num_videos))
    chunk_size = max(1, min(chunk_size, max(num_texts, 1)))
    video_block = max(1, min(num_videos, pairs // chunk_size))
    video_block = max(video_block, min(num_videos, -(-MIN_GEMM_ROWS // max(1, basis))))
    return chunk_size, video_block
