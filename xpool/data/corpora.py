"""Readers for MSR-VTT, MSVD, LSMDC and the synthetic benchmark, all returning one `Corpus` type.

Layout under a corpus root (docs/architecture.md, "Corpora on disk")::

    MSR-VTT   root/MSRVTT_data.json, root/MSRVTT_train.9k.csv, root/MSRVTT_train.7k.csv,
              root/MSRVTT_JSFUSION_test.csv, root/videos/video<N>.mp4
    MSVD      root/captions_msvd.json, root/{train,val,test}_list.txt, root/videos/<clip id>.avi
    LSMDC     root/LSMDC16_annos_{training,val}.csv, root/LSMDC16_challenge_1000_publictect.csv,
              root/videos/<movie>/<clip id>.avi

``videos_dir`` (default ``"videos"``) selects another folder with the same file names, e.g. the
``videos_3fps_224`` folder that ``xpool prepare compress`` writes.

``missing`` decides what happens to videos listed in the annotations but absent on disk:
``"error"`` (default) raises, ``"drop"`` drops them and their captions with a warning, ``"ignore"``
does not look at the disk at all (for inspecting annotations without the videos).
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpool.errors import CorpusError

__all__ = [
    "Caption",
    "Corpus",
    "load_msrvtt",
    "load_msvd",
    "load_lsmdc",
    "load_corpus",
    "validate_captions",
    "check_split_overlap",
    "lsmdc_movie",
    "CORPORA",
    "LSMDC_ACCESS",
    "MSRVTT_FILES",
    "MSVD_FILES",
    "LSMDC_FILES",
]

MISSING_MODES = ("error", "drop", "ignore")

MSRVTT_FILES = {
    "data": "MSRVTT_data.json",
    "9k": "MSRVTT_train.9k.csv",
    "7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
    # Not part of MSR-VTT: our convention for a held-out validation split in the same format as
    # the 1k-A test file (the synthetic benchmark can write one; `selection: val` reads it).
    "val": "MSRVTT_JSFUSION_val.csv",
}
MSVD_FILES = {
    "captions": "captions_msvd.json",
    "train": "train_list.txt",
    "val": "val_list.txt",
    "test": "test_list.txt",
}
LSMDC_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
LSMDC_ACCESS = (
    "LSMDC cannot be downloaded automatically: its owners (MPI for Informatics) share it only on "
    "request. Request access at https://sites.google.com/site/describingmovies/lsmdc-2016/download, "
    "then place LSMDC16_annos_training.csv, LSMDC16_annos_val.csv and "
    "LSMDC16_challenge_1000_publictect.csv in the corpus root and the clips under "
    "root/videos/<movie>/<clip id>.avi."
)

# "<movie>_HH.MM.SS.mmm-HH.MM.SS.mmm": the clip id is the movie name plus the clip's time span.
_LSMDC_TIMESTAMP = re.compile(r"_\d{2}\.\d{2}\.\d{2}\.\d{3}-\d{2}\.\d{2}\.\d{2}\.\d{3}$")


@dataclass
class Caption:
    """One caption of one video."""

    video_id: str
    text: str
    caption_id: str


@dataclass
class Corpus:
    """One split of one corpus: video id -> path, and the captions with their video ids."""

    name: str
    split: str
    root: Path
    videos: dict[str, Path]
    captions: list[Caption] = field(default_factory=list)

    def __repr__(self) -> str:  # the default would print every caption
        return (
            f"Corpus(name={self.name!r}, split={self.split!r}, root={str(self.root)!r}, "
            f"num_videos={self.num_videos}, num_captions={self.num_captions})"
        )

    @property
    def video_ids(self) -> list[str]:
        """Video ids, sorted (a stable order that does not depend on file or dict order)."""
        return sorted(self.videos)

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def subset(self, video_ids: Iterable[str]) -> Corpus:
        """The same split restricted to ``video_ids`` (and their captions)."""
        keep = set(video_ids)
        unknown = keep.difference(self.videos)
        if unknown:
            raise CorpusError(
                f"{len(unknown)} ids are not videos of {self.name}/{self.split}: {_first(unknown)}"
            )
        return Corpus(
            name=self.name,
            split=self.split,
            root=self.root,
            videos={v: p for v, p in self.videos.items() if v in keep},
            captions=[c for c in self.captions if c.video_id in keep],
        )


def _first(ids: Iterable[str], n: int = 5) -> str:
    ids = sorted(ids)
    shown = ", ".join(ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def _require_file(path: Path, corpus: str, hint: str) -> Path:
    if not path.is_file():
        raise CorpusError(f"{corpus}: annotation file {path} does not exist; {hint}")
    return path


def _download_hint(name: str, root: Path) -> str:
    if name == "msrvtt":
        return f"`xpool download msrvtt --root {root}` downloads it"
    if name == "msvd":
        return f"`xpool download msvd --root {root}` downloads it"
    if name == "synthetic":
        return "`xpool synth PROFILE` generates the synthetic benchmark"
    if name == "lsmdc":
        return LSMDC_ACCESS
    return f"see docs/architecture.md (Corpora on disk) for the layout of {name}"


def _check_missing(
    name: str, split: str, root: Path, videos_dir: str, videos: dict[str, Path],
    captions: list[Caption], missing: str,
) -> tuple[dict[str, Path], list[Caption]]:
    """Apply the ``missing`` policy; see the module docstring."""
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    if missing == "ignore":
        return videos, captions
    vdir = root / videos_dir
    if not vdir.is_dir():
        hint = _download_hint(name, root)
        if videos_dir != "videos":
            hint = f"`xpool prepare compress --root {root}` writes re-encoded videos there"
        raise CorpusError(f"{name}: video directory {vdir} does not exist; {hint}")
    # One listing per folder instead of a stat per video: much faster on network file systems.
    listing: dict[Path, set[str]] = {}

    def exists(p: Path) -> bool:
        parent = p.parent
        if parent not in listing:
            try:
                listing[parent] = {e.name for e in os.scandir(parent) if e.is_file()}
            except OSError:
                listing[parent] = set()
        return p.name in listing[parent]

    absent = [v for v, p in videos.items() if not exists(p)]
    if not absent:
        return videos, captions
    what = f"{len(absent)} of {len(videos)} {name}/{split} videos are missing under {vdir}: {_first(absent)}"
    if missing == "error":
        raise CorpusError(
            f"{what}. Set data.missing=drop (missing='drop' in load_corpus) to drop them and "
            f"their captions, or fetch them "
            f"({_download_hint(name, root)})."
        )
    gone = set(absent)
    videos = {v: p for v, p in videos.items() if v not in gone}
    kept = [c for c in captions if c.video_id not in gone]
    if not videos:
        raise CorpusError(f"{what}; none are left")
    warnings.warn(
        f"{what}; dropping them and their {len(captions) - len(kept)} captions", stacklevel=3
    )
    return videos, kept


def _annotation_text(path: Path) -> str:
    """An annotation file's text; not UTF-8 or unreadable is a CorpusError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); annotation files are read as "
            f"UTF-8: convert it (e.g. `iconv -f latin1 -t utf-8 {path.name}`) or fetch it again"
        ) from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read it ({e.strerror or e}); check its permissions "
                          f"or fetch it again") from None


def _annotation_json(path: Path) -> Any:
    try:
        return json.loads(_annotation_text(path))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                          f"the file is truncated or corrupt: fetch it again") from None


def _read_id_csv(path: Path) -> list[str]:
    """A one-column csv with header ``video_id``."""
    reader = csv.DictReader(_annotation_text(path).splitlines())
    if reader.fieldnames is None or "video_id" not in reader.fieldnames:
        raise CorpusError(f"{path}: expected a csv with a 'video_id' column, got {reader.fieldnames}")
    return [row["video_id"].strip() for row in reader if (row["video_id"] or "").strip()]


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in _annotation_text(path).splitlines() if line.strip()]


def load_msrvtt(
    root: str | Path,
    split: str,
    train_list: str = "9k",
    missing: str = "error",
    *,
    videos_dir: str = "videos",
    name: str = "msrvtt",
) -> Corpus:
    """MSR-VTT: ``train`` = every caption of the 9k/7k training videos (``MSRVTT_data.json``);
    ``test`` = 1k-A (``MSRVTT_JSFUSION_test.csv``, one caption per video); ``val`` = the same
    format in ``MSRVTT_JSFUSION_val.csv`` where one exists.

    ``train_list`` is ``"9k"``, ``"7k"`` or the file name of another id csv in ``root``.
    ``name`` only changes the corpus name and the hints in error messages (``"synthetic"``).
    """
    root = Path(root)
    hint = _download_hint(name, root)
    if split == "train":
        list_name = MSRVTT_FILES.get(train_list, train_list)
        if not list_name.endswith(".csv"):
            raise CorpusError(f"{name}: train_list must be '9k', '7k' or a csv file name, got {train_list!r}")
        ids = _read_id_csv(_require_file(root / list_name, name, hint))
        data_path = _require_file(root / MSRVTT_FILES["data"], name, hint)
        data = _annotation_json(data_path)
        if not isinstance(data, dict) or "sentences" not in data:
            raise CorpusError(f"{data_path}: no 'sentences' list (is this MSR-VTT's MSRVTT_data.json?)")
        wanted = set(ids)
        captions = []
        try:
            for k, s in enumerate(data["sentences"]):
                vid = s["video_id"]
                if vid in wanted:
                    cid = str(s.get("sen_id", k))
                    captions.append(Caption(video_id=vid, text=s["caption"], caption_id=cid))
        except (KeyError, TypeError) as exc:
            raise CorpusError(f"{data_path}: sentence {k} lacks 'video_id' or 'caption' ({exc!r})") from exc
        without = wanted.difference(c.video_id for c in captions)
        if without:
            raise CorpusError(
                f"{data_path}: {len(without)} training videos of {list_name} have no caption: {_first(without)}"
            )
    elif split in ("test", "val"):
        path = _require_file(root / MSRVTT_FILES[split], name, hint)
        captions = []
        ids = []
        reader = csv.DictReader(_annotation_text(path).splitlines())
        need = {"key", "video_id", "sentence"}
        if reader.fieldnames is None or not need.issubset(reader.fieldnames):
            raise CorpusError(f"{path}: expected columns key, vid_key, video_id, sentence; got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            if any(row.get(k) is None for k in need):
                raise CorpusError(f"{path}:{line_no}: the row has fewer fields than the header "
                                  f"(truncated or corrupt file): fetch it again")
            vid = row["video_id"].strip()
            captions.append(Caption(video_id=vid, text=row["sentence"], caption_id=row["key"]))
            ids.append(vid)
    else:
        raise CorpusError(f"{name}: unknown split {split!r}; expected 'train', 'test' or 'val'")
    videos = {vid: root / videos_dir / f"{vid}.mp4" for vid in dict.fromkeys(ids)}
    videos, captions = _check_missing(name, split, root, videos_dir, videos, captions, missing)
    return Corpus(name=name, split=split, root=root, videos=videos, captions=captions)


def load_msvd(
    root: str | Path, split: str, missing: str = "error", *, videos_dir: str = "videos"
) -> Corpus:
    """MSVD: the clips of ``{split}_list.txt`` with all their captions from ``captions_msvd.json``."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise CorpusError(f"msvd: unknown split {split!r}; expected 'train', 'val' or 'test'")
    hint = _download_hint("msvd", root)
    clips = _read_lines(_require_file(root / MSVD_FILES[split], "msvd", hint))
    cap_path = _require_file(root / MSVD_FILES["captions"], "msvd", hint)
    all_captions: dict[str, list[str]] = _annotation_json(cap_path)
    if not isinstance(all_captions, dict):
        raise CorpusError(f"{cap_path}: expected a mapping of clip id -> captions")
    without = [c for c in clips if not all_captions.get(c)]
    if without:
        raise CorpusError(f"{cap_path}: {len(without)} clips of {split}_list.txt have no caption: {_first(without)}")
    captions = [
        Caption(video_id=clip, text=text, caption_id=f"{clip}#{j}")
        for clip in clips
        for j, text in enumerate(all_captions[clip])
    ]
    videos = {clip: root / videos_dir / f"{clip}.avi" for clip in dict.fromkeys(clips)}
    videos, captions = _check_missing("msvd", split, root, videos_dir, videos, captions, missing)
    return Corpus(name="msvd", split=split, root=root, videos=videos, captions=captions)


# The one clip the authors' reader skips (datasets/lsmdc_dataset.py).
LSMDC_AUTHORS_SKIPPED = "1012_Unbreakable_00.05.16.065-00.05.21.941"
LSMDC_CAPTION_MODES = ("authors", "all")


def lsmdc_movie(clip_id: str) -> str:
    """The movie folder of an LSMDC clip, by the authors' rule: ``clip_id.split('.')[0][:-3]``.

    For ``<movie>_HH.MM.SS.mmm-HH.MM.SS.mmm`` that is ``<movie>`` (the text before the first
    dot, less its ``_HH``).
    """
    folder = clip_id.split(".")[0][:-3]
    if not folder:
        raise CorpusError(
            f"lsmdc: clip id {clip_id!r} does not look like <movie>_HH.MM.SS.mmm-HH.MM.SS.mmm; "
            "its movie folder (the authors' rule: the text before the first '.', less 3 "
            "characters) would be empty"
        )
    return folder


def load_lsmdc(
    root: str | Path, split: str, missing: str = "error", *, videos_dir: str = "videos",
    captions: str = "authors",
) -> Corpus:
    """LSMDC16: tab-separated rows of 6 fields (clip id first, caption last).

    ``captions="authors"`` mirrors the authors' reader: one caption per clip id (a later row of
    the same clip replaces the earlier one, as their dict does), and the clip
    ``LSMDC_AUTHORS_SKIPPED`` is left out. ``captions="all"`` keeps every row. Videos are
    ``root/videos_dir/<lsmdc_movie(clip id)>/<clip id>.avi``.
    """
    root = Path(root)
    if split not in LSMDC_FILES:
        raise CorpusError(f"lsmdc: unknown split {split!r}; expected 'train', 'val' or 'test'")
    if captions not in LSMDC_CAPTION_MODES:
        raise CorpusError(f"lsmdc: captions must be one of {LSMDC_CAPTION_MODES}, got {captions!r}")
    path = _require_file(root / LSMDC_FILES[split], "lsmdc", LSMDC_ACCESS)
    rows: list[Caption] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 6:
                raise CorpusError(
                    f"{path}:{line_no}: expected 6 tab-separated fields, got {len(fields)}: {line[:120]!r}"
                )
            clip_id, text = fields[0].strip(), fields[-1].strip()
            rows.append(Caption(video_id=clip_id, text=text, caption_id=f"{clip_id}#{line_no}"))
    if captions == "authors":
        by_clip: dict[str, Caption] = {}
        for c in rows:
            if c.video_id != LSMDC_AUTHORS_SKIPPED:
                by_clip[c.video_id] = c  # insertion order of the first row, text of the last
        rows = list(by_clip.values())
    videos = {
        c.video_id: root / videos_dir / lsmdc_movie(c.video_id) / f"{c.video_id}.avi" for c in rows
    }
    videos, rows = _check_missing("lsmdc", split, root, videos_dir, videos, rows, missing)
    return Corpus(name="lsmdc", split=split, root=root, videos=videos, captions=rows)


def _load_synthetic(root: str | Path, split: str, **kw: Any) -> Corpus:
    """The synthetic benchmark is written in MSR-VTT's layout, so MSR-VTT's reader reads it."""
    return load_msrvtt(root, split, name="synthetic", **kw)


CORPORA = {
    "msrvtt": load_msrvtt,
    "msvd": load_msvd,
    "lsmdc": load_lsmdc,
    "synthetic": _load_synthetic,
}


def _annotation_source(key: str, root: Path, split: str, kw: dict[str, Any]) -> Path:
    """The file a split's captions come from (for error messages)."""
    if key in ("msrvtt", "synthetic"):
        if split == "train":
            return root / MSRVTT_FILES["data"]
        return root / MSRVTT_FILES.get(split, split)
    if key == "msvd":
        return root / (MSVD_FILES["captions"] if split == "train" else MSVD_FILES.get(split, split))
    return root / LSMDC_FILES.get(split, split)


def validate_captions(corpus: Corpus, source: Path) -> None:
    """Empty captions (any split) and duplicated rows (test/val) are errors, listed all at once.

    A duplicated row is a caption id seen twice, or, except in MSVD (whose crowd-sourced captions
    repeat within a clip), the same caption of the same video twice: either would count one
    query twice in the metrics.
    """
    empty = [f"{c.video_id} ({c.caption_id})" for c in corpus.captions if not c.text.strip()]
    if empty:
        raise CorpusError(
            f"{source}: {len(empty)} empty captions in {corpus.name}/{corpus.split}: "
            f"{_first(empty)}; an empty query changes the metrics silently: fix or remove them")
    if corpus.split == "train":
        return
    seen_ids: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    dups: list[str] = []
    for c in corpus.captions:
        pair = (c.video_id, c.text.strip())
        if c.caption_id in seen_ids or (corpus.name != "msvd" and pair in seen_pairs):
            dups.append(f"{c.video_id} ({c.caption_id})")
        seen_ids.add(c.caption_id)
        seen_pairs.add(pair)
    if dups:
        raise CorpusError(
            f"{source}: {len(dups)} duplicated rows in {corpus.name}/{corpus.split}: "
            f"{_first(dups)}; each would count twice in the metrics: remove the duplicates")


def check_split_overlap(train: Corpus, test: Corpus, allow: bool = False) -> list[str]:
    """Videos listed in both splits (a train/test leak): an error unless `allow`; returns them."""
    both = sorted(set(train.videos) & set(test.videos))
    if both and not allow:
        raise CorpusError(
            f"{len(both)} {test.name} videos are in both the {train.split} and the {test.split} "
            f"split: {_first(both, 20)}. Test results on videos seen in training measure "
            f"memorisation: fix the split files, or set data.allow_overlap=true to allow it")
    if both:
        warnings.warn(f"{len(both)} videos in both {train.split} and {test.split} "
                      f"(data.allow_overlap=true): {_first(both)}", stacklevel=2)
    return both


def load_corpus(name: str, root: str | Path, split: str, **kw: Any) -> Corpus:
    """Dispatch to the reader of ``name`` (``msrvtt``, ``msvd``, ``lsmdc`` or ``synthetic``),
    then validate its captions (see `validate_captions`)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; expected one of {sorted(CORPORA)}")
    source = _annotation_source(key, Path(root), split, kw)
    try:
        corpus = CORPORA[key](root, split, **kw)
    except UnicodeDecodeError as e:  # a reader that opens its files itself (LSMDC)
        raise CorpusError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to "
                          f"UTF-8 or fetch it again") from None
    validate_captions(corpus, source)
    return corpus
