"""Faults a demanding user meets: files that would run code, two processes on one run, first use
from an empty folder, unreadable files, broken test videos, bad annotations, interrupts, unsafe
archives. Each test fails without the safeguard it checks."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from xpool.config import load_config
from xpool.errors import (
    CorpusError,
    DiskFullError,
    DownloadError,
    FileReadError,
    RunLockedError,
    UnsafeFileError,
    VideoDecodeError,
    XPoolError,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory with the smoke corpus and tiny CLIP, and one finished mean-pooling run."""
    from xpool.data.synthetic import ensure_corpus
    from xpool.engine.pretrain import ensure_pretrained
    from xpool.engine.train import train

    wd = tmp_path_factory.mktemp("reliability")
    old, old_root = os.getcwd(), os.environ.get("XPOOL_ROOT")
    os.chdir(wd)
    os.environ["XPOOL_ROOT"] = str(wd)  # relative results/, data/, cache/ resolve here
    cfg = load_config("smoke")
    ensure_corpus(cfg)
    ensure_pretrained(cfg, progress=False)
    train(smoke(**{"model.pooling": "mean", "output.run_name": "base"}), progress=False)
    yield wd
    os.chdir(old)
    if old_root is None:
        os.environ.pop("XPOOL_ROOT", None)
    else:
        os.environ["XPOOL_ROOT"] = old_root


def smoke(**overrides):
    return load_config("smoke", overrides)


def base_record():
    from xpool.engine.runs import RunRecord

    return RunRecord.for_config(smoke(**{"model.pooling": "mean", "output.run_name": "base"}))


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def corpus_copy(workdir: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke corpus (to damage), used through `data.root`."""
    src = smoke().data_root
    dst = tmp_path / "corpus"
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- 1. code from files


def test_payload_in_a_checkpoint_is_refused_and_never_runs(workdir, tmp_path):
    from xpool.engine.evaluate import evaluate_checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": Payload(marker)}, ckpt)
    with pytest.raises(UnsafeFileError, match="evil.pt.*could run code"):
        evaluate_checkpoint(smoke(**{"model.pooling": "mean"}), ckpt, progress=False)
    assert not marker.exists()


def test_payload_in_last_pt_is_refused_on_resume(workdir, tmp_path):
    from xpool.engine.runs import RunRecord
    from xpool.engine.train import train

    cfg = smoke(**{"model.pooling": "mean", "output.run_name": "evil-resume"})
    record = RunRecord.for_config(cfg)
    record.checkpoint_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "state": Payload(marker)}, record.last_checkpoint)
    with pytest.raises(UnsafeFileError, match="last.pt"):
        train(cfg, resume=True, progress=False)
    assert not marker.exists()


def test_payload_in_a_feature_shard_and_cache_is_refused(workdir, tmp_path):
    from xpool.engine.features import extract_features, feature_path, load_features

    cfg = smoke(**{"model.frozen": True})
    marker = tmp_path / "pwned"
    parts = feature_path(cfg, "test").parent / "test.parts"
    parts.mkdir(parents=True, exist_ok=True)
    torch.save(Payload(marker), parts / "videos_00000.pt")
    with pytest.raises(UnsafeFileError, match="videos_00000.pt"):
        extract_features(cfg, "test", progress=False)
    assert not marker.exists()
    (parts / "videos_00000.pt").unlink()  # as the error says: the next extraction redoes it
    extract_features(cfg, "test", progress=False)
    path = feature_path(cfg, "test")
    good = path.read_bytes()
    torch.save({"video_ids": Payload(marker)}, path)
    # First line of defence: the file no longer has the sha256 its sidecar records.
    with pytest.raises(XPoolError, match=r"test\.pt: sha256 .* changed or damaged"):
        load_features(cfg, "test")
    assert not marker.exists()
    # Second: with the sidecar rewritten to match, the safe load still refuses the payload.
    from xpool.engine.features import feature_sha256_path
    from xpool.integrity import file_sha256

    sidecar = feature_sha256_path(path)
    good_sidecar = sidecar.read_text()
    sidecar.write_text(file_sha256(path) + "\n")
    with pytest.raises(UnsafeFileError, match=r"feature cache .*test\.pt"):
        load_features(cfg, "test")
    assert not marker.exists()
    path.write_bytes(good)
    sidecar.write_text(good_sidecar)


def test_payload_in_test_embeddings_is_refused_by_figures(workdir, tmp_path):
    from xpool.engine.embed import Embeddings

    marker = tmp_path / "pwned"
    path = tmp_path / "test_embeddings.pt"
    torch.save({"text_embeds": torch.zeros(2, 4), "texts": Payload(marker)}, path)
    with pytest.raises(UnsafeFileError, match="test embeddings"):
        Embeddings.load(path)
    assert not marker.exists()
    # The real file of a finished run still loads.
    emb = Embeddings.load(base_record().run_dir / "test_embeddings.pt")
    assert emb.frame_embeds.shape[0] == len(emb.video_ids) == 12


def test_no_unsafe_load_left_in_the_package():
    hits = [f"{p}:{i}" for p in (ROOT / "xpool").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if "weights_only=False" in line]
    assert hits == []


def test_checkpoints_load_with_weights_only(workdir):
    ckpt = torch.load(base_record().last_checkpoint, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "state", "config"} <= set(ckpt)


# ----------------------------------------------------------------------------- 2. run lock

_HOLD = """
import sys, time
from xpool.config import load_config
from xpool.engine.runs import RunLock, RunRecord
cfg = load_config("smoke", {"model.pooling": "mean", "output.run_name": "locked"})
lock = RunLock(RunRecord.for_config(cfg)).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_process_on_a_run_is_refused_and_a_killed_holder_does_not_block(workdir):
    from xpool.engine.runs import RunRecord
    from xpool.engine.train import train

    cfg = smoke(**{"model.pooling": "mean", "output.run_name": "locked"})
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], cwd=workdir, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"run locked .*PID {proc.pid}\b"):
            train(cfg, progress=False)
    finally:
        proc.kill()  # kill -9: the lock file stays behind, the kernel drops the lock
        proc.wait()
    record = RunRecord.for_config(cfg)
    assert record.lock_path.read_text().split()[0] == str(proc.pid)
    assert train(cfg, progress=False).finished
    assert len(record.train_log()) == record.metrics()["total_steps"]


# ----------------------------------------------------------------------------- 3. first use


def test_frozen_profile_works_from_an_empty_folder(tmp_path, monkeypatch):
    from xpool.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPOOL_ROOT", str(tmp_path))  # the project root is this empty folder
    assert main(["extract-features", "smoke", "model.frozen=true", "--splits", "test"]) == 0
    assert list((tmp_path / "cache" / "features").glob("synthetic-*/test.pt"))


# ----------------------------------------------------------------------------- 4. unreadable files


def test_truncated_last_pt_names_the_file(workdir, tmp_path):
    from xpool.engine.runs import RunRecord
    from xpool.engine.train import train

    cfg = smoke(**{"model.pooling": "mean", "output.run_name": "truncated"})
    record = RunRecord.for_config(cfg)
    record.checkpoint_dir.mkdir(parents=True)
    data = base_record().last_checkpoint.read_bytes()
    record.last_checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileReadError, match=r"last\.pt is truncated or corrupt.*--fresh"):
        train(cfg, resume=True, progress=False)


def test_garbage_feature_shard_names_the_file_and_rebuilds_once_deleted(workdir):
    from xpool.engine.features import extract_features, feature_path, load_features

    cfg = smoke(**{"model.frozen": True, "data.num_frames": 2})
    parts = feature_path(cfg, "test").parent / "test.parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "videos_00000.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(FileReadError, match=r"feature shard .*videos_00000\.pt.*delete it"):
        extract_features(cfg, "test", progress=False)
    (parts / "videos_00000.pt").unlink()
    extract_features(cfg, "test", progress=False)
    assert load_features(cfg, "test").frame_embeds.shape[:2] == (12, 2)


def test_corrupt_metrics_json_names_the_file(workdir, tmp_path):
    from xpool.engine.runs import RunRecord

    src = base_record().run_dir
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "metrics.json").write_text('{"t2v": {"R1": 8.3')
    with pytest.raises(FileReadError, match=r"metrics\.json is not valid JSON.*--fresh"):
        RunRecord(run).metrics()
    (run / "train_log.csv").write_bytes(b"step,loss\n1,0.5\n2\n")
    with pytest.raises(FileReadError, match=r"train_log\.csv:3"):
        RunRecord(run).train_log()
    (run / "config.yaml").write_text("data: [unclosed\n")
    with pytest.raises(FileReadError, match=r"config\.yaml is not valid YAML"):
        RunRecord(run).config()


def test_non_utf8_annotation_file_names_the_file(workdir, tmp_path):
    from xpool.data.corpora import load_corpus

    root = corpus_copy(workdir, tmp_path)
    test_csv = root / "MSRVTT_JSFUSION_test.csv"
    test_csv.write_bytes(test_csv.read_bytes().replace(b"a ", "\u00e9 ".encode("latin-1"), 1))
    with pytest.raises(CorpusError, match=r"MSRVTT_JSFUSION_test\.csv: not UTF-8.*iconv"):
        load_corpus("synthetic", root, "test")
    data_json = root / "MSRVTT_data.json"
    data_json.write_bytes(data_json.read_bytes()[:-40])
    with pytest.raises(CorpusError, match=r"MSRVTT_data\.json: not valid JSON"):
        load_corpus("synthetic", root, "train")


def test_full_disk_says_no_space_left_and_keeps_the_old_file(tmp_path, monkeypatch):
    from xpool.io import atomic_write, torch_save, write_json

    target = tmp_path / "metrics.json"
    write_json(target, {"ok": 1})

    def full(p):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"no space left writing {target}"):
        atomic_write(target, full)
    assert json.loads(target.read_text()) == {"ok": 1}
    # torch.save into a file whose writes fail as a full disk's do (/dev/full)
    real_open = Path.open

    def open_full(self, mode="r", *a, **kw):
        if mode == "wb" and self.name.endswith(".tmp"):
            return real_open(Path("/dev/full"), "wb")
        return real_open(self, mode, *a, **kw)

    ckpt = tmp_path / "last.pt"
    torch_save({"w": torch.zeros(3)}, ckpt)
    monkeypatch.setattr(Path, "open", open_full)
    with pytest.raises(DiskFullError, match=f"no space left writing {ckpt}"):
        torch_save({"w": torch.ones(100_000)}, ckpt)
    monkeypatch.undo()
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.zeros(3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_eval_of_a_mismatched_checkpoint_names_the_differing_keys(workdir):
    from xpool.engine.evaluate import evaluate_checkpoint

    with pytest.raises(XPoolError, match=r"differing keys: model\.pooling: checkpoint 'mean', "
                                         r"config 'xpool'.*model\.pooling=mean"):
        evaluate_checkpoint(smoke(), base_record().best_checkpoint, progress=False)


# ----------------------------------------------------------------------------- 5. late failures


def test_broken_test_videos_are_all_reported_before_training(workdir, tmp_path, monkeypatch):
    import xpool.engine.train as tr
    from xpool.engine.preflight import check_videos

    root = corpus_copy(workdir, tmp_path)
    videos = sorted((root / "videos").glob("*.mp4"))
    test_ids = [line.split(",")[2] for line in
                (root / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]]
    broken = [root / "videos" / f"{v}.mp4" for v in test_ids[:2]]
    for p in broken:
        p.write_bytes(p.read_bytes()[:200])
    steps = []
    monkeypatch.setattr(tr, "_train_step", lambda *a: steps.append(1) or (0.0, 8))
    with pytest.raises(VideoDecodeError, match=r"2 of 12 evaluation videos") as e:
        tr.train(smoke(**{"data.root": str(root), "model.pooling": "mean"}), progress=False)
    assert all(str(p) in str(e.value) for p in broken) and steps == []
    # Once a corpus state passed, the check is cached; any change of a file re-checks it.
    good = [root / "videos" / f"{v}.mp4" for v in test_ids[2:]]
    assert check_videos(good, 4, progress=False) > 0
    assert check_videos(good, 4, progress=False) == 0.0
    os.utime(good[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert check_videos(good, 4, progress=False) > 0
    assert len(videos) > len(test_ids)


# ----------------------------------------------------------------------------- 6. silent data problems


def _rewrite_test_csv(root: Path, edit) -> None:
    path = root / "MSRVTT_JSFUSION_test.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_empty_caption_is_an_error(workdir, tmp_path):
    from xpool.data.corpora import load_corpus

    root = corpus_copy(workdir, tmp_path)

    def blank(lines):
        key, vid_key, vid, _ = lines[3].split(",", 3)
        return lines[:3] + [f"{key},{vid_key},{vid}, "] + lines[4:]

    _rewrite_test_csv(root, blank)
    with pytest.raises(CorpusError, match=r"1 empty captions in synthetic/test"):
        load_corpus("synthetic", root, "test")


def test_duplicated_test_row_is_an_error(workdir, tmp_path):
    from xpool.data.corpora import load_corpus

    root = corpus_copy(workdir, tmp_path)
    _rewrite_test_csv(root, lambda lines: lines + [lines[5]])
    with pytest.raises(CorpusError, match=r"MSRVTT_JSFUSION_test\.csv: 1 duplicated rows"):
        load_corpus("synthetic", root, "test")


def test_train_test_overlap_is_an_error_unless_allowed(workdir, tmp_path):
    from xpool.engine.preflight import preflight

    root = corpus_copy(workdir, tmp_path)
    train_csv = root / "MSRVTT_train.9k.csv"
    leaked = (root / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1].split(",")[2]
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"].append({"video_id": leaked, "caption": "a leaked test video", "sen_id": 10**6})
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    train_csv.write_text(train_csv.read_text() + f"{leaked}\n")
    with pytest.raises(CorpusError, match=rf"1 synthetic videos are in both .*{leaked}.*"
                                          r"data\.allow_overlap=true"):
        preflight(smoke(**{"data.root": str(root)}), ["test"], progress=False)
    with pytest.warns(UserWarning, match=leaked):
        preflight(smoke(**{"data.root": str(root), "data.allow_overlap": True}), ["test"],
                  progress=False)


# ----------------------------------------------------------------------------- 7. interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_pt_and_prints_the_resume_command(workdir, monkeypatch, capsys, sig):
    import xpool.engine.train as tr
    from xpool.config import load_config as load
    from xpool.engine.interrupt import TrainingInterrupted

    name = f"signal-{sig.name}"
    base = {"train.epochs": 2, "train.checkpoint_every": 4, "model.pooling": "mean"}
    cfg = smoke(**base, **{"output.run_name": name})
    real_step = tr._train_step

    def step_then_signal(cfg_, model, objective, batch, optimizer, device, step, epoch):
        out = real_step(cfg_, model, objective, batch, optimizer, device, step, epoch)
        time.sleep(0.2)  # so the first segment's wall time is measurable
        if step == 3:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(tr, "_train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        tr.train(cfg, progress=False)
    monkeypatch.setattr(tr, "_train_step", real_step)
    record = tr.RunRecord.for_config(cfg)
    state = torch.load(record.last_checkpoint, weights_only=True)["state"]
    assert state["step"] == 3 and state["elapsed_s"] >= 0.6  # checkpoint_every=4 would give none
    err = capsys.readouterr().err
    command = err[err.index("`xpool train") + 1 :].split("`")[0]
    argv = shlex.split(command)
    assert argv[:3] == ["xpool", "train", "smoke"] and argv[-1] == "--resume"
    from xpool.engine.runs import run_id

    assert run_id(load(argv[2], argv[3:-1])) == run_id(cfg) == name
    assert load(argv[2], argv[3:-1]).to_dict() == cfg.to_dict()
    # Temporary files of killed writes are removed when the run resumes.
    stale = [record.checkpoint_dir / ".last.pt.abc123.tmp", record.run_dir / ".metrics.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    resumed = tr.train(cfg, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    m = resumed.metrics()
    assert m["total_steps"] == 8 and [int(r["step"]) for r in resumed.train_log()] == list(range(1, 9))
    assert m["wall_time_s"] >= state["elapsed_s"]  # the first segment counts too
    if sig == signal.SIGINT:  # identical to an uninterrupted run
        full = tr.train(smoke(**base, **{"output.run_name": "signal-full"}), progress=False)
        for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl", "best_step"):
            assert full.metrics()[key] == m[key], key
        assert [r["loss"] for r in full.train_log()] == [r["loss"] for r in resumed.train_log()]


def test_cli_train_fresh_and_the_unfinished_run_hint(workdir, capsys):
    from xpool.cli import build_parser, main

    assert build_parser().parse_args(["train", "smoke", "--fresh"]).fresh
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "smoke", "--fresh", "--resume"])
    import xpool.engine.train as tr

    record = base_record()
    before = record.metrics()
    mtime = record.metrics_path.stat().st_mtime_ns
    assert main(["train", "smoke", "model.pooling=mean", "output.run_name=base", "--fresh"]) == 0
    assert record.metrics_path.stat().st_mtime_ns != mtime
    assert record.metrics()["t2v"] == before["t2v"]  # same config, same seed: same result
    # A fresh start that dies early leaves no stale metrics.json claiming the run is finished.
    real_step = tr._train_step

    def die(cfg_, model, objective, batch, optimizer, device, step, epoch):
        if step == 3:  # after the checkpoint of step 2
            raise RuntimeError("killed")
        return real_step(cfg_, model, objective, batch, optimizer, device, step, epoch)

    tr._train_step = die
    try:
        with pytest.raises(RuntimeError, match="killed"):
            tr.train(smoke(**{"model.pooling": "mean", "output.run_name": "base"}), fresh=True,
                     progress=False)
    finally:
        tr._train_step = real_step
    assert not record.finished
    assert torch.load(record.last_checkpoint, weights_only=True)["state"]["step"] == 2
    capsys.readouterr()
    assert main(["train", "smoke", "model.pooling=mean", "output.run_name=base"]) == 2
    assert ("xpool train smoke model.pooling=mean output.run_name=base --resume"
            in capsys.readouterr().err)
    assert main(["train", "smoke", "model.pooling=mean", "output.run_name=base", "--resume"]) == 0
    assert record.metrics()["t2v"] == before["t2v"]


def test_missing_video_hint_names_the_config_key(workdir, tmp_path):
    from xpool.data.corpora import load_corpus

    root = corpus_copy(workdir, tmp_path)
    victim = next((root / "videos").glob("*.mp4"))
    victim.unlink()
    with pytest.raises(CorpusError, match=r"Set data\.missing=drop") as e:
        for split in ("train", "test"):
            load_corpus("synthetic", root, split)
    assert victim.stem in str(e.value)
    assert load_config("smoke", ["data.missing=drop"]).data.missing == "drop"


def test_reproduce_stops_quietly_on_ctrl_c(workdir, tmp_path, monkeypatch):
    import xpool.reproduce as rp

    def interrupted(*args):
        raise KeyboardInterrupt

    lines: list[str] = []
    real_execute = rp.run_notebook
    monkeypatch.setattr(rp, "run_notebook", interrupted)
    code = rp.reproduce("smoke", results_dir=tmp_path, notebooks_dir=ROOT / "notebooks",
                        only=["05_pooling_ablation"], log=lines.append)
    assert code == 130 and any("interrupted during 05_pooling_ablation" in x for x in lines)
    record = json.loads((tmp_path / "smoke" / "reproduce_record.json").read_text())
    assert record["latest"]["status"] == "interrupted"

    # A kernel channel failing while the interrupt shuts it down is the same interrupt.
    import papermill as pm

    class ZMQError(Exception):
        pass

    def execute(*a, **kw):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ZMQError("Socket operation on non-socket") from None

    monkeypatch.setattr(pm, "execute_notebook", execute)
    monkeypatch.setattr(pm, "inspect_notebook", lambda src: {})
    nb = ROOT / "notebooks" / "05_pooling_ablation.ipynb"
    assert real_execute(str(nb), str(tmp_path / "out.ipynb"), {}, "xpool", str(workdir))[1] == \
        rp.INTERRUPTED


def test_reproduce_names_a_kernel_that_does_not_start(workdir, tmp_path):
    import xpool.reproduce as rp

    lines: list[str] = []
    code = rp.reproduce("smoke", results_dir=tmp_path, notebooks_dir=ROOT / "notebooks",
                        only=["07_figures"], kernel="no-such-kernel", log=lines.append)
    assert code == 1
    failed = [x for x in lines if "FAILED" in x]
    assert failed and "notebook kernel could not start" in failed[0]
    assert "no-such-kernel" in failed[0] and "make setup" in failed[0]
    record = json.loads((tmp_path / "smoke" / "reproduce_record.json").read_text())
    assert record["latest"]["status"] == "failed"


# ----------------------------------------------------------------------------- 8. downloads


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("bad", ["traversal", "absolute", "link"])
def test_unsafe_archive_members_are_rejected(tmp_path, kind, bad):
    from xpool.data.download import _SOURCES, _unpack_videos

    good = {"MSRVTT/videos/all/video1.mp4": b"fine"}
    members, links = dict(good), {}
    if bad == "traversal":
        members["MSRVTT/../../video2.mp4"] = b"escapes"
    elif bad == "absolute":
        members["/tmp/video2.mp4"] = b"absolute"
    else:
        links["MSRVTT/videos/all/video3.mp4"] = "/etc/passwd"
    archive = (_zip if kind == "zip" else _tar)(tmp_path / f"a.{kind}", members, links)
    source = _SOURCES["msrvtt"][1]
    if kind == "tar":
        source = type(source)(source.key, source.filename, "tar", video_suffix=".mp4")
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match={"traversal": r"'\.\.' component",
                                             "absolute": "absolute path",
                                             "link": "link"}[bad]):
        _unpack_videos(source, archive, root, progress=False)
    assert not (root / "videos").exists()


def test_only_checksummed_files_are_called_verified_and_mirrors_are_used(tmp_path, capsys,
                                                                         monkeypatch):
    from xpool import cli
    from xpool.data.download import download_corpus

    csvs = {"MSRVTT_train.9k.csv": b"video_id\nvideo1\n", "MSRVTT_train.7k.csv": b"video_id\nvideo1\n",
            "MSRVTT_JSFUSION_test.csv": b"key,vid_key,video_id,sentence\nret0,msr2,video2,a\n"}
    ann = _zip(tmp_path / "msrvtt_data.zip", {**{f"msrvtt_data/{k}": v for k, v in csvs.items()},
                                               "msrvtt_data/MSRVTT_data.json": b"{}"})
    vids = _zip(tmp_path / "MSRVTT.zip", {"MSRVTT/videos/all/video1.mp4": b"v"})
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in csvs.items()}
    urls = {"annotations": ann.as_uri(), "videos": vids.as_uri()}
    download_corpus("msrvtt", tmp_path / "root", urls=urls, checksums=sums)
    out = capsys.readouterr().out
    assert "MSRVTT_JSFUSION_test.csv verified (sha256)" in out
    assert "MSRVTT_data.json unpacked, not verified (no known checksum)" in out
    assert "MSRVTT_data.json verified" not in out

    seen = {}
    monkeypatch.setattr("xpool.data.download.download_corpus",
                        lambda name, root, urls=None: seen.update(urls or {}))
    assert cli.main(["download", "msrvtt", "--root", str(tmp_path / "r2"),
                     "--url", "videos=https://mirror.example/MSRVTT.zip"]) == 0
    assert seen == {"videos": "https://mirror.example/MSRVTT.zip"}
    assert cli.main(["download", "msrvtt", "--root", str(tmp_path / "r2"), "--url", "nope"]) == 2
    assert "expected KEY=URL" in capsys.readouterr().err
