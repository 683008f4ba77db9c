"""Process-group helpers for `torchrun` (DDP): NCCL on GPU, gloo on CPU.

The contrastive loss needs every rank's embeddings as negatives, so `gather_with_grad` concatenates
them across ranks while letting gradients flow back to each rank's own slice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def cleanup_distributed() -> None:
    """Leave the process group if we joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        # Ranks may hold different numbers of items (a skipped video shrinks a batch), so
        # exchange sizes first and pad to the largest.
        world = dist.get_world_size()
        size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes_list = [int(s.item()) for s in sizes]
        biggest = max(sizes_list)
        padded = tensor.new_zeros((biggest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        rank = dist.get_rank()
        ctx.start, ctx.size = sum(sizes_list[:rank]), tensor.shape[0]
        return torch.cat([p[:n] for p, n in zip(parts, sizes_list, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computes the loss on the full gathered batch, so the gradient of this rank's
        # slice is the sum of what all ranks send back (all_reduce works on gloo, unlike
        # reduce_scatter). DDP then averages parameter gradients over ranks, which makes the
        # update identical to one process holding the global batch.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.size]


def gather_with_grad(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate `tensor` along dim 0 over all ranks (identity when not distributed)."""
    if not info.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether any process has `flag` set, so every rank stops at the same step (under DDP a
    signal can reach the ranks at different steps)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
