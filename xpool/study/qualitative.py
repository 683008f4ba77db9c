"""Qualitative analysis of finished runs: the frames a model saw of a video, which frames show
the scenes a synthetic caption names, the representative query of the figures, X-Pool's attention
mass on the named frames, the ambiguity of the MSVD stand-in's held-out captions, and the
synthetic benchmark's vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpool.config import Config
from xpool.data import synthetic as sy
from xpool.data.splits import load_split
from xpool.data.synthetic import build_specs, is_subsequence, parse_caption, render_video
from xpool.data.video import sample_frames, sample_indices
from xpool.errors import CorpusError, XPoolError
from xpool.study.collect import RunOutputs, RunResult


def _synthetic_specs(cfg: Config) -> dict[str, Any]:
    key = cfg.fingerprint(["synth"])
    if key not in _SPEC_CACHE:
        _SPEC_CACHE[key] = {s.video_id: s for s in build_specs(cfg.synth)}
    return _SPEC_CACHE[key]


_SPEC_CACHE: dict[str, dict[str, Any]] = {}


def video_frames(cfg: Config, video_id: str, num_frames: int | None = None) -> np.ndarray:
    """The frames the model saw of a test video, uint8 [F, H, W, 3].

    Decoded from the corpus when it is on disk. A synthetic corpus that is not (a fresh clone
    running `make figures`) is re-rendered from its generator, which is deterministic: the same
    pictures up to the H.264 encoding.
    """
    f = num_frames or cfg.data.num_frames
    path = None
    if cfg.data.corpus == "synthetic":
        path = cfg.data_root / "videos" / f"{video_id}.mp4"
    else:
        path = load_split(cfg, "test").videos.get(video_id)
    if path is not None and Path(path).is_file():
        return sample_frames(path, f, rule=cfg.data.sampling_rule)[0]
    if cfg.data.corpus != "synthetic":
        raise CorpusError(f"video {video_id} is not on disk under {cfg.data_root}")
    frames = render_video(_synthetic_specs(cfg)[video_id], cfg.synth)
    return frames[sample_indices(len(frames), f, rule=cfg.data.sampling_rule)]


def named_frames(cfg: Config, video_id: str, caption: str,
                 num_frames: int | None = None) -> np.ndarray | None:
    """For a synthetic video: which sampled frames show a scene the caption names ([F] bool);
    None for real corpora or a caption that is not about this video."""
    if cfg.data.corpus != "synthetic":
        return None
    spec = _synthetic_specs(cfg).get(video_id)
    if spec is None:
        return None
    try:
        named = {spec.scenes.index(s) for s in parse_caption(caption)}
    except ValueError:  # free text, or a scene this video does not have
        return None
    total = len(spec.scenes) * cfg.synth.frames_per_scene
    idx = sample_indices(total, num_frames or cfg.data.num_frames, rule=cfg.data.sampling_rule)
    return np.array([int(i) // cfg.synth.frames_per_scene in named for i in idx])


def pick_query(out: RunOutputs) -> int:
    """A representative query for the qualitative figures, by a fixed rule: the first test
    caption (in test order) that names only part of its video and whose video X-Pool ranks
    first; else the first caption naming part of its video; else caption 0."""
    ranks = out.result.ranks("t2v")
    partial = []
    for i, text in enumerate(out.emb.texts):
        vid = out.emb.video_ids[int(out.emb.video_of_text[i])]
        mask = named_frames(out.config, vid, text)
        if mask is not None and not mask.all():
            partial.append(i)
            if ranks[i] == 1:
                return i
    return partial[0] if partial else 0


def attention_mass(out: RunOutputs) -> pd.DataFrame:
    """Per test caption: X-Pool's attention mass on the frames of the scenes it names, against
    the share of those frames (what mean pooling gives them). Synthetic corpora only."""
    rows = []
    for i, text in enumerate(out.emb.texts):
        v = int(out.emb.video_of_text[i])
        mask = named_frames(out.config, out.emb.video_ids[v], text)
        a = out.attention(out.emb.text_embeds[i], v)
        if mask is None or a is None:
            continue
        rows.append({"query": i, "named_scenes_frames": int(mask.sum()),
                     "uniform_share": float(mask.mean()), "attention_mass": float(a[mask].sum()),
                     "argmax_on_named": bool(mask[int(np.argmax(a))])})
    return pd.DataFrame(rows)


def msvd_heldout_note(results: Sequence[RunResult]) -> str:
    """How many held-out captions also describe another held-out video (they are ambiguous:
    the generator only guarantees unique captions within the test split)."""
    cfg = results[0].config
    try:
        corpus = load_split(cfg, "val")
    except XPoolError:
        return "Held-out evaluation set: its corpus is not on disk, ambiguity not counted."
    specs = _synthetic_specs(cfg)
    scenes = {v: specs[v].scenes for v in corpus.videos}
    ambiguous = 0
    for c in corpus.captions:
        try:
            cap = parse_caption(c.text)
        except ValueError:  # a corpus written by another generator version
            return "Held-out evaluation set: captions not parseable, ambiguity not counted."
        if any(is_subsequence(cap, s) for v, s in scenes.items() if v != c.video_id):
            ambiguous += 1
    return (f"Held-out evaluation set: {corpus.num_videos} videos, {corpus.num_captions} captions; "
            f"{ambiguous} captions also describe another held-out video (ambiguous queries, "
            f"which lower every strategy's text-to-video recall alike).")


# Words of synthetic captions that name no attribute ("a large ... moving up on dots then ...").
CAPTION_GLUE = frozenset({"a", "an", "moving", "on", "then"})


def synthetic_vocabulary() -> dict[str, tuple[str, ...]]:
    """The synthetic benchmark's attribute words, by kind (what the tiny CLIP can understand)."""
    return {"shape": tuple(sy.SHAPES), "colour": tuple(sy.COLOURS), "size": tuple(sy.SIZES),
            "motion": tuple(sy.MOTIONS),
            "background": tuple(sy.BACKGROUND_PHRASE[b] for b in sy.BACKGROUNDS)}
