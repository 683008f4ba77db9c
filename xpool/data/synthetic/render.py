"""Frame rendering with numpy: a scene's random layout, the object's shape as a signed distance,
the background patterns, sensor noise, and the frames of one scene or one whole video."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from xpool.config import SynthConfig
from xpool.data.synthetic.scenes import COLOURS, Scene
from xpool.data.synthetic.specs import VideoSpec

# Bump when the rendering (here) or the encoding (encode.py) changes: it is part of the corpus
# hash and the pretraining cache key, so stale corpora and checkpoints are never reused. 3: x264
# without mbtree (see encode.X264_OPTIONS).
RENDERER_VERSION = 3

# Object radius as a fraction of the resolution: 0.14 * 1.41 < 0.24, so a crop never makes a small
# object look large.
_SIZE_RADIUS = {"small": 0.14, "large": 0.24}
# Unit directions per motion word; "sideways" picks left or right per scene.
_DIRECTIONS = {"up": ((0.0, -1.0),), "down": ((0.0, 1.0),), "sideways": ((-1.0, 0.0), (1.0, 0.0))}
_TRAIL = ((0.9, 0.45), (1.8, 0.2))  # (offset in radii behind the object, opacity)
_NOISE_SIGMA = 4.0


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
