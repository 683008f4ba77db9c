"""Writing the corpus: every video rendered and encoded, the annotations in MSR-VTT's layout,
`synth_meta.json` (settings, per-video digests, scenes and captions) last as the completeness
mark; and the settings hash, reuse of a complete corpus, and reading its meta back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from xpool.config import Config, SynthConfig
from xpool.data.synthetic.encode import X264_OPTIONS, encode_mp4
from xpool.data.synthetic.render import RENDERER_VERSION, render_video
from xpool.data.synthetic.scenes import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES, caption_for
from xpool.data.synthetic.specs import VideoSpec, build_specs
from xpool.errors import ConfigError, CorpusError
from xpool.integrity import digest_of, file_sha256
from xpool.io import atomic_write, atomic_write_text, read_json, write_json

# Bump when the annotation layout changes (also part of the corpus hash).
FORMAT_VERSION = 1

META_FILE = "synth_meta.json"
DATA_FILE = "MSRVTT_data.json"
TRAIN_9K_FILE = "MSRVTT_train.9k.csv"
TRAIN_7K_FILE = "MSRVTT_train.7k.csv"
TEST_FILE = "MSRVTT_JSFUSION_test.csv"
# MSR-VTT's 7k list holds 7,010 of the 9k list's 9,000 training videos.
TRAIN_7K_FRACTION = 7010 / 9000


def _render_and_write(args: tuple[VideoSpec, SynthConfig, str]) -> str:
    """Render and encode one video; returns the sha256 of the mp4 written."""
    spec, cfg, path = args
    frames = render_video(spec, cfg)
    atomic_write(path, lambda p: encode_mp4(frames, cfg.fps, p))
    return file_sha256(path)


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


def corpus_meta(specs: Sequence[VideoSpec], cfg: SynthConfig,
                video_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """The content of `synth_meta.json` for `specs` (`video_sha256`: video id -> mp4 digest)."""
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
    write_json(root / META_FILE, corpus_meta(specs, cfg, sums))
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
