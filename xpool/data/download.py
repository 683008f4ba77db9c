"""`xpool download msrvtt|msvd`: fetch the public archives and unpack them into a corpus root.

Sources (docs/architecture.md, "Corpora on disk"; override any of them with ``urls``):

* MSR-VTT: CLIP4Clip's ``msrvtt_data.zip`` (``MSRVTT_data.json`` and the three split csv files)
  and Frozen-in-Time's ``MSRVTT.zip`` (~6.7 GB, videos under ``MSRVTT/videos/all/``).
* MSVD: CLIP4Clip's ``msvd_data.zip`` (the train/val/test lists), X-Pool's ``captions_msvd.json``
  (from the authors' repository, pinned to a commit) and ``YouTubeClips.tar`` (1,970 .avi clips).
* LSMDC: only on request from its owners; ``download_corpus("lsmdc", ...)`` explains how.

Downloads go to ``root/downloads/<name>.part`` and resume with an HTTP Range request after an
interruption (automatically ``retries`` times, or when the command is run again). Annotation files
are checked against the sha256 sums of the files the study was checked with (the same sums as
``../shared/fixtures/SHA256SUMS``); a mismatch is an error that names the file and both sums, and
the bad file is moved aside (``<name>.sha256-mismatch``) and its archive deleted, so a rerun
fetches it again. Files are written under temporary names and moved into place, so an interrupted
run never leaves a half-written file where the readers look.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from xpool.data.corpora import LSMDC_ACCESS, MSRVTT_FILES, MSVD_FILES
from xpool.errors import DownloadError
from xpool.integrity import file_sha256

__all__ = ["download_corpus", "fetch", "ANNOTATION_SHA256", "DEFAULT_URLS"]

# sha256 of the public annotation files, identical to ../shared/fixtures/SHA256SUMS.
ANNOTATION_SHA256 = {
    "MSRVTT_JSFUSION_test.csv": "e61144b312c8a2fc2126f96504c981f8c23c05b3ba9655a56e2af50ac8a4b16a",
    "MSRVTT_train.7k.csv": "ca0d04c34310168b620c90c67eaec702b37398943965f5e1f9f44af8f193da7d",
    "MSRVTT_train.9k.csv": "0a7ece2418e1f7ac5680555a04ddfef8950293ac3c4bdd6584fb0fa6cc0ff7d3",
    "captions_msvd.json": "11bc68e8441438121c1c7321526ef1d1fc6553d3b801baef1cca1d3429e306b1",
    "test_list.txt": "95eacd1fddb1d88cd7144267913ef02d0ecb8cc94a88bc484035433a2d8f9c7a",
    "train_list.txt": "abfb8ab5660b464cf547d63a37a369920ff92c5f547af80f07aedd709df335d3",
    "val_list.txt": "9527cf1ef6c8fe2fb1ecfda0e1856acc563fecef5ff0a409b5d908b65c1e6ed4",
}

_XPOOL_COMMIT = "e0b404034714083196889ce66406863da2a14202"
DEFAULT_URLS: dict[str, dict[str, str]] = {
    "msrvtt": {
        "annotations": "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip",
        "videos": "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
    },
    "msvd": {
        "annotations": "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip",
        "captions": (
            f"https://raw.githubusercontent.com/layer6ai-labs/xpool/{_XPOOL_COMMIT}/data/MSVD/captions_msvd.json"
        ),
        "videos": "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar",
    },
}

_CHUNK = 1 << 20
_MSRVTT_VIDEO = re.compile(r"^video\d+\.mp4$")


@dataclass(frozen=True)
class _Source:
    """One thing to download and what to take from it."""

    key: str  # key in the urls dict
    filename: str  # name under root/downloads
    kind: str  # "zip", "tar" or "file"
    files: tuple[str, ...] = ()  # annotation files (by base name) it must provide
    optional: tuple[str, ...] = ()  # annotation files it may provide
    video_suffix: str = ""  # for video archives: the suffix of the video files to unpack


_SOURCES: dict[str, list[_Source]] = {
    "msrvtt": [
        _Source("annotations", "msrvtt_data.zip", "zip",
                files=(MSRVTT_FILES["data"], MSRVTT_FILES["9k"], MSRVTT_FILES["7k"], MSRVTT_FILES["test"])),
        _Source("videos", "MSRVTT.zip", "zip", video_suffix=".mp4"),
    ],
    "msvd": [
        _Source("annotations", "msvd_data.zip", "zip",
                files=(MSVD_FILES["train"], MSVD_FILES["val"], MSVD_FILES["test"]),
                optional=(MSVD_FILES["captions"],)),
        _Source("captions", "captions_msvd.json", "file", files=(MSVD_FILES["captions"],)),
        _Source("videos", "YouTubeClips.tar", "tar", video_suffix=".avi"),
    ],
}


def _content_range_total(value: str | None) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


class _Interrupted(Exception):
    """The connection ended before the whole body arrived."""


def fetch(
    url: str,
    dest: str | Path,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    A partial ``.part`` file from an earlier run is resumed, not restarted (unless the server
    ignores the Range header). After ``retries`` failed resumptions it raises DownloadError and
    leaves the ``.part`` file for the next run.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "xpool-download/1", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                _receive(response, url, part, offset, dest.name, progress)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # Nothing left to send: the partial file may already be complete.
                total = _content_range_total(exc.headers.get("Content-Range"))
                if total == offset:
                    os.replace(part, dest)
                    return dest
                part.unlink(missing_ok=True)  # inconsistent with the server's file: start over
                failures += 1
            elif exc.code >= 500 or exc.code == 429:
                failures += 1
            else:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            cause: BaseException = exc
        except (_Interrupted, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failures += 1
            cause = exc
        if failures > retries:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"{url}: download failed after {have} bytes ({cause}); run the same command "
                f"again to resume from {part}"
            ) from cause
        time.sleep(backoff * min(2 ** (failures - 1), 30))


def _receive(response: Any, url: str, part: Path, offset: int, label: str, progress: bool) -> None:
    """Write a response body to ``part`` (appending when the server honoured our Range)."""
    status = getattr(response, "status", 200)
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset and status == 206:
        start = _content_range_start(response.headers.get("Content-Range"))
        if start is not None and start != offset:
            raise _Interrupted(f"server resumed at byte {start}, expected {offset}")
        total = _content_range_total(response.headers.get("Content-Range"))
        mode = "ab"
    else:
        offset = 0  # a plain 200: the server ignored the Range header, so start again
        total = length
        mode = "wb"
    expected_end = total if total is not None else (offset + length if length is not None else None)
    with part.open(mode) as f, tqdm(
        total=expected_end, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, disable=not progress, leave=False,
    ) as bar:
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            f.write(chunk)
            bar.update(len(chunk))
    size = part.stat().st_size
    # urllib does not always raise when a connection closes early, so compare sizes ourselves.
    if expected_end is not None and size != expected_end:
        raise _Interrupted(f"got {size} of {expected_end} bytes")


@contextmanager
def _atomic_target(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unsafe_member(archive: Path, name: str, why: str) -> DownloadError:
    return DownloadError(
        f"{archive}: refusing to unpack it: member {name!r} {why}. A well-formed corpus archive "
        f"has none; delete {archive} and fetch it again from a trusted source (--url)")


def _check_member_name(archive: Path, name: str) -> None:
    """Absolute paths and `..` components could write outside the corpus root."""
    pure = name.replace("\\", "/")
    if pure.startswith("/") or re.match(r"^[A-Za-z]:", pure):
        raise _unsafe_member(archive, name, "has an absolute path")
    if ".." in pure.split("/"):
        raise _unsafe_member(archive, name, "has a '..' component (path traversal)")


def _members(archive: Path, kind: str) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(member name, opener) for each regular file of a zip or tar archive.

    Every member is checked first: an absolute or `..` path, a symbolic or hard link, or a device
    node makes the whole archive an error (never flattened into place).
    """
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _unsafe_member(archive, info.filename, "is a symbolic link")
            for info in infos:
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
    else:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for member in members:
                _check_member_name(archive, member.name)
                if member.issym() or member.islnk():
                    raise _unsafe_member(archive, member.name,
                                         f"is a link (to {member.linkname!r})")
                if not (member.isfile() or member.isdir()):
                    raise _unsafe_member(archive, member.name, "is a device, FIFO or other "
                                         "special file")
            for member in members:
                if member.isfile():
                    yield member.name, lambda member=member: tf.extractfile(member)


@contextmanager
def _damaged_archive_is_refetched(archive: Path, kind: str) -> Iterator[None]:
    """Turn archive read errors into DownloadError and delete the archive so a rerun refetches it."""
    try:
        yield
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        archive.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive}: damaged or not a {kind} archive ({exc}); deleted it, run again to refetch"
        ) from exc


def _verify(path: Path, checksums: dict[str, str], archive: Path | None) -> None:
    expected = checksums.get(path.name)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        quarantine = path.with_name(path.name + ".sha256-mismatch")
        os.replace(path, quarantine)
        if archive is not None:
            archive.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}; "
            f"the file was moved to {quarantine}"
            + (f" and {archive.name} deleted so a rerun fetches it again" if archive is not None else "")
        )


def _annotations_ready(root: Path, names: tuple[str, ...], checksums: dict[str, str]) -> bool:
    for name in names:
        path = root / name
        if not path.is_file():
            return False
        if name in checksums and file_sha256(path) != checksums[name]:
            return False
    return True


def _unpack_annotations(source: _Source, archive: Path, root: Path, checksums: dict[str, str]) -> None:
    wanted = set(source.files) | set(source.optional)
    found: set[str] = set()
    if source.kind == "file":
        shutil.copyfile(archive, root / f".{archive.name}.tmp")
        os.replace(root / f".{archive.name}.tmp", root / source.files[0])
        found.add(source.files[0])
    else:
        for name, open_member in _members(archive, source.kind):
            base = Path(name).name
            if base in wanted and base not in found and not Path(name).name.startswith("._"):
                with open_member() as src, _atomic_target(root / base) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                found.add(base)
    absent = set(source.files) - found
    if absent:
        raise DownloadError(f"{archive.name} does not contain {sorted(absent)}")
    for base in sorted(found):
        _verify(root / base, checksums, archive)


def _unpack_videos(source: _Source, archive: Path, root: Path, progress: bool) -> int:
    videos = root / "videos"
    count = 0
    with tqdm(desc=f"unpack {archive.name}", unit=" videos", disable=not progress, leave=False) as bar:
        for name, open_member in _members(archive, source.kind):
            base = Path(name).name
            if not base.endswith(source.video_suffix) or base.startswith("._"):
                continue  # skip metadata, macOS resource forks and the like
            if source.video_suffix == ".mp4" and not _MSRVTT_VIDEO.match(base):
                continue
            target = videos / base
            if not target.is_file():
                with open_member() as src, _atomic_target(target) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            count += 1
            bar.update(1)
    if count == 0:
        raise DownloadError(f"{archive.name} contains no {source.video_suffix} videos")
    return count


def download_corpus(
    name: str,
    root: str | Path,
    urls: dict[str, str] | None = None,
    progress: bool = True,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    keep_archives: bool = False,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Download and unpack MSR-VTT or MSVD into ``root`` in the layout the readers expect.

    Args:
        name: ``"msrvtt"`` or ``"msvd"`` (``"lsmdc"`` raises with instructions to request it).
        root: the corpus root.
        urls: overrides of ``DEFAULT_URLS[name]`` by key (``annotations``, ``videos``, ``captions``).
        progress: show progress bars and status lines.
        retries: automatic resumptions per file after an interrupted transfer.
        keep_archives: keep ``root/downloads`` after unpacking (deleted by default: MSR-VTT's is 6.7 GB).
        checksums: overrides of ``ANNOTATION_SHA256`` by file name (for tests and mirrors).

    Returns:
        ``root``. Running it again skips whatever is already in place.
    """
    key = name.lower().replace("-", "")
    if key == "lsmdc":
        raise DownloadError(LSMDC_ACCESS)
    if key not in _SOURCES:
        raise DownloadError(f"unknown corpus {name!r}: `xpool download` knows msrvtt and msvd (lsmdc: on request)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sums = dict(ANNOTATION_SHA256, **(checksums or {}))
    sources = {**DEFAULT_URLS[key], **(urls or {})}
    downloads = root / "downloads"
    fetched: list[Path] = []
    have_from_zip: set[str] = set()

    def say(message: str) -> None:
        if progress:
            tqdm.write(f"{key}: {message}")

    for source in _SOURCES[key]:
        if not source.video_suffix:
            needed = tuple(f for f in source.files if f not in have_from_zip)
            if _annotations_ready(root, needed, sums):
                have_from_zip.update(source.files + source.optional)
                say(f"{source.key}: already in place")
                continue
            archive = fetch(sources[source.key], downloads / source.filename, progress, retries, timeout, backoff)
            fetched.append(archive)
            with _damaged_archive_is_refetched(archive, source.kind):
                _unpack_annotations(source, archive, root, sums)
            have_from_zip.update(f for f in source.files + source.optional if (root / f).is_file())
            checked = [f for f in source.files if f in sums]
            unchecked = [f for f in source.files if f not in sums]
            parts = []
            if checked:
                parts.append(f"{', '.join(checked)} verified (sha256)")
            if unchecked:
                parts.append(f"{', '.join(unchecked)} unpacked, not verified (no known checksum)")
            say(f"{source.key}: {'; '.join(parts)}")
        else:
            marker = root / "videos" / f".complete-{source.filename}"
            if marker.is_file():
                say(f"videos: already unpacked ({marker.read_text().strip()})")
                continue
            archive = fetch(sources[source.key], downloads / source.filename, progress, retries, timeout, backoff)
            fetched.append(archive)
            with _damaged_archive_is_refetched(archive, source.kind):
                count = _unpack_videos(source, archive, root, progress)
            marker.write_text(f"{count} videos from {source.filename}\n")
            say(f"videos: {count} unpacked into {root / 'videos'}")
    if not keep_archives:
        # Also archives fetched by an earlier, interrupted run (not in `fetched` this time).
        for archive in {*fetched, *(downloads / src.filename for src in _SOURCES[key])}:
            archive.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return root
