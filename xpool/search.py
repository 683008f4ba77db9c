"""Search your own videos: index a folder once, then rank it for any caption.

``xpool index DIR`` embeds every video under ``DIR`` with a profile's CLIP (and optionally a
checkpoint: one of this project's runs or an authors' ``model_best.pth``):

- frames are decoded once (``data.num_frames`` uniform frames, short side <= the model's input)
  into a decoded-frame cache inside the index, and each video's frame embeddings are stored as
  their own file, keyed by the file's path, size and modification time: an interrupted or
  repeated ``index`` resumes where it stopped and re-embeds only new or changed files;
- a file that cannot be decoded is reported (path and cause) and skipped; it stays listed in
  ``index.json`` as failed, and is retried by the next ``index``.

``xpool search "a caption" --top 5`` ranks the indexed videos with the index's pooling head, or
another one (``--pooling``; a head with parameters needs them from the checkpoint). X-Pool goes
through ``xpool.similarity``'s exact fast path. For text-conditioned heads the weight of each
frame in the pooled embedding is shown too. ``rank_videos`` is the one place that ranks, so a
shortlist-then-rerank method for very large folders can replace it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from xpool import reporting
from xpool.authors import authors_model
from xpool.config import Config, config_from_dict, save_config
from xpool.data.frame_cache import FrameCache
from xpool.data.transforms import transform_for
from xpool.engine.evaluate import pretrained_model
from xpool.engine.setup import pick_device
from xpool.errors import XPoolError
from xpool.io import atomic_write, read_json, write_json
from xpool.model.build import load_model_state, pooling_options
from xpool.model.checkpoints import is_authors_file, load_authors_checkpoint
from xpool.model.pooling import AttentionPooling, TopKPooling, XPool, build_pooling
from xpool.similarity import similarity_matrix
from xpool.twostage import two_stage_search

__all__ = [
    "VIDEO_SUFFIXES",
    "Hit",
    "IndexExplorer",
    "IndexReport",
    "VideoIndex",
    "build_index",
    "explore_index",
    "find_videos",
    "frame_weights",
    "index_widget",
    "load_index",
    "rank_videos",
    "search_method",
    "search",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".3gp", ".ts")
INDEX_FILE = "index.json"
_FORMAT = 1


def find_videos(folder: str | Path) -> list[Path]:
    """Video files (by suffix) under ``folder``, recursively, in sorted order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise XPoolError(f"video folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not any(part.startswith(".xpool") for part in p.parts))


def _model_for(cfg: Config, checkpoint: str | Path | None) -> nn.Module:
    """The retrieval model of ``cfg`` with ``checkpoint`` loaded (authors' or a run's)."""
    if checkpoint is None:
        if cfg.model.frozen:
            raise XPoolError("frozen-* profiles have no image tower to embed new videos with; use "
                             "a paper-* profile or give --checkpoint")
        if str(cfg.model.pretrained).strip().lower() in ("", "none", "null"):
            # Unseeded random weights differ between `index` and `search`: the scores would
            # compare two different models.
            raise XPoolError("model.pretrained is none and no --checkpoint was given: the index "
                             "would be made with random weights; give --checkpoint PATH or "
                             "model.pretrained=openai (or a HF folder / weights file)")
        return pretrained_model(cfg)
    path = Path(checkpoint).expanduser()
    if is_authors_file(path):
        model = authors_model(cfg)
        load_authors_checkpoint(model, path)
        return model
    model = pretrained_model(cfg)
    load_model_state(model, path)
    return model


def _video_key(path: Path, cfg: Config, model_id: str) -> str:
    st = path.stat()
    ident = f"v{_FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{cfg.data.num_frames}|{model_id}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _model_id(cfg: Config, checkpoint: str | Path | None) -> str:
    ident = cfg.fingerprint(["model", "data"])
    if checkpoint is not None:
        p = Path(checkpoint).expanduser().resolve()
        st = p.stat()
        ident += f"|{p}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


@dataclass
class IndexReport:
    """What one ``build_index`` did."""

    index_dir: Path
    embedded: list[str]
    reused: list[str]
    failed: dict[str, str]  # path -> cause
    seconds: float

    def summary(self) -> str:
        lines = [f"index {self.index_dir}: {len(self.embedded)} embedded, {len(self.reused)} "
                 f"reused, {len(self.failed)} failed ({self.seconds:.1f} s)"]
        lines += [f"  skipped {p}: {cause}" for p, cause in sorted(self.failed.items())]
        return "\n".join(lines)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file object: np.save given a name not ending in .npy would append the suffix.
    with path.open("wb") as f:
        np.save(f, array.astype(np.float32), allow_pickle=False)


def _save_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(index_dir / INDEX_FILE, manifest)


def build_index(cfg: Config, videos_dir: str | Path, index_dir: str | Path,
                checkpoint: str | Path | None = None, batch_size: int | None = None,
                progress: bool = True, log: Callable[[str], None] = print) -> IndexReport:
    """Embed every video under ``videos_dir`` into ``index_dir`` (resumable; broken files skipped).

    Raises:
        XPoolError: a missing folder, an index made with another model (delete it or choose
            another ``index_dir``), or a checkpoint that does not fit the profile.
    """
    start = time.perf_counter()
    videos = find_videos(videos_dir)
    index_dir = Path(index_dir).expanduser()
    model_id = _model_id(cfg, checkpoint)
    manifest_path = index_dir / INDEX_FILE
    if manifest_path.is_file():
        old = read_json(manifest_path)
        if old.get("model_id") != model_id:
            raise XPoolError(
                f"{index_dir} holds an index made with another model or profile "
                f"({old.get('profile')}, checkpoint {old.get('checkpoint')}); delete it or "
                "choose another --out"
            )
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / "embeds").mkdir(exist_ok=True)
    save_config(cfg, index_dir / "config.yaml")

    device = pick_device()
    model = _model_for(cfg, checkpoint).to(device).eval()
    bb = model.backbone
    cache = FrameCache(index_dir / "frames", cfg.data.num_frames, bb.image_size)
    transform = transform_for(bb, train=False)
    manifest: dict[str, Any] = {
        "format": _FORMAT, "model_id": model_id, "profile": cfg.profile,
        "checkpoint": str(Path(checkpoint).expanduser().resolve()) if checkpoint else None,
        "videos_dir": str(Path(videos_dir).expanduser().resolve()),
        "num_frames": cfg.data.num_frames, "image_size": bb.image_size,
        "embed_dim": bb.embed_dim, "videos": {},
    }
    report = IndexReport(index_dir, [], [], {}, 0.0)
    todo: list[tuple[str, str, Path]] = []
    for path in videos:
        key = _video_key(path, cfg, model_id)
        rel = str(path.resolve())
        if (index_dir / "embeds" / f"{key}.npy").is_file():
            manifest["videos"][rel] = {"key": key, "status": "ok"}
            report.reused.append(rel)
        else:
            todo.append((rel, key, path))
    batch = max(1, int(batch_size or cfg.eval.batch_size))
    for i in tqdm(range(0, len(todo), batch), desc="index videos", disable=not progress,
                  leave=False):
        clips, keys = [], []
        for rel, key, path in todo[i : i + batch]:
            try:
                clips.append(transform(cache.get(path)))
                keys.append((rel, key))
            except (XPoolError, ValueError, RuntimeError, OSError) as err:
                cause = str(err).splitlines()[0] if str(err) else type(err).__name__
                report.failed[rel] = cause
                manifest["videos"][rel] = {"key": key, "status": "failed", "error": cause}
                log(f"skipping {path}: {cause}")
        if clips:
            with torch.no_grad():
                embeds = model.encode_frames(torch.stack(clips).to(device)).float().cpu().numpy()
            for (rel, key), e in zip(keys, embeds, strict=True):
                atomic_write(index_dir / "embeds" / f"{key}.npy", lambda p, e=e: _save_npy(p, e))
                manifest["videos"][rel] = {"key": key, "status": "ok"}
                report.embedded.append(rel)
        _save_manifest(index_dir, manifest)  # after every batch: an interrupted run resumes here
    _save_manifest(index_dir, manifest)
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class VideoIndex:
    """A loaded index: the files, their frame embeddings and the model that made them."""

    index_dir: Path
    paths: list[str]
    frame_embeds: Tensor  # [V, F, D]
    cfg: Config
    checkpoint: str | None
    failed: dict[str, str]

    def frames(self, i: int) -> np.ndarray:
        """The decoded uint8 frames [F, H, W, 3] of video ``i`` (from the index's frame cache)."""
        size = int(read_json(self.index_dir / INDEX_FILE).get("image_size", 224))
        cache_dir = self.index_dir / "frames"
        cache = FrameCache(cache_dir, self.cfg.data.num_frames, size)
        return cache.get(self.paths[i])


def load_index(index_dir: str | Path) -> VideoIndex:
    """Read an index written by ``build_index``.

    Raises:
        XPoolError: no index there, or an index without any embedded video.
    """
    index_dir = Path(index_dir).expanduser()
    manifest_path = index_dir / INDEX_FILE
    if not manifest_path.is_file():
        raise XPoolError(f"no video index at {index_dir} (no {INDEX_FILE}): run `xpool index DIR "
                         f"--out {index_dir}` first")
    manifest = read_json(manifest_path)
    cfg = config_from_dict(yaml.safe_load((index_dir / "config.yaml").read_text()),
                           str(index_dir / "config.yaml"))
    paths, embeds, failed = [], [], {}
    for rel, entry in sorted(manifest["videos"].items()):
        if entry["status"] != "ok":
            failed[rel] = entry.get("error", "failed")
            continue
        paths.append(rel)
        embeds.append(torch.from_numpy(np.load(index_dir / "embeds" / f"{entry['key']}.npy")))
    if not paths:
        raise XPoolError(f"the index at {index_dir} has no embedded video "
                         f"({len(failed)} failed to decode)")
    return VideoIndex(index_dir, paths, torch.stack(embeds), cfg, manifest.get("checkpoint"),
                      failed)


# Above this many videos a search shortlists by mean pooling and reranks exactly (two-stage).
# From bench/twostage.py (README, "Large galleries"): at 10^4 videos a K = 500 rerank costs more
# than the exhaustive pass; at 10^5 it keeps R@1/5/10 within 0.3 points at ~1/16 of the time.
TWO_STAGE_ABOVE = 20_000
SHORTLIST_K = 500


def search_method(num_videos: int, top: int) -> str:
    """How a gallery of ``num_videos`` is searched: "exhaustive" or "two-stage (K=...)"."""
    if num_videos > TWO_STAGE_ABOVE and SHORTLIST_K > top:
        return f"two-stage (mean-pooled shortlist of {SHORTLIST_K}, exact rerank)"
    return "exhaustive (exact)"


def rank_videos(pooling: nn.Module, text_embed: Tensor, frame_embeds: Tensor,
                top: int) -> tuple[Tensor, Tensor]:
    """(indices, scores) of the ``top`` videos for one text, best first.

    Exhaustive exact similarities (X-Pool through ``xpool.similarity``'s fast path) up to
    ``TWO_STAGE_ABOVE`` videos; above, ``xpool.twostage``: a mean-pooled shortlist of
    ``SHORTLIST_K`` (exact torch top-k, no FAISS needed) reranked exactly by the head."""
    num_videos = frame_embeds.shape[0]
    k = min(int(top), num_videos)
    if search_method(num_videos, k).startswith("two-stage"):
        scores, idx = two_stage_search(pooling, text_embed, frame_embeds, k=SHORTLIST_K, top=k,
                                       kind="exact")
        return idx[0], scores[0].float()
    sims = similarity_matrix(pooling, text_embed, frame_embeds).float()[0]
    scores, idx = sims.topk(k)
    return idx, scores


@torch.no_grad()
def frame_weights(pooling: nn.Module, text_embed: Tensor, frame_embeds: Tensor) -> Tensor | None:
    """Each frame's weight in the pooled embedding, [V, F], for text-conditioned heads; None
    for text-agnostic ones. X-Pool: attention averaged over heads; parameter-free attention:
    its softmax; top-k: 1/k on the chosen frames."""
    if isinstance(pooling, XPool):
        _, attn = pooling(text_embed, frame_embeds, return_attention=True)
        return attn[:, 0]
    t = F.normalize(text_embed, dim=-1)
    e = F.normalize(frame_embeds, dim=-1)
    cos = torch.einsum("vfd,d->vf", e, t[0])
    if isinstance(pooling, AttentionPooling):
        return torch.softmax(cos / pooling.temperature, dim=-1)
    if isinstance(pooling, TopKPooling):
        k = min(pooling.k, cos.shape[1])
        w = torch.zeros_like(cos)
        return w.scatter_(1, cos.topk(k, dim=-1).indices, 1.0 / k)
    return None


@dataclass
class Hit:
    """One search result."""

    rank: int
    path: str
    score: float
    weights: list[float] | None  # per frame, for text-conditioned heads


_MODELS: dict[tuple[str, str | None, str], nn.Module] = {}


def _search_model(index: VideoIndex, pooling: str | None) -> nn.Module:
    """The index's model (cached per process), with another head if ``pooling`` asks for one."""
    key = (str(index.index_dir.resolve()), index.checkpoint, index.cfg.fingerprint())
    model = _MODELS.get(key)
    if model is None:
        model = _model_for(index.cfg, index.checkpoint).eval()
        _MODELS[key] = model
    if pooling is None or pooling == index.cfg.model.pooling:
        return model
    cfg = dataclasses.replace(index.cfg, model=dataclasses.replace(index.cfg.model, pooling=pooling))
    head = build_pooling(pooling, model.embed_dim, **pooling_options(cfg))
    if any(True for _ in head.parameters()):
        raise XPoolError(
            f"pooling {pooling!r} has trained parameters this index's checkpoint does not hold "
            f"(it was made with {index.cfg.model.pooling!r}); use a parameter-free head (mean, "
            "topk, attention) or index with a checkpoint of that head"
        )
    swapped = type(model)(model.backbone, head.eval())
    return swapped


@torch.no_grad()
def search(index: VideoIndex, caption: str, top: int = 5, pooling: str | None = None) -> list[Hit]:
    """The ``top`` indexed videos for ``caption``, best first, with frame weights where the head
    is text-conditioned."""
    if not caption.strip():
        raise XPoolError("search: the caption is empty")
    model = _search_model(index, pooling)
    text = model.encode_text(model.backbone.tokenize([caption])).float()
    frames = index.frame_embeds.to(text.device)
    idx, scores = rank_videos(model.pooling, text, frames, top)
    weights = frame_weights(model.pooling, text, frames[idx])
    return [Hit(r + 1, index.paths[int(i)], float(s),
                None if weights is None else [round(float(w), 4) for w in weights[r]])
            for r, (i, s) in enumerate(zip(idx, scores, strict=True))]


def format_hits(hits: Sequence[Hit]) -> str:
    """Search results as text: rank, score, file, and per-frame weights where there are any."""
    lines = []
    for h in hits:
        lines.append(f"{h.rank:>3}  {h.score:.4f}  {h.path}")
        if h.weights is not None:
            lines.append("       frame weights: " + " ".join(f"{w:.2f}" for w in h.weights))
    return "\n".join(lines)


class IndexExplorer:
    """Notebook 08 over an index of your own videos: ``show(query)`` gives the figures."""

    default_query = "a person is talking"

    def __init__(self, index_dir: str | Path, pooling: str | None = None) -> None:
        self.index = load_index(index_dir)
        self.pooling = pooling

    def show(self, query: str, k: int = 5) -> list[Any]:
        """The top-k videos' frame strips, and the best match's frame weights where the head is
        text-conditioned."""
        index = self.index
        hits = search(index, query, top=k, pooling=self.pooling)
        pos = {p: i for i, p in enumerate(index.paths)}
        results = [{"frames": index.frames(pos[h.path]), "video_id": Path(h.path).name,
                    "score": h.score, "is_gt": False} for h in hits]
        figs = [reporting.plot_top5(query, results, title=f"top-{len(hits)} of "
                                    f"{len(index.paths)} indexed videos for: {query!r}")]
        if hits and hits[0].weights is not None:
            figs.append(reporting.plot_attention(
                query, results[0]["frames"], np.asarray(hits[0].weights),
                title=f"frame weights of the best match {Path(hits[0].path).name} for {query!r}"))
        return figs


def explore_index(index_dir: str | Path, query: str, top: int = 5,
                  pooling: str | None = None) -> list[Any]:
    """``IndexExplorer(index_dir, pooling).show(query, top)``."""
    return IndexExplorer(index_dir, pooling).show(query, k=top)


def index_widget(explorer: IndexExplorer, k: int = 5) -> Any:
    """A text box and a button: type a caption, see the top-k indexed videos."""
    # Notebook-only dependencies: the command line never needs them.
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    box = w.Text(placeholder="type a caption", description="query", layout=w.Layout(width="80%"))
    button = w.Button(description="search", button_style="primary")
    out = w.Output()

    def run(_: Any) -> None:
        out.clear_output()
        with out:
            try:
                for fig in explorer.show(box.value, k=k):
                    display(fig)
                    plt.close(fig)
            except XPoolError as e:
                print(f"error: {e}")

    button.on_click(run)
    return w.VBox([w.HBox([box, button]), out])


def default_index_dir() -> Path:
    """Where ``xpool index`` writes and ``xpool search`` reads by default (``XPOOL_INDEX`` or
    ``index/`` in the working directory)."""
    return Path(os.environ.get("XPOOL_INDEX", "index"))
