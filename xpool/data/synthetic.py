"""The embedded synthetic text-video benchmark (docs/architecture.md, "The synthetic benchmark").

A video is a sequence of K scenes. A scene shows one object with five attributes a caption names
(size, colour, shape, motion, background pattern); the object moves across the frame and leaves a
fading trail, so the motion is visible in a single frame, and every frame gets its own sensor
noise, so frames are never copies. Every word survives the paper's training augmentation (random
resized crop at scale 0.5-1 and horizontal flip): motions are up, down or sideways (never left vs
right, which a flip swaps), and the two sizes stay apart under a crop's zoom of up to 1.41x. Frames are rendered with numpy and encoded
as real H.264 mp4 files with PyAV; annotations are written in MSR-VTT's own layout, so
`load_msrvtt` reads the corpus unchanged.

Captions name part of their video: an in-order proper subset of its scenes when K > 1, joined with
"then". Every test caption identifies its video uniquely within the test split (no other test
video contains the caption's scenes in that order); the generator enforces and re-verifies that.

The same renderer feeds the pretraining stage: `SceneImageStream` yields single-scene images with
the single-scene caption wording the video captions are made of, and `held_out_scenes` is a fixed
evaluation set drawn from a separate random stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xpool.config import Config, SynthConfig
from xpool.errors import ConfigError, CorpusError
from xpool.integrity import digest_of, file_sha256
from xpool.io import atomic_write, atomic_write_text, read_json, write_json

# Bump when the rendering or encoding changes: it is part of the corpus hash and the pretraining
# cache key, so stale corpora and checkpoints are never reused. 3: x264 without mbtree (see
# X264_OPTIONS).
RENDERER_VERSION = 3
# Bump when the annotation layout changes (also part of the corpus hash).
FORMAT_VERSION = 1

META_FILE = "synth_meta.json"
DATA_FILE = "MSRVTT_data.json"
TRAIN_9K_FILE = "MSRVTT_train.9k.csv"
TRAIN_7K_FILE = "MSRVTT_train.7k.csv"
TEST_FILE = "MSRVTT_JSFUSION_test.csv"
# MSR-VTT's 7k list holds 7,010 of the 9k list's 9,000 training videos.
TRAIN_7K_FRACTION = 7010 / 9000

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
_BACKGROUND_PHRASE = {"plain": "plain grey", "stripes": "stripes", "checks": "checks", "dots": "dots"}
_PHRASE_BACKGROUND = {v: k for k, v in _BACKGROUND_PHRASE.items()}

# Object radius as a fraction of the resolution: 0.14 * 1.41 < 0.24, so a crop never makes a small
# object look large.
_SIZE_RADIUS = {"small": 0.14, "large": 0.24}
# Unit directions per motion word; "sideways" picks left or right per scene.
_DIRECTIONS = {"up": ((0.0, -1.0),), "down": ((0.0, 1.0),), "sideways": ((-1.0, 0.0), (1.0, 0.0))}
_TRAIL = ((0.9, 0.45), (1.8, 0.2))  # (offset in radii behind the object, opacity)
_NOISE_SIGMA = 4.0


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
            f"on {_BACKGROUND_PHRASE[self.background]}"
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


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Layout:
    """The continuous, caption-invisible parameters of a scene (where, how fast, which grey)."""

    x0: float  # object centre at t = 0, in pixels
    y0: float
    dx: float  # unit direction of motion
    dy: float
    travel: float  # distance covered over the scene, in pixels
    colour_jitter: tuple[float, float, float]
    bg_level: float
    bg_period: int
    bg_phase: int


def sample_layout(scene: Scene, resolution: int, rng: np.random.Generator) -> Layout:
    """Random placement such that the object stays inside the frame for the whole scene."""
    res = float(resolution)
    r = _SIZE_RADIUS[scene.size] * res
    travel = rng.uniform(0.25, 0.4) * res
    choices = _DIRECTIONS[scene.motion]
    dx, dy = choices[int(rng.integers(len(choices)))]
    margin = r + 1.0

    def start(d: float) -> float:
        if d > 0:
            return rng.uniform(margin, res - margin - travel)
        if d < 0:
            return rng.uniform(margin + travel, res - margin)
        return rng.uniform(margin, res - margin)

    x0, y0 = start(dx), start(dy)
    jitter = tuple(float(v) for v in rng.uniform(-15, 15, size=3))
    period = int(rng.choice([max(4, resolution // 8), max(4, resolution // 6)]))
    return Layout(
        x0=x0,
        y0=y0,
        dx=dx,
        dy=dy,
        travel=travel,
        colour_jitter=jitter,  # type: ignore[arg-type]
        bg_level=float(rng.uniform(25, 70)),
        bg_period=period,
        bg_phase=int(rng.integers(0, period)),
    )


@lru_cache(maxsize=8)
def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres, so masks are symmetric.
    c = np.arange(resolution, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="xy")


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of a shape centred at the origin."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - 0.82 * r
    if shape == "bar":  # a wide, flat rectangle
        return np.maximum(ax - r, ay - 0.42 * r)
    if shape == "ring":
        return np.abs(np.sqrt(dx * dx + dy * dy) - 0.72 * r) - 0.3 * r
    if shape == "cross":
        arm = 0.32 * r
        bar_h = np.maximum(ax - r, ay - arm)
        bar_v = np.maximum(ay - r, ax - arm)
        return np.minimum(bar_h, bar_v)
    if shape == "triangle":
        # Upward-pointing triangle: the bottom edge and two slanted edges as half-planes.
        s = np.sqrt(3.0) / 2.0
        bottom = dy - 0.6 * r
        left = -s * dx - 0.5 * dy - 0.6 * r
        right = s * dx - 0.5 * dy - 0.6 * r
        return np.maximum(bottom, np.maximum(left, right))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4)
def _noise_bank(resolution: int) -> np.ndarray:
    """Fixed Gaussian sensor-noise fields, one picked per frame.

    Drawing fresh Gaussian noise dominated the render time; a bank of fields (about 16 MB at
    most) picked at random keeps frames distinct at a fraction of the cost.
    """
    count = int(np.clip(2**24 // (resolution * resolution * 3 * 4), 8, 256))
    rng = np.random.default_rng(0x0015E)
    bank = rng.standard_normal((count, resolution, resolution, 3), dtype=np.float32)
    bank *= np.float32(_NOISE_SIGMA)
    bank.flags.writeable = False
    return bank


@lru_cache(maxsize=512)
def _pattern(background: str, resolution: int, period: int, phase: int) -> np.ndarray:
    """The background's bright cells as a float32 0/1 map [H, W] (cached: few distinct ones)."""
    xs, ys = _grid(resolution)
    ix, iy = xs.astype(np.int64), ys.astype(np.int64)
    if background == "stripes":  # horizontal stripes
        on = ((iy + phase) // period) % 2 == 1
    elif background == "checks":
        on = (((ix + phase) // period) + (iy // period)) % 2 == 1
    elif background == "dots":  # a grid of round dots, 0.6 of the period across
        ox = (xs + phase) % period - period / 2.0
        oy = ys % period - period / 2.0
        on = ox * ox + oy * oy <= (0.3 * period) ** 2
    else:
        on = np.zeros_like(ix, dtype=bool)
    out = on.astype(np.float32)
    out.flags.writeable = False  # shared by every caller of the cache
    return out


def render_frame(
    scene: Scene, layout: Layout, t: float, resolution: int, noise_rng: np.random.Generator
) -> np.ndarray:
    """One frame of a scene at time `t` in [0, 1]: uint8 [H, W, 3]."""
    pattern = _pattern(scene.background, resolution, layout.bg_period, layout.bg_phase)
    img = np.empty((resolution, resolution, 3), np.float32)
    img[...] = (layout.bg_level + 45.0 * pattern)[:, :, None]
    xs, ys = _grid(resolution)
    r = _SIZE_RADIUS[scene.size] * resolution
    ddx, ddy = layout.dx, layout.dy
    cx = layout.x0 + ddx * layout.travel * t
    cy = layout.y0 + ddy * layout.travel * t
    colour = np.clip(np.asarray(COLOURS[scene.colour], np.float32) + layout.colour_jitter, 0, 255)
    # Only the window around the object and its trail changes; every shape fits within 1.25 r
    # of its centre, plus one pixel of anti-aliasing.
    tail = _TRAIL[-1][0] * r
    ext = 1.25 * r + 1.0
    x_lo = max(0, int(np.floor(min(cx, cx - ddx * tail) - ext)))
    x_hi = min(resolution, int(np.ceil(max(cx, cx - ddx * tail) + ext)) + 1)
    y_lo = max(0, int(np.floor(min(cy, cy - ddy * tail) - ext)))
    y_hi = min(resolution, int(np.ceil(max(cy, cy - ddy * tail) + ext)) + 1)
    wx, wy = xs[y_lo:y_hi, x_lo:x_hi], ys[y_lo:y_hi, x_lo:x_hi]
    win = img[y_lo:y_hi, x_lo:x_hi]
    # The fading trail behind the object makes the direction of motion visible in one frame;
    # draw the faintest copy first so nearer copies cover it.
    copies = [(off, alpha) for off, alpha in reversed(_TRAIL)] + [(0.0, 1.0)]
    for off, alpha in copies:
        px, py = cx - ddx * off * r, cy - ddy * off * r
        sd = _signed_distance(scene.shape, wx - px, wy - py, r)
        mask = np.clip(0.5 - sd, 0.0, 1.0)[:, :, None] * np.float32(alpha)  # anti-aliased edge
        win += mask * (colour - win)
    bank = _noise_bank(resolution)
    img += bank[int(noise_rng.integers(len(bank)))]
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def render_scene_frames(
    scene: Scene, layout: Layout, num_frames: int, resolution: int, noise_rng: np.random.Generator
) -> np.ndarray:
    """`num_frames` evenly spaced frames of a scene (segment midpoints): uint8 [F, H, W, 3]."""
    ts = (np.arange(num_frames) + 0.5) / num_frames
    return np.stack([render_frame(scene, layout, float(t), resolution, noise_rng) for t in ts])


# ----------------------------------------------------------------------------------------------
# Single-scene images for pretraining

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


# ----------------------------------------------------------------------------------------------
# Corpus structure: which scenes each video shows and what its captions name


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


# ----------------------------------------------------------------------------------------------
# Encoding


# x264 settings. Near-lossless (crf 6) keeps colours and small shapes intact at 32-64 px. One
# thread alone does not make x264 deterministic: the libx264 bundled with PyAV reads uninitialised
# heap memory in its AVX-512 macroblock-tree code, so on an AVX-512 CPU the same frames encoded
# twice can give different files. Without mbtree the output is one byte stream in fresh processes
# under any heap state and on every x264 instruction-set level from SSSE3 to AVX-512
# (tests/test_determinism.py checks both); x264's C-only and SSE2/SSE3-only paths, which no
# x86-64 CPU made since 2008 uses, give another one.
X264_OPTIONS = {"crf": "6", "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}


def _encode_mp4(frames: np.ndarray, fps: int, path: Path,
                x264_params: str | None = None) -> None:
    """Encode uint8 [F, H, W, 3] as H.264 (yuv420p) mp4 at `path`."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        options = dict(X264_OPTIONS)
        if x264_params:  # tests: e.g. "asm=AVX2" caps x264's instruction set
            options["x264-params"] = f"{options['x264-params']}:{x264_params}"
        stream.options = options
        stream.codec_context.thread_count = 1
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_video(spec: VideoSpec, cfg: SynthConfig) -> np.ndarray:
    """The frames of one video before encoding: uint8 [K * frames_per_scene, H, W, 3]."""
    # Per-video generator keyed by the video index: results do not depend on worker order.
    rng = np.random.default_rng([cfg.seed, 2, spec.index])
    return np.concatenate(
        [
            render_scene_frames(
                scene,
                sample_layout(scene, cfg.resolution, rng),
                cfg.frames_per_scene,
                cfg.resolution,
                rng,
            )
            for scene in spec.scenes
        ]
    )


def _render_and_write(args: tuple[VideoSpec, SynthConfig, str]) -> str:
    """Render and encode one video; returns the sha256 of the mp4 written."""
    spec, cfg, path = args
    frames = render_video(spec, cfg)
    atomic_write(path, lambda p: _encode_mp4(frames, cfg.fps, p))
    return file_sha256(path)


# ----------------------------------------------------------------------------------------------
# Annotations and the public API


def settings_dict(cfg: SynthConfig) -> dict[str, Any]:
    """Everything that determines the corpus's content."""
    return {
        **dataclasses.asdict(cfg),
        "renderer_version": RENDERER_VERSION,
        "format_version": FORMAT_VERSION,
    }


def settings_hash(cfg: SynthConfig) -> str:
    """A stable hash of `settings_dict(cfg)`."""
    payload = json.dumps(settings_dict(cfg), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _annotations(specs: Sequence[VideoSpec], cfg: SynthConfig) -> dict[str, str]:
    """File name -> exact text of every annotation file."""
    videos, sentences = [], []
    sen_id = 0
    seconds = cfg.scenes * cfg.frames_per_scene / cfg.fps
    test_rows = ["key,vid_key,video_id,sentence"]
    for spec in specs:
        videos.append(
            {
                "category": 0,
                "url": "",
                "video_id": spec.video_id,
                "start time": 0.0,
                "end time": seconds,
                "split": spec.split,
                "id": spec.index,
            }
        )
        for sub in spec.captions:
            text = caption_for([spec.scenes[i] for i in sub])
            sentences.append({"caption": text, "video_id": spec.video_id, "sen_id": sen_id})
            sen_id += 1
            if spec.split == "test":
                # Captions are plain words and spaces, so no csv quoting is needed.
                test_rows.append(f"ret{len(test_rows) - 1},msr{spec.index},{spec.video_id},{text}")
    train_ids = [s.video_id for s in specs if s.split == "train"]
    n7k = max(1, round(len(train_ids) * TRAIN_7K_FRACTION))
    data = {
        "info": {
            "description": "xpool synthetic benchmark in MSR-VTT layout",
            "settings_hash": settings_hash(cfg),
        },
        "videos": videos,
        "sentences": sentences,
    }
    return {
        DATA_FILE: json.dumps(data, indent=1, sort_keys=True) + "\n",
        TRAIN_9K_FILE: "\n".join(["video_id", *train_ids]) + "\n",
        TRAIN_7K_FILE: "\n".join(["video_id", *train_ids[:n7k]]) + "\n",
        TEST_FILE: "\n".join(test_rows) + "\n",
    }


def _meta(specs: Sequence[VideoSpec], cfg: SynthConfig,
          video_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    video_sha256 = video_sha256 or {}
    return {
        "settings": settings_dict(cfg),
        "hash": settings_hash(cfg),
        "x264_options": X264_OPTIONS,
        # Checked whenever the corpus is reused, compared by the reproduction check.
        "video_sha256": dict(sorted(video_sha256.items())),
        "corpus_sha256": digest_of(video_sha256),
        "vocabulary": {
            "sizes": list(SIZES),
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "motions": list(MOTIONS),
            "backgrounds": list(BACKGROUNDS),
        },
        "videos": {
            s.video_id: {
                "split": s.split,
                "scenes": [sc.as_dict() for sc in s.scenes],
                "captions": [
                    {"text": caption_for([s.scenes[i] for i in sub]), "scene_indices": list(sub)}
                    for sub in s.captions
                ],
            }
            for s in specs
        },
    }


def _is_complete(root: Path, cfg: SynthConfig) -> bool:
    meta_path = root / META_FILE
    if not meta_path.is_file():
        return False
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return False
    if meta.get("hash") != settings_hash(cfg):
        return False
    files = [DATA_FILE, TRAIN_9K_FILE, TRAIN_7K_FILE, TEST_FILE]
    if not all((root / f).is_file() for f in files):
        return False
    # Every video as it was written (a few ms for the embedded corpus): a changed or truncated
    # file, or a corpus from before the digests were recorded, is regenerated.
    sums = meta.get("video_sha256") or {}
    if set(sums) != set(meta.get("videos", {})):
        return False
    return all(
        (p := root / "videos" / f"{vid}.mp4").is_file() and file_sha256(p) == sha
        for vid, sha in sums.items()
    )


def generate_corpus(cfg: SynthConfig, root: str | Path, progress: bool = True) -> Path:
    """Write the synthetic corpus for `cfg` under `root` (MSR-VTT layout) and return `root`.

    Idempotent: a complete corpus with the same settings hash is left untouched. Anything else
    (a partial run, other settings) is regenerated; `synth_meta.json` is written last, so it marks
    a complete corpus.
    """
    root = Path(root)
    if cfg.resolution % 2:
        raise ConfigError(f"synth.resolution must be even (yuv420p), got {cfg.resolution}")
    if _is_complete(root, cfg):
        return root
    specs = build_specs(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / META_FILE).unlink(missing_ok=True)  # not complete until rewritten at the end
    video_dir = root / "videos"
    video_dir.mkdir(exist_ok=True)
    wanted = {f"{s.video_id}.mp4" for s in specs}
    for stale in video_dir.glob("video*.mp4"):
        if stale.name not in wanted and re.fullmatch(r"video\d+\.mp4", stale.name):
            stale.unlink()
    jobs = [(s, cfg, str(video_dir / f"{s.video_id}.mp4")) for s in specs]
    sums = dict(zip((s.video_id for s in specs), _run_jobs(jobs, progress), strict=True))
    for name, text in _annotations(specs, cfg).items():
        atomic_write_text(root / name, text)
    write_json(root / META_FILE, _meta(specs, cfg, sums))
    return root


def _run_jobs(jobs: list[tuple[VideoSpec, SynthConfig, str]], progress: bool) -> list[str]:
    """Run every job; the sha256 of each video, in job order."""
    from tqdm.auto import tqdm

    workers = min(os.cpu_count() or 1, 4)
    bar = tqdm(total=len(jobs), desc="synth videos", unit="video", disable=not progress)
    # Small corpora are faster in-process than paying for worker start-up.
    sums: list[str] = []
    if workers <= 1 or len(jobs) < 64:
        for job in jobs:
            sums.append(_render_and_write(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for sha in pool.map(_render_and_write, jobs, chunksize=16):
                sums.append(sha)
                bar.update()
    bar.close()
    return sums


def ensure_corpus(config: Config, progress: bool = True) -> Path:
    """Generate the synthetic corpus at `config.data_root` unless it is already there."""
    if config.data.corpus != "synthetic":
        raise ConfigError(
            f"ensure_corpus needs data.corpus = synthetic, got {config.data.corpus!r}"
        )
    return generate_corpus(config.synth, config.data_root, progress=progress)


def load_meta(root: str | Path) -> dict[str, Any]:
    """The generator's `synth_meta.json` of a corpus (per-video scenes, captions, settings)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise CorpusError(f"{path} not found: not a (complete) synthetic corpus")
    return read_json(path)

