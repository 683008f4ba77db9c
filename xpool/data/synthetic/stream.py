"""Single-scene images for the tiny CLIP's pretraining: an endless seeded stream (with
one-attribute variants as hard negatives) and a fixed held-out set from a separate stream."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from xpool.data.synthetic.render import render_frame, sample_layout
from xpool.data.synthetic.scenes import (
    ALL_SCENES,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    Scene,
)
from xpool.errors import ConfigError

# Distinct stream ids, so the training stream, the held-out set and corpora never share draws.
_STREAM_TRAIN = 0x5EED
_STREAM_HELD_OUT = 0xE7A1


def _random_scene(rng: np.random.Generator) -> Scene:
    return ALL_SCENES[int(rng.integers(len(ALL_SCENES)))]


def _render_single(scene: Scene, resolution: int, rng: np.random.Generator) -> np.ndarray:
    layout = sample_layout(scene, resolution, rng)
    return render_frame(scene, layout, float(rng.uniform(0.0, 1.0)), resolution, rng)


_ATTRIBUTES = {
    "size": SIZES,
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "motion": MOTIONS,
    "background": BACKGROUNDS,
}


def _variant(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with one random attribute changed to another random value."""
    names = list(_ATTRIBUTES)
    name = names[int(rng.integers(len(names)))]
    others = [v for v in _ATTRIBUTES[name] if v != getattr(scene, name)]
    return dataclasses.replace(scene, **{name: others[int(rng.integers(len(others)))]})


class SceneImageStream:
    """An endless, seeded stream of (uint8 image [H, W, 3], caption) for one random scene each.

    Rendered on the fly with the video renderer (random scene, placement and time within the
    scene); captions use exactly the single-scene wording of the video captions.

    With `group_size` g > 1 the scenes come in groups of g: a random scene followed by g - 1
    variants that each differ from it in one attribute. A contrastive batch then holds hard
    negatives for every attribute; with independent random scenes, a batch of 64 can be told
    apart by colour, size and background alone, and shape and motion are learnt very slowly.
    """

    def __init__(self, resolution: int, seed: int = 0, group_size: int = 1) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.group_size = int(group_size)
        self._rng = np.random.default_rng([self.seed, _STREAM_TRAIN])
        self._base: Scene | None = None
        self._count = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        return self

    def __next__(self) -> tuple[np.ndarray, str]:
        if self._base is None or self._count % self.group_size == 0:
            scene = self._base = _random_scene(self._rng)
        else:
            scene = _variant(self._base, self._rng)
        self._count += 1
        return _render_single(scene, self.resolution, self._rng), scene.caption

    def batch(self, n: int) -> tuple[np.ndarray, list[str]]:
        """The next `n` items stacked: (uint8 [n, H, W, 3], captions)."""
        items = [next(self) for _ in range(n)]
        return np.stack([im for im, _ in items]), [c for _, c in items]


def held_out_scenes(
    n: int, resolution: int, seed: int = 0
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """A fixed evaluation set of `n` single-scene images with pairwise distinct captions.

    Distinct captions make image<->text R@1 well defined (no tied duplicates). Drawn from a random
    stream separate from `SceneImageStream`'s, so the renders are new to the trained model.
    Returns (uint8 [n, H, W, 3], captions, scenes).
    """
    if not 0 < n <= len(ALL_SCENES):
        raise ConfigError(
            f"held-out set size must be in 1..{len(ALL_SCENES)} (the number of distinct scenes), got {n}"
        )
    rng = np.random.default_rng([int(seed), _STREAM_HELD_OUT])
    picks = rng.choice(len(ALL_SCENES), size=n, replace=False)
    scenes = [ALL_SCENES[int(i)] for i in picks]
    images = np.stack([_render_single(s, resolution, rng) for s in scenes])
    return images, [s.caption for s in scenes], scenes


