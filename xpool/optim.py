"""Optimizers: the authors' AdamW (Hugging Face transformers v4.6.1 semantics), and a chooser.

The authors train with transformers' ``AdamW`` (``correct_bias=True``), whose update differs from
``torch.optim.AdamW`` in where epsilon sits. Per parameter, at step t (1-based), with gradient g:

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step_size = lr * sqrt(1 - b2 ** t) / (1 - b1 ** t)
    p = p - step_size * m / (sqrt(v) + eps)      # eps added before the bias correction enters
    p = p - lr * weight_decay * p                 # decoupled decay, after the Adam step

torch's AdamW divides by ``sqrt(v) / sqrt(1 - b2 ** t) + eps`` instead, i.e. its eps is added
after the correction, and it decays *before* the Adam step. For gradients whose ``sqrt(v)`` is
not much larger than eps (many CLIP weights at lr 1e-6) the two drift apart; with eps -> 0 and no
weight decay they agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from xpool.errors import XPoolError

__all__ = ["HFAdamW", "OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("hf_adamw", "torch_adamw")


class HFAdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, eps before bias correction (module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ) -> None:
        if lr < 0.0:
            raise XPoolError(f"HFAdamW: learning rate must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise XPoolError(f"HFAdamW: betas must lie in [0, 1), got {betas}")
        if eps < 0.0:
            raise XPoolError(f"HFAdamW: eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise XPoolError(f"HFAdamW: weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "correct_bias": correct_bias}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise XPoolError("HFAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # A tensor step (not an int) so the state dict round-trips like torch's.
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = int(state["step"].item())
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                step_size = lr
                if group["correct_bias"]:
                    step_size = lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if wd > 0.0:
                    p.add_(p, alpha=-lr * wd)
        return loss


def build_optimizer(name: str, groups: list[dict[str, Any]], eps: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, over param groups that carry lr and weight_decay."""
    if name == "hf_adamw":
        return HFAdamW(groups, eps=eps, betas=betas)
    if name == "torch_adamw":
        return torch.optim.AdamW(groups, eps=eps, betas=betas)
    raise XPoolError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
