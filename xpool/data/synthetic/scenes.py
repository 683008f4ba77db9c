"""The synthetic benchmark's vocabulary: the five attributes of a scene, every scene, and the
caption wording (a single-scene phrase, video captions joined with "then", and its inverse)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Vocabulary. Colours are saturated and far apart in hue so they survive yuv420p chroma
# subsampling at 32-64 px; backgrounds are grey so no colour word is confounded with them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 190, 50),
    "blue": (45, 85, 240),
    "yellow": (235, 220, 40),
    "aqua": (40, 215, 225),
    "magenta": (215, 50, 215),
    "orange": (245, 135, 20),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
MOTIONS = ("up", "down", "sideways")
BACKGROUNDS = ("plain", "stripes", "checks", "dots")
# Short phrases keep a 3-scene caption within a 32-token context (9 tokens per scene at most).
BACKGROUND_PHRASE = {"plain": "plain grey", "stripes": "stripes", "checks": "checks", "dots": "dots"}
_PHRASE_BACKGROUND = {v: k for k, v in BACKGROUND_PHRASE.items()}


@dataclass(frozen=True, order=True)
class Scene:
    """The nameable content of one scene."""

    size: str
    colour: str
    shape: str
    motion: str
    background: str

    @property
    def caption(self) -> str:
        """The single-scene phrase; video captions join these with "then"."""
        return (
            f"a {self.size} {self.colour} {self.shape} moving {self.motion} "
            f"on {BACKGROUND_PHRASE[self.background]}"
        )

    def as_dict(self) -> dict[str, str]:
        """Plain dict (what synth_meta.json stores)."""
        return dataclasses.asdict(self)


ALL_SCENES: tuple[Scene, ...] = tuple(
    Scene(*combo) for combo in itertools.product(SIZES, COLOURS, SHAPES, MOTIONS, BACKGROUNDS)
)
_SCENE_SET = frozenset(ALL_SCENES)

_CAPTION_RE = re.compile(
    r"a (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+) moving (?P<motion>\w+) "
    r"on (?P<background>plain grey|\w+)"
)


def caption_for(scenes: Sequence[Scene]) -> str:
    """A caption naming `scenes` in order."""
    return " then ".join(s.caption for s in scenes)


def parse_caption(text: str) -> list[Scene]:
    """Inverse of `caption_for` (used by tests and figures to check captions independently)."""
    scenes = []
    for part in text.split(" then "):
        m = _CAPTION_RE.fullmatch(part.strip())
        if m is None:
            raise ValueError(f"not a synthetic scene caption: {part!r}")
        fields = m.groupdict()
        fields["background"] = _PHRASE_BACKGROUND.get(fields["background"], "?")
        scene = Scene(**fields)
        if scene not in _SCENE_SET:
            raise ValueError(f"not a synthetic scene caption: {part!r}")
        scenes.append(scene)
    return scenes


def is_subsequence(needle: Sequence[Any], haystack: Sequence[Any]) -> bool:
    """True if `needle` occurs in `haystack` in order (not necessarily contiguously)."""
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)
