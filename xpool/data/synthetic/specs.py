"""The corpus structure: which scenes each train and test video shows and which of them its
captions name, with every test caption unique within the test split (enforced and re-verified)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xpool.config import SynthConfig
from xpool.data.synthetic.scenes import ALL_SCENES, Scene, caption_for, is_subsequence
from xpool.errors import ConfigError, CorpusError


@dataclass
class VideoSpec:
    """One video of the corpus: its scenes and its captions (each a tuple of scene indices)."""

    index: int
    split: str
    scenes: list[Scene]
    captions: list[tuple[int, ...]]

    @property
    def video_id(self) -> str:
        return f"video{self.index}"


def _sample_video_scenes(k: int, rng: np.random.Generator) -> list[Scene]:
    # Distinct scenes within a video, so "the red circle" never means two different moments.
    picks = rng.choice(len(ALL_SCENES), size=k, replace=False)
    return [ALL_SCENES[int(i)] for i in picks]


def _sample_subset(k: int, rng: np.random.Generator) -> tuple[int, ...]:
    """An in-order proper subset of range(k) (the whole scene when k == 1)."""
    if k == 1:
        return (0,)
    m = int(rng.integers(1, k))  # 1..k-1 scenes
    return tuple(sorted(int(i) for i in rng.choice(k, size=m, replace=False)))


def _train_specs(cfg: SynthConfig, rng: np.random.Generator) -> list[VideoSpec]:
    k = cfg.scenes
    n_subsets = 1 if k == 1 else 2**k - 2
    specs = []
    for i in range(cfg.num_train):
        scenes = _sample_video_scenes(k, rng)
        captions: list[tuple[int, ...]] = []
        for _ in range(cfg.captions_per_video):
            # Prefer distinct captions per video while distinct subsets remain.
            for _attempt in range(20):
                sub = _sample_subset(k, rng)
                if sub not in captions or len(set(captions)) >= n_subsets:
                    break
            captions.append(sub)
        specs.append(VideoSpec(i, "train", scenes, captions))
    return specs


def _test_specs(cfg: SynthConfig, rng: np.random.Generator, first_index: int) -> list[VideoSpec]:
    """Test videos with one caption each, unique within the split by construction.

    Greedy: a new video is accepted only if its caption is not contained in any earlier test
    video and it does not contain any earlier test caption; so the invariant holds for the whole
    split at every step.
    """
    k = cfg.scenes
    if k == 1 and cfg.num_test > len(ALL_SCENES):
        raise ConfigError(
            f"synth.num_test={cfg.num_test} test videos cannot have unique captions with "
            f"synth.scenes=1: only {len(ALL_SCENES)} distinct scenes exist"
        )
    specs: list[VideoSpec] = []
    named: list[list[Scene]] = []
    max_attempts = 2000
    for j in range(cfg.num_test):
        for _attempt in range(max_attempts):
            scenes = _sample_video_scenes(k, rng)
            if any(is_subsequence(c, scenes) for c in named):
                continue
            found = None
            for _ in range(10):
                sub = _sample_subset(k, rng)
                cap = [scenes[i] for i in sub]
                if not any(is_subsequence(cap, s.scenes) for s in specs):
                    found = sub
                    break
            if found is not None:
                specs.append(VideoSpec(first_index + j, "test", scenes, [found]))
                named.append([scenes[i] for i in found])
                break
        else:
            raise ConfigError(
                f"cannot make {cfg.num_test} test captions unique with synth.scenes={k}: gave up "
                f"at test video {j} after {max_attempts} attempts ({len(ALL_SCENES)} distinct "
                f"scenes exist); lower synth.num_test"
            )
    return specs


def verify_unique_test_captions(specs: Sequence[VideoSpec]) -> None:
    """Raise if any test caption also describes another test video."""
    tests = [s for s in specs if s.split == "test"]
    for s in tests:
        for sub in s.captions:
            cap = [s.scenes[i] for i in sub]
            for other in tests:
                if other is not s and is_subsequence(cap, other.scenes):
                    raise CorpusError(
                        f"test caption of {s.video_id} ({caption_for(cap)!r}) also matches "
                        f"{other.video_id}"
                    )


def build_specs(cfg: SynthConfig) -> list[VideoSpec]:
    """The corpus structure for `cfg`: train videos first, then test videos."""
    if cfg.scenes > len(ALL_SCENES):
        raise ConfigError(f"synth.scenes={cfg.scenes} exceeds the {len(ALL_SCENES)} distinct scenes")
    rng = np.random.default_rng([cfg.seed, 1])
    specs = _train_specs(cfg, rng) + _test_specs(cfg, rng, cfg.num_train)
    verify_unique_test_captions(specs)
    return specs
