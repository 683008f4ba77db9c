"""Test helper shared by the similarity and leakage tests."""

from __future__ import annotations

import torch


def random_weights(head: torch.nn.Module, seed: int = 0) -> None:
    """Fully random parameters (not identity plus noise), so no head is close to an identity
    map: Linear ~ N(0, 1/D), norm weights ~ N(1, 0.5), everything else ~ N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
