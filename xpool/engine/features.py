"""Frozen-feature mode: run the frozen CLIP once over a corpus, train only pooling heads after.

`extract_features(cfg, split)` embeds every video (uniform frames, test transform) and caption of
a split with the frozen backbone and stores them in fp16, one file per split holding an index
(video ids, captions, caption -> video). It works in shards written atomically, so an interrupted
extraction resumes where it stopped. This is the CPU-feasible way to compare pooling strategies
on real corpora: extraction is the only pass through the image tower.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from xpool.config import Config
from xpool.data.datasets import EvalSet, VideoClipDataset
from xpool.data.splits import ensure_data, load_split
from xpool.data.synthetic import settings_hash
from xpool.data.transforms import transform_for
from xpool.determinism import STUDY_THREADS
from xpool.engine.embed import Embeddings, embed_texts, embed_videos
from xpool.engine.pretrain import resolve_pretrained
from xpool.engine.setup import pick_device, torch_threads
from xpool.errors import FileReadError, XPoolError
from xpool.exact_gemm import gemm_key, gemm_mode
from xpool.integrity import file_sha256
from xpool.io import atomic_write_text, torch_load, torch_save
from xpool.model.backbone import build_backbone
from xpool.paths import resolve


def features_dir(cfg: Config) -> Path:
    """`cache/features/<corpus>-<hash>`: keyed by everything that changes the features."""
    key = {
        "corpus": cfg.data.corpus, "root": str(cfg.data_root.resolve()),
        "train_list": cfg.data.train_list, "val_videos": cfg.data.val_videos,
        "num_frames": cfg.data.num_frames, "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "pretrain": cfg.fingerprint(["pretrain"]) if cfg.model.pretrained == "synthetic" else None,
    }
    # Frame sampling, resizing and which videos/captions: only when they differ from the
    # defaults, so caches written before these keys existed stay valid.
    defaults = type(cfg.data)()
    for k in ("sampling_rule", "antialias", "videos_dir", "lsmdc_captions"):
        if getattr(cfg.data, k) != getattr(defaults, k):
            key[k] = getattr(cfg.data, k)
    if cfg.model.gemm != "native":
        key["gemm"] = gemm_key(cfg.model.gemm)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return resolve("cache") / "features" / f"{cfg.data.corpus}-{digest}"


def feature_key(cfg: Config, split: str) -> str:
    """A name for one split's features that does not depend on where the checkout is (unlike
    `features_dir`, keyed by the corpus's absolute path): the reproduction check's key."""
    synth = settings_hash(cfg.synth) if cfg.data.corpus == "synthetic" else None
    key = {"corpus": cfg.data.corpus, "synth": synth, "train_list": cfg.data.train_list,
           "val_videos": cfg.data.val_videos, "num_frames": cfg.data.num_frames,
           "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
           "pretrain": cfg.fingerprint(["pretrain"]) if cfg.model.pretrained == "synthetic" else None}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.data.corpus}-{digest}/{split}"


def feature_path(cfg: Config, split: str) -> Path:
    return features_dir(cfg) / f"{split}.pt"


def feature_sha256_path(path: Path) -> Path:
    """The sidecar holding a feature file's sha256, written with it, checked on every load."""
    return path.with_name(path.name + ".sha256")


def verify_features(path: Path) -> str:
    """The recorded sha256 of a feature file, after checking the file still has it."""
    side = feature_sha256_path(path)
    if not side.is_file():
        raise XPoolError(f"{side} is missing (features made by an older xpool, or an interrupted "
                         f"write): delete {path} so that they are extracted again")
    expected = side.read_text().split()[0]
    st = path.stat()
    if _VERIFIED.get(path) == (st.st_mtime_ns, st.st_size, expected):
        return expected
    actual = file_sha256(path)
    if actual != expected:
        raise XPoolError(f"{path}: sha256 {actual}, but {side} records {expected}: the file was "
                         f"changed or damaged; delete {path} so that the features are extracted "
                         f"again")
    _VERIFIED[path] = (st.st_mtime_ns, st.st_size, expected)
    return expected


# Feature files verified in this process: a study loads the same file once per run.
_VERIFIED: dict[Path, tuple[int, int, str]] = {}


@torch.no_grad()
def extract_features(cfg: Config, split: str, shard_size: int = 64, progress: bool = True,
                     max_shards: int | None = None) -> Path:
    """Embed `split` with the frozen backbone into the cache; returns the file's path.

    Resumable: finished shards are kept and skipped. `max_shards` stops early (for tests that
    simulate an interruption); the merged file is only written once every shard exists. Pretrained
    and extracted with STUDY_THREADS threads; the file's sha256 goes to `<split>.pt.sha256`.
    """
    out = feature_path(cfg, split)
    if out.is_file():
        verify_features(out)
        return out
    # A fixed thread count: the features' rounding depends on it (see xpool.determinism).
    with torch_threads(STUDY_THREADS), gemm_mode(cfg.model.gemm):
        return _extract(cfg, split, out, shard_size, progress, max_shards)


def _extract(cfg: Config, split: str, out: Path, shard_size: int, progress: bool,
             max_shards: int | None) -> Path:
    ensure_data(cfg, progress)
    device = pick_device()
    corpus = load_split(cfg, split)
    es = EvalSet(corpus)
    # Only the CLIP towers: extraction needs no pooling head.
    backbone = build_backbone(cfg.model.backbone, pretrained=resolve_pretrained(cfg))
    backbone.to(device).eval()
    transform = transform_for(backbone, train=False, antialias=cfg.data.antialias)
    parts = out.parent / f"{split}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    paths = [corpus.videos[v] for v in es.video_ids]
    n_shards = (len(paths) + shard_size - 1) // shard_size
    done = 0
    for i in tqdm(range(n_shards), desc=f"extract {split} features", disable=not progress):
        shard = parts / f"videos_{i:05d}.pt"
        if shard.is_file():
            continue
        if max_shards is not None and done >= max_shards:
            return out  # interrupted on purpose; the next call resumes
        clips = VideoClipDataset(paths[i * shard_size : (i + 1) * shard_size], transform,
                                 cfg.data.num_frames, rule=cfg.data.sampling_rule)
        feats = embed_videos(backbone, clips, cfg.eval.batch_size, device, cfg.data.num_workers)
        torch_save(feats.half(), shard)
        done += 1
    text_shard = parts / "texts.pt"
    if not text_shard.is_file():
        torch_save(embed_texts(backbone, es.texts, cfg.eval.batch_size, device).half(), text_shard)
    frames = torch.cat([_load_shard(parts / f"videos_{i:05d}.pt") for i in range(n_shards)])
    torch_save({"video_ids": list(es.video_ids), "frame_feats": frames, "texts": list(es.texts),
                "text_feats": _load_shard(text_shard),
                "video_of_text": torch.from_numpy(np.asarray(es.video_of_text)),
                "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained}, out)
    # The digest is written after the file: a file without one is treated as incomplete.
    atomic_write_text(feature_sha256_path(out), f"{file_sha256(out)}  {out.name}\n")
    shutil.rmtree(parts)
    return out


def load_features(cfg: Config, split: str) -> Embeddings:
    """The cached features of a split (fp16); a clear error when they were never extracted."""
    path = feature_path(cfg, split)
    if not path.is_file():
        raise XPoolError(
            f"no cached features for split '{split}' at {path}; run "
            f"`xpool extract-features {cfg.profile} --splits {split}` first"
        )
    verify_features(path)
    d = torch_load(path, "feature cache", _rebuild_hint(cfg, split, path))
    need = ("video_ids", "frame_feats", "texts", "text_feats", "video_of_text")
    if not isinstance(d, dict) or any(k not in d for k in need):
        raise FileReadError(f"feature cache {path} lacks {list(need)}; "
                            f"{_rebuild_hint(cfg, split, path)}")
    return Embeddings(d["text_feats"], d["frame_feats"], d["video_of_text"].numpy(),
                      d["video_ids"], d["texts"])


def _rebuild_hint(cfg: Config, split: str, path: Path) -> str:
    return (f"delete {path} and rebuild it with `xpool extract-features {cfg.profile} "
            f"--splits {split}` (training re-extracts it too)")


def _load_shard(path: Path) -> torch.Tensor:
    """One finished shard of an extraction; a corrupt shard names itself for deletion (deleting
    it makes the next extraction recompute just that shard)."""
    feats = torch_load(path, "feature shard", "delete it and rerun the extraction, which "
                       "recomputes only the missing shards")
    if not isinstance(feats, torch.Tensor):
        raise FileReadError(f"feature shard {path} holds {type(feats).__name__}, not a tensor; "
                            f"delete it and rerun the extraction")
    return feats


def feature_dim(cfg: Config) -> int:
    """Embedding width of the cached features (reads the training split's file)."""
    return load_features(cfg, "train").dim


class FeatureTrainDataset(Dataset):
    """Training pairs from cached features: item t is (frames of caption t's video, caption t)."""

    def __init__(self, features: Embeddings):
        self.features = features

    def __len__(self) -> int:
        return len(self.features.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = int(self.features.video_of_text[i])
        return {"frame_feats": self.features.frame_embeds[v].float(),
                "text_feats": self.features.text_embeds[i].float()}


def collate_features(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack feature items into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
