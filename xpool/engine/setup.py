"""What every run sets up first: the device, thread count, seeds and RNG state, the learning-rate
schedule and the autocast precision."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import torch

from xpool.config import Config
from xpool.errors import XPoolError

__all__ = ["autocast", "cosine_with_warmup", "pick_device", "rng_state", "seed_everything",
           "set_rng_state", "torch_threads", "uses_bf16"]


def pick_device() -> torch.device:
    """CUDA when present (the local rank's GPU under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch limited to `n` intra-op threads, restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_with_warmup(total_steps: int, warmup_steps: int,
                       start: str = "one") -> Callable[[int], float]:
    """LR multiplier of 0-based `step`: linear warmup over `warmup_steps`, then cosine to zero at
    `total_steps`. `start="zero"` is Hugging Face's `get_cosine_schedule_with_warmup` (the
    authors'), whose first update has multiplier 0; `start="one"` begins at 1 / warmup."""
    offset = 0 if start == "zero" else 1

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + offset) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rng_state() -> dict[str, Any]:
    """Every RNG's state in types `torch.load(weights_only=True)` accepts (tensors, ints, str)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (the CUDA part only where there is a GPU)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether training autocasts to bf16: `bf16`, or `auto` on a GPU. `fp32` (the authors'
    precision, the paper profiles' default) never does."""
    if cfg.train.precision == "bf16" and device.type != "cuda":
        raise XPoolError("train.precision=bf16 needs a GPU; use auto or fp32 on the CPU")
    return device.type == "cuda" and cfg.train.precision in ("auto", "bf16")


def autocast(cfg: Config, device: torch.device) -> AbstractContextManager[Any]:
    """The autocast context of a training step: bf16 where `uses_bf16`, else a no-op."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=uses_bf16(cfg, device))
