"""`xpool download` against a local HTTP server (127.0.0.1, started here) serving archives built here."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import write_video
from xpool.data.corpora import load_msrvtt, load_msvd
from xpool.data.download import ANNOTATION_SHA256, download_corpus, fetch
from xpool.data.video import sample_frames
from xpool.errors import DownloadError
from xpool.integrity import file_sha256


@dataclass
class Server:
    """State of the test server: what it serves, how it misbehaves, what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)  # send half the body, then cut the connection
    ignore_range: bool = False
    log: list[tuple[str, str | None]] = field(default_factory=list)
    base_url: str = ""

    def url(self, path: str) -> str:
        return self.base_url + path


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            range_header = self.headers.get("Range")
            state.log.append((self.path, range_header))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "not here")
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if self.path in state.drop_once:
                state.drop_once.discard(self.path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("src_videos")
    return {
        name: write_video(root / name, num_frames=6).read_bytes()
        for name in ("video0.mp4", "video1.mp4", "clipA_1_5.avi", "clipB_2_9.avi")
    }


def msrvtt_archives(small_videos: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """A miniature msrvtt_data.zip + MSRVTT.zip in the real archives' layouts, and their sums."""
    annotations = {
        "MSRVTT_JSFUSION_test.csv": b"key,vid_key,video_id,sentence\nret0,msr0,video0,a man sings\nret1,msr1,video1,a dog runs\n",
        "MSRVTT_train.9k.csv": b"video_id\nvideo0\n",
        "MSRVTT_train.7k.csv": b"video_id\nvideo0\n",
    }
    data = {
        "videos": [{"video_id": "video0"}, {"video_id": "video1"}],
        "sentences": [{"caption": "a man sings", "video_id": "video0", "sen_id": 0}],
    }
    members = {f"msrvtt_data/{k}": v for k, v in annotations.items()}
    members["msrvtt_data/MSRVTT_data.json"] = json.dumps(data).encode()
    padding = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    videos_zip = zip_bytes({
        "MSRVTT/videos/all/video0.mp4": small_videos["video0.mp4"],
        "MSRVTT/videos/all/video1.mp4": small_videos["video1.mp4"],
        "MSRVTT/annotation/MSR_VTT.json": b"{}",
        "MSRVTT/high-quality/structured-symlinks/padding.bin": padding,  # makes the transfer long enough to cut
    })
    files = {"/msrvtt_data.zip": zip_bytes(members), "/MSRVTT.zip": videos_zip}
    return files, {k: sha(v) for k, v in annotations.items()}


def test_download_survives_a_dropped_connection(server: Server, tmp_path: Path, small_videos: dict[str, bytes]) -> None:
    files, sums = msrvtt_archives(small_videos)
    server.files.update(files)
    server.drop_once.add("/MSRVTT.zip")
    urls = {"annotations": server.url("/msrvtt_data.zip"), "videos": server.url("/MSRVTT.zip")}
    root = download_corpus("msrvtt", tmp_path / "msrvtt", urls, progress=False, retries=2, backoff=0, checksums=sums)
    requests = [r for r in server.log if r[0] == "/MSRVTT.zip"]
    assert len(requests) == 2 and requests[0][1] is None
    assert requests[1][1] == f"bytes={len(files['/MSRVTT.zip']) // 2}-"  # resumed, not restarted
    for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv"):
        assert (root / name).is_file()
    assert (root / "videos" / "video0.mp4").read_bytes() == small_videos["video0.mp4"]
    assert sorted(p.name for p in (root / "videos").glob("*.mp4")) == ["video0.mp4", "video1.mp4"]
    assert not (root / "downloads").exists()  # archives removed after unpacking
    corpus = load_msrvtt(root, "test")  # the readers accept the layout
    assert corpus.num_videos == 2
    assert sample_frames(corpus.videos["video1"], 4)[0].shape == (4, 48, 64, 3)
    # a second run finds everything in place and downloads nothing
    before = len(server.log)
    download_corpus("msrvtt", root, urls, progress=False, checksums=sums)
    assert len(server.log) == before


def test_interrupted_run_resumes_on_the_next_run(server: Server, tmp_path: Path, small_videos: dict[str, bytes]) -> None:
    files, sums = msrvtt_archives(small_videos)
    server.files.update(files)
    server.drop_once.add("/MSRVTT.zip")
    urls = {"annotations": server.url("/msrvtt_data.zip"), "videos": server.url("/MSRVTT.zip")}
    root = tmp_path / "msrvtt"
    with pytest.raises(DownloadError, match="failed after") as info:
        download_corpus("msrvtt", root, urls, progress=False, retries=0, checksums=sums)
    assert "again to resume" in str(info.value)
    part = root / "downloads" / "MSRVTT.zip.part"
    half = len(files["/MSRVTT.zip"]) // 2
    assert part.stat().st_size == half
    download_corpus("msrvtt", root, urls, progress=False, retries=0, keep_archives=True, checksums=sums)
    assert server.log[-1] == ("/MSRVTT.zip", f"bytes={half}-")
    assert (root / "downloads" / "MSRVTT.zip").read_bytes() == files["/MSRVTT.zip"]
    assert not part.exists()
    assert (root / "videos" / "video1.mp4").read_bytes() == small_videos["video1.mp4"]


def test_checksum_mismatch_is_rejected(server: Server, tmp_path: Path) -> None:
    """A changed copy of the 1k-A test csv fails against the built-in sum of the real file."""
    fake = b"key,vid_key,video_id,sentence\nret0,msr9770,video9770,a person is connecting something\n"
    server.files["/msrvtt_data.zip"] = zip_bytes({
        "msrvtt_data/MSRVTT_JSFUSION_test.csv": fake,
        "msrvtt_data/MSRVTT_train.9k.csv": b"video_id\n",
        "msrvtt_data/MSRVTT_train.7k.csv": b"video_id\n",
        "msrvtt_data/MSRVTT_data.json": b"{}",
    })
    root = tmp_path / "msrvtt"
    urls = {"annotations": server.url("/msrvtt_data.zip"), "videos": server.url("/never-reached.zip")}
    with pytest.raises(DownloadError) as info:
        download_corpus("msrvtt", root, urls, progress=False, keep_archives=True)
    message = str(info.value)
    assert "MSRVTT_JSFUSION_test.csv" in message
    assert ANNOTATION_SHA256["MSRVTT_JSFUSION_test.csv"] in message and sha(fake) in message
    assert not (root / "MSRVTT_JSFUSION_test.csv").exists()  # readers never see the bad file
    assert (root / "MSRVTT_JSFUSION_test.csv.sha256-mismatch").read_bytes() == fake
    assert not (root / "downloads" / "msrvtt_data.zip").exists()  # refetched on the next run
    assert all(path != "/never-reached.zip" for path, _ in server.log)


def test_real_annotation_files_verify(server: Server, tmp_path: Path, fixtures_dir: Path, small_videos: dict[str, bytes]) -> None:
    """MSVD end to end with the real lists and captions, checked against the built-in sums."""
    ann = fixtures_dir / "annotations" / "msvd"
    server.files["/msvd_data.zip"] = zip_bytes({
        f"msvd_data/{name}": (ann / name).read_bytes() for name in ("train_list.txt", "val_list.txt", "test_list.txt")
    })
    server.files["/captions_msvd.json"] = (ann / "captions_msvd.json").read_bytes()
    server.files["/YouTubeClips.tar"] = tar_bytes({
        "YouTubeClips/clipA_1_5.avi": small_videos["clipA_1_5.avi"],
        "YouTubeClips/clipB_2_9.avi": small_videos["clipB_2_9.avi"],
        "YouTubeClips/README": b"not a video",
    })
    server.drop_once.add("/captions_msvd.json")
    urls = {k: server.url(f"/{n}") for k, n in
            [("annotations", "msvd_data.zip"), ("captions", "captions_msvd.json"), ("videos", "YouTubeClips.tar")]}
    root = download_corpus("msvd", tmp_path / "msvd", urls, progress=False, backoff=0)
    for name in ("captions_msvd.json", "train_list.txt", "val_list.txt", "test_list.txt"):
        assert file_sha256(root / name) == ANNOTATION_SHA256[name]
    assert sorted(p.name for p in (root / "videos").iterdir() if not p.name.startswith(".")) == [
        "clipA_1_5.avi", "clipB_2_9.avi"]
    assert load_msvd(root, "test", missing="ignore").num_captions == 27_763


def test_built_in_sums_equal_the_fixture_sums(fixtures_dir: Path) -> None:
    listed = {}
    for line in (fixtures_dir / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        if path.startswith("annotations/"):
            listed[Path(path).name] = digest
    assert listed == ANNOTATION_SHA256


def test_fetch_restarts_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    server.files["/blob"] = data
    server.ignore_range = True
    (tmp_path / "blob.part").write_bytes(b"stale bytes that must not be kept")
    path = fetch(server.url("/blob"), tmp_path / "blob", progress=False)
    assert path.read_bytes() == data
    assert server.log[-1][1] is not None  # it asked for a range, got the whole file, started over


def test_fetch_finishes_a_complete_part_file(server: Server, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["/blob"] = data
    (tmp_path / "blob.part").write_bytes(data)
    assert fetch(server.url("/blob"), tmp_path / "blob", progress=False).read_bytes() == data
    assert server.log == [("/blob", f"bytes={len(data)}-")]


def test_http_errors_and_damaged_archives(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        fetch(server.url("/absent"), tmp_path / "absent", progress=False)
    server.files["/msrvtt_data.zip"] = b"PK\x03\x04 this is not really a zip"
    urls = {"annotations": server.url("/msrvtt_data.zip"), "videos": server.url("/x.zip")}
    with pytest.raises(DownloadError, match="damaged"):
        download_corpus("msrvtt", tmp_path / "m", urls, progress=False, keep_archives=True)
    assert not (tmp_path / "m" / "downloads" / "msrvtt_data.zip").exists()
    with pytest.raises(DownloadError, match="failed after 0 bytes"):
        fetch("http://127.0.0.1:9/nothing-listens-here", tmp_path / "y", progress=False, retries=0)


def test_lsmdc_and_unknown_corpora(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="request") as info:
        download_corpus("lsmdc", tmp_path)
    assert "LSMDC16_challenge_1000_publictect.csv" in str(info.value)
    with pytest.raises(DownloadError, match="unknown corpus"):
        download_corpus("webvid", tmp_path)
