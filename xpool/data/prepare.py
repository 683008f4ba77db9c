"""`xpool prepare compress`: re-encode a corpus's videos to 3 fps with short side 224.

The authors trained on videos re-encoded this way (CLIP4Clip's compression script: ffmpeg's
``fps`` filter at 3 fps and a scale to short side 224, upscaling smaller videos too). Decoding such
files is several times faster than decoding the originals.

Where the output goes: ``root/videos/<relative path>`` is written to
``<out_root>/<relative path>`` with the *same file name*, default ``out_root = root/videos_3fps_224``
(``videos_{fps}fps_{short_side}``). Keeping the names (extension included) means the corpus readers
need no other change than ``videos_dir="videos_3fps_224"`` (the profile's ``data.videos_dir``); an
absolute ``out_root`` works the same way. The video stream is H.264 (libx264, yuv420p) in every
case; its container follows the extension (MP4 for MSR-VTT's .mp4, AVI for MSVD's and LSMDC's .avi,
as ffmpeg does in the authors' script). Audio is dropped.

Files are encoded to a temporary name and moved into place, so a video that exists in the output
folder is complete and is skipped on the next run. Failures (unreadable or truncated inputs, encoder
errors) are collected in the report; they do not stop the other videos.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from xpool.data.video import check_container
from xpool.errors import VideoDecodeError, XPoolError

__all__ = ["compress_videos", "compress_one", "CompressReport", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v"}
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".webm": "matroska"}
REPORT_FILE = "compress_report.json"


@dataclass
class CompressReport:
    """What a `compress_videos` run did."""

    source_dir: str
    out_dir: str
    total: int = 0
    encoded: int = 0
    skipped: int = 0  # already present in the output folder
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, error)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [
            f"compressed {self.source_dir} -> {self.out_dir}: {self.total} videos, {self.encoded} encoded, "
            f"{self.skipped} already done, {len(self.failed)} failed ({self.seconds:.1f} s)"
        ]
        lines += [f"  FAILED {path}: {error}" for path, error in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more (see {REPORT_FILE})")
        return "\n".join(lines)


def _even(x: float) -> int:
    return max(2, int(x) // 2 * 2)


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width): short side exactly ``short_side``, long side scaled and rounded down to even."""
    if height <= width:
        return short_side, _even(width * short_side / height)
    return _even(height * short_side / width), short_side


def compress_one(
    src: str | Path, dst: str | Path, fps: int = 3, short_side: int = 224, preset: str = "medium", crf: int = 23
) -> int:
    """Re-encode one video; returns the number of frames written. Raises on failure.

    ``preset``/``crf`` are libx264's (defaults: ffmpeg's own, which the authors' script used).
    Writes ``dst`` atomically (temporary file + ``os.replace``).
    """
    import av  # imported here so worker processes only load what they need

    src, dst = Path(src), Path(dst)
    check_container(src)  # a truncated input must fail rather than yield a shortened video
    fmt = _CONTAINERS.get(dst.suffix.lower(), "mp4")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    written = 0
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise VideoDecodeError(f"{src}: no video stream")
            ist = inp.streams.video[0]
            ist.thread_type = "AUTO"
            height, width = output_size(ist.codec_context.height, ist.codec_context.width, short_side)
            with av.open(str(tmp), "w", format=fmt) as out:
                ost = out.add_stream("libx264", rate=fps)
                ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
                ost.options = {"preset": preset, "crf": str(crf)}
                graph = av.filter.Graph()
                chain = [
                    graph.add_buffer(template=ist),
                    graph.add("fps", f"fps={fps}"),  # ffmpeg's -r: drop/duplicate to a constant rate
                    graph.add("scale", f"{width}:{height}"),
                    graph.add("format", "yuv420p"),
                    graph.add("buffersink"),
                ]
                for a, b in zip(chain, chain[1:], strict=False):
                    a.link_to(b)
                graph.configure()

                def drain() -> None:
                    nonlocal written
                    while True:
                        try:
                            frame = graph.pull()
                        except (av.BlockingIOError, av.EOFError):
                            return
                        frame.pts = written
                        frame.time_base = Fraction(1, fps)
                        for packet in ost.encode(frame):
                            out.mux(packet)
                        written += 1

                for frame in inp.decode(ist):
                    graph.push(frame)
                    drain()
                graph.push(None)
                drain()
                for packet in ost.encode():
                    out.mux(packet)
        if written == 0:
            raise VideoDecodeError(f"{src}: no frames decoded")
        os.replace(tmp, dst)
        return written
    finally:
        tmp.unlink(missing_ok=True)


def _task(src: str, dst: str, fps: int, short_side: int, preset: str, crf: int) -> tuple[str, str | None]:
    """Worker entry point: never raises, so one bad video cannot stop the pool."""
    try:
        compress_one(src, dst, fps, short_side, preset, crf)
        return src, None
    except Exception as exc:  # any decoder/encoder failure is reported, not fatal
        return src, f"{type(exc).__name__}: {exc}"


def _videos_under(src_dir: Path) -> list[Path]:
    return sorted(
        p for p in src_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
    )


def compress_videos(
    root: str | Path,
    out_root: str | Path | None = None,
    fps: int = 3,
    short_side: int = 224,
    workers: int = 2,
    progress: bool = True,
    *,
    preset: str = "medium",
    crf: int = 23,
) -> CompressReport:
    """Re-encode every video under ``root/videos`` (see the module docstring for the layout).

    Runs ``workers`` processes in parallel (``workers <= 1``: in this process), skips videos that
    are already in the output folder, and returns (and writes to ``<out>/compress_report.json``) a
    report listing the failures. ``preset``/``crf`` go to libx264 (ffmpeg's defaults by default).
    """
    if fps <= 0 or short_side <= 0:
        raise ValueError(f"fps and short_side must be positive, got {fps}, {short_side}")
    root = Path(root)
    src_dir = root / "videos"
    if not src_dir.is_dir():
        raise XPoolError(
            f"no video folder {src_dir}: `xpool download msrvtt|msvd --root {root}` creates it"
        )
    out_dir = Path(out_root) if out_root is not None else root / f"videos_{fps}fps_{short_side}"
    if out_dir.resolve() == src_dir.resolve():
        raise XPoolError(f"output folder {out_dir} is the source folder; choose another out_root")
    start = time.perf_counter()
    report = CompressReport(source_dir=str(src_dir), out_dir=str(out_dir))
    todo: list[tuple[Path, Path]] = []
    for src in _videos_under(src_dir):
        dst = out_dir / src.relative_to(src_dir)
        report.total += 1
        if dst.is_file():
            report.skipped += 1
        else:
            todo.append((src, dst))
    bar = tqdm(total=len(todo), desc="compress", unit="video", disable=not progress)

    def record(src: str, error: str | None) -> None:
        if error is None:
            report.encoded += 1
        else:
            report.failed.append((str(Path(src).relative_to(src_dir)), error))
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for src, dst in todo:
                record(*_task(str(src), str(dst), fps, short_side, preset, crf))
        else:
            # spawn, not fork: decoder libraries keep threads that a forked child must not inherit
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_task, str(s), str(d), fps, short_side, preset, crf) for s, d in todo]
                for future in as_completed(futures):
                    record(*future.result())
    finally:
        bar.close()
    report.failed.sort()
    report.seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(report), indent=1) + "\n")
    os.replace(tmp, out_dir / REPORT_FILE)
    return report
