"""Frame transforms for a clip, following the authors' recipe.

The recipe: docs/architecture.md, "The authors' recipe".

The authors (``datasets/model_transforms.py``) apply torchvision 0.9 transforms to the whole
float ``[F, 3, H, W]`` clip in [0, 1], so every frame gets the *same* crop and flip:

Train: RandomResizedCrop(S, scale=(0.5, 1)) with its default bilinear resampling, then a
horizontal flip (p = 0.5).
Test: resize the short side to S (bicubic), then center crop S.
Both normalise with the backbone's mean/std, which callers pass in so tiny models work too.

``antialias=False`` is their resampling exactly: torchvision 0.9 resizes tensors with
``torch.nn.functional.interpolate`` and no antialiasing, and does not clamp float output (bicubic
may leave [0, 1]). ``antialias=True`` (this project's earlier default) antialiases both resizes
and clamps after bicubic, closer to PIL's pipeline on high-resolution sources.

Randomness comes from an explicit generator (torch.Generator or numpy Generator) so a dataset can
make crops depend only on (seed, epoch, index), which is what exact resume needs.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VideoTransform", "random_resized_crop_params", "transform_for"]

Generator = torch.Generator | np.random.Generator | None


def _uniform(gen: Generator, low: float, high: float) -> float:
    if isinstance(gen, np.random.Generator):
        return float(gen.uniform(low, high))
    u = torch.rand((), generator=gen).item()  # gen None -> torch's global generator
    return low + (high - low) * u


def _randint(gen: Generator, low: int, high_inclusive: int) -> int:
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(low, high_inclusive + 1))
    return int(torch.randint(low, high_inclusive + 1, (), generator=gen).item())


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    gen: Generator = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect in ``ratio``.

    The standard Inception-style sampler: ten tries at a random area and log-uniform aspect ratio,
    then a fall-back to the largest centred crop whose aspect ratio lies within ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(gen, 0, height - h)
            left = _randint(gen, 0, width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class VideoTransform:
    """uint8 frames ``[F, H, W, 3]`` -> normalised float tensor ``[F, 3, S, S]``."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train: bool,
        scale: tuple[float, float] = (0.5, 1.0),
        flip_p: float = 0.5,
        antialias: bool = True,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries each (std > 0), got {mean}, {std}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = bool(train)
        self.scale = scale
        self.flip_p = flip_p
        self.antialias = bool(antialias)

    def __repr__(self) -> str:
        return (
            f"VideoTransform(image_size={self.image_size}, train={self.train}, "
            f"mean={self.mean}, std={self.std}, antialias={self.antialias})"
        )

    def __call__(self, frames: np.ndarray | torch.Tensor, gen: Generator = None) -> torch.Tensor:
        """Transform one clip; ``gen`` drives the random crop/flip (ignored at test time)."""
        x = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected frames [F, H, W, 3], got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)  # [F, 3, H, W], still uint8
        s = self.image_size
        if self.train:
            top, left, h, w = random_resized_crop_params(x.shape[2], x.shape[3], self.scale, gen=gen)
            # Crop before converting to float: cheaper for large frames.
            x = x[:, :, top : top + h, left : left + w].float().div_(255.0)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=self.antialias)
            if _uniform(gen, 0.0, 1.0) < self.flip_p:
                x = x.flip(-1)
        else:
            height, width = x.shape[2], x.shape[3]
            # Short side to S, long side scaled and truncated, as torchvision's Resize(int) does.
            if height <= width:
                new_h, new_w = s, max(s, int(s * width / height))
            else:
                new_h, new_w = max(s, int(s * height / width)), s
            x = x.float().div_(255.0)
            if (new_h, new_w) != (height, width):
                x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False,
                                  antialias=self.antialias)
                if self.antialias:
                    x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL's uint8 pipeline clips too
            top = int(round((new_h - s) / 2.0))
            left = int(round((new_w - s) / 2.0))
            x = x[:, :, top : top + s, left : left + s]
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()


class ImageParams(Protocol):
    """What a transform needs to know of a backbone (``ClipBackbone`` has all three)."""

    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def transform_for(backbone: ImageParams, train: bool, antialias: bool = True) -> VideoTransform:
    """The frame transform of ``backbone``'s input size and normalisation: the authors' training
    augmentation when ``train``, else resize plus centre crop."""
    return VideoTransform(backbone.image_size, backbone.image_mean, backbone.image_std,
                          train=train, antialias=antialias)
