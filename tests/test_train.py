"""The engine end to end on the smoke profile: every pooling head, resume, DDP, frozen features."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xpool.config import POOLINGS, load_config
from xpool.errors import TrainingError, XPoolError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding the smoke corpus and tiny CLIP (made once per module)."""
    from xpool.data.synthetic import ensure_corpus
    from xpool.engine.pretrain import ensure_pretrained

    wd = tmp_path_factory.mktemp("engine")
    old = os.getcwd(), os.environ.get("XPOOL_ROOT")
    os.chdir(wd)
    # Relative paths resolve against the project root (xpool.paths): make it this folder, which
    # the CLI subprocesses below inherit too.
    os.environ["XPOOL_ROOT"] = str(wd)
    cfg = load_config("smoke")
    ensure_corpus(cfg)
    ensure_pretrained(cfg, progress=False)
    yield wd
    os.chdir(old[0])
    if old[1] is None:
        os.environ.pop("XPOOL_ROOT", None)
    else:
        os.environ["XPOOL_ROOT"] = old[1]


def smoke(**overrides):
    return load_config("smoke", overrides)


def _losses(record) -> list[float]:
    return [float(r["loss"]) for r in record.train_log()]


@pytest.mark.parametrize("pooling", POOLINGS)
def test_train_then_eval_every_pooling(workdir, pooling):
    from xpool.engine.evaluate import evaluate_checkpoint
    from xpool.engine.train import train

    cfg = smoke(**{"model.pooling": pooling})
    record = train(cfg, progress=False)
    m = record.metrics()
    assert m["pooling"] == pooling and m["selection"] == "test"
    for direction in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        assert 0 <= m[direction]["R1"] <= m[direction]["R5"] <= m[direction]["R10"] <= 100
        assert m[direction]["MdR"] >= 1
    assert len(_losses(record)) == m["total_steps"] > 0
    assert (record.run_dir / "config.yaml").is_file() and (record.run_dir / "environment.json").is_file()
    # The best checkpoint re-evaluated from disk reproduces the selected evaluation exactly.
    again = evaluate_checkpoint(cfg, record.best_checkpoint, progress=False)
    assert again["t2v"] == pytest.approx(m["t2v"]) and again["v2t"] == pytest.approx(m["v2t"])
    # A second call finds the finished run instead of training again.
    mtime = record.metrics_path.stat().st_mtime
    assert train(cfg, progress=False).metrics_path.stat().st_mtime == mtime


def test_cli_eval_of_a_trained_run(workdir):
    from xpool.engine.train import train

    record = train(smoke(**{"model.pooling": "mean", "output.run_name": "cli"}), progress=False)
    res = subprocess.run([sys.executable, "-m", "xpool.cli", "eval", "smoke", "model.pooling=mean",
                          "--checkpoint", str(record.best_checkpoint)], cwd=workdir,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    assert f"t2v R1={record.metrics()['t2v']['R1']:.2f}" in res.stdout and "v2t R1=" in res.stdout


@pytest.mark.parametrize("frozen", [False, True])
def test_sharded_cli_eval_over_two_torchrun_processes_equals_the_run(workdir, frozen):
    """`torchrun --nproc_per_node 2 -m xpool.cli eval ... --sharded` (gloo on loopback): each rank
    embeds (or loads) only its half of the 12 test videos, and the exact metrics equal the ones
    the run recorded from the whole [T, V] matrix in one process."""
    from xpool.engine.train import train

    # 3 frames: a feature cache of its own, which the feature-extraction test below must not find
    overrides = {"model.pooling": "xpool", "model.frozen": frozen, "data.num_frames": 3,
                 "output.run_name": f"sharded-{frozen}"}
    record = train(smoke(**overrides), progress=False)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "xpool.cli", "eval", "smoke", *(f"{k}={v}" for k, v in overrides.items()),
         "--checkpoint", str(record.best_checkpoint), "--sharded"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sharded over 2 process(es)" in res.stdout
    m = record.metrics()
    for d in ("t2v", "v2t"):
        line = next(x for x in res.stdout.splitlines() if x.startswith(f"{d} "))
        got = dict(kv.split("=") for kv in line.split()[1:])
        assert set(got) == set(m[d])
        for k, v in m[d].items():
            assert got[k] == f"{v:.2f}", (d, k)
    assert "t2v_dsl" not in res.stdout  # DSL needs whole rows and columns: not sharded


def test_interrupted_run_resumes_to_identical_metrics(workdir, monkeypatch):
    import xpool.engine.train as tr

    base = {"train.epochs": 2, "train.checkpoint_every": 2, "train.evals_per_epoch": 2,
            "data.train_sampling": "random"}
    full = tr.train(smoke(**base, **{"output.run_name": "full"}), progress=False)

    cfg = smoke(**base, **{"output.run_name": "interrupted"})
    real_step = tr._train_step

    def crashing_step(cfg_, model, objective, batch, optimizer, device, step, epoch):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_step(cfg_, model, objective, batch, optimizer, device, step, epoch)

    monkeypatch.setattr(tr, "_train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, progress=False)
    monkeypatch.setattr(tr, "_train_step", real_step)
    record = tr.RunRecord.for_config(cfg)
    assert not record.finished
    assert torch.load(record.last_checkpoint, weights_only=False)["state"]["step"] == 4
    with pytest.raises(XPoolError, match="--resume"):
        tr.train(cfg, progress=False)
    resumed = tr.train(cfg, resume=True, progress=False)

    a, b = full.metrics(), resumed.metrics()
    for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl", "best_step", "total_steps"):
        assert a[key] == b[key], key
    assert _losses(full) == _losses(resumed)
    assert [e["t2v"] for e in full.evaluations()] == [e["t2v"] for e in resumed.evaluations()]


def test_nan_loss_stops_with_the_step(workdir, monkeypatch):
    import xpool.engine.train as tr

    monkeypatch.setattr(tr, "symmetric_infonce", lambda sims, scale, **kw: sims.sum() * float("nan"))
    with pytest.raises(TrainingError, match="step 1"):
        tr.train(smoke(**{"output.run_name": "nan"}), progress=False)


def test_broken_training_video_is_skipped_and_reported(workdir):
    from xpool.data.corpora import load_msrvtt
    from xpool.engine.train import train

    cfg = smoke()
    broken_root = workdir / "broken_corpus"
    shutil.copytree(cfg.data_root, broken_root)
    train_ids = load_msrvtt(broken_root, "train").video_ids
    test_ids = set(load_msrvtt(broken_root, "test").video_ids)
    victim = next(v for v in train_ids if v not in test_ids)
    (broken_root / "videos" / f"{victim}.mp4").write_bytes(os.urandom(2048))
    record = train(smoke(**{"data.root": str(broken_root), "output.run_name": "broken"}),
                   progress=False)
    m = record.metrics()
    assert m["skipped_videos"] > 0 and m["skipped_video_ids"] == [victim]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in _losses(record))


def test_frozen_features_train_and_resume_extraction(workdir):
    from xpool.engine.features import extract_features, feature_path, features_dir, load_features
    from xpool.engine.train import train

    cfg = smoke(**{"model.frozen": True, "train.epochs": 2})
    out = extract_features(cfg, "train", shard_size=4, progress=False, max_shards=1)
    assert not out.is_file() and any((out.parent / "train.parts").glob("videos_*.pt"))
    extract_features(cfg, "train", shard_size=4, progress=False)  # resumes
    resumed = load_features(cfg, "train")
    shutil.move(str(feature_path(cfg, "train")), str(workdir / "resumed.pt"))
    extract_features(cfg, "train", shard_size=1000, progress=False)  # uninterrupted, one shard
    straight = load_features(cfg, "train")
    assert resumed.video_ids == straight.video_ids and resumed.texts == straight.texts
    assert torch.equal(resumed.frame_embeds, straight.frame_embeds)
    assert torch.equal(resumed.text_embeds, straight.text_embeds)
    assert straight.frame_embeds.dtype == torch.float16
    assert features_dir(cfg).is_dir()

    record = train(cfg, progress=False)
    m = record.metrics()
    assert m["total_steps"] > 0 and 0 <= m["t2v"]["R1"] <= 100


def test_validation_selection_holds_out_training_videos(workdir):
    from xpool.data.splits import load_split
    from xpool.engine.train import train

    cfg = smoke(**{"train.selection": "val", "data.val_videos": 4})
    train_ids = set(load_split(cfg, "train").video_ids)
    val_ids = set(load_split(cfg, "val").video_ids)
    assert len(val_ids) == 4 and not train_ids & val_ids
    m = train(cfg, progress=False).metrics()
    assert m["selection"] == "val"
    assert all(e["split"] == "val" for e in train(cfg, progress=False).evaluations())
    with pytest.raises(XPoolError, match="val_videos"):
        load_split(smoke(), "val")


def test_ddp_two_processes_match_one_process(workdir):
    """torchrun with gloo on CPU: same loss trajectory as one process with the same global batch."""
    from xpool.engine.train import train

    common = ["train.epochs=2", "train.batch_size=8"]
    train(load_config("smoke", [*common, "output.run_name=single"]), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "xpool.cli", "train", "smoke", *common,
                          "output.run_name=ddp"], cwd=workdir, capture_output=True, text=True,
                         env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    runs = workdir / "results" / "smoke" / "runs"

    def losses(name):
        with (runs / name / "train_log.csv").open() as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]

    a, b = losses("single"), losses("ddp")
    assert len(a) == len(b) > 1
    assert a == pytest.approx(b, abs=1e-4)


def test_torch_threads_limits_and_restores_the_thread_count():
    import torch

    from xpool.engine.setup import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("the count is restored on errors too")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("overrides", "threads"), [
    ({"model.gemm": "exact"}, "study"),
    ({"model.gemm": "exact", "model.frozen": True}, "head"),
    ({"model.gemm": "native"}, "machine"),
])
def test_exact_cpu_runs_train_with_a_fixed_thread_count(workdir, overrides, threads):
    # Bit-identity (model.gemm: exact) needs the same reductions on a 2-core and an 8-core
    # machine: the run's own count, not torch's default, which is the machine's.
    import json

    from xpool.determinism import HEAD_THREADS, STUDY_THREADS
    from xpool.engine.train import train

    before = torch.get_num_threads()
    losses = []
    try:
        for outer in (1, 3):
            torch.set_num_threads(outer)
            cfg = smoke(**overrides, **{"output.run_name": f"threads-{threads}-{outer}"})
            record = train(cfg, progress=False)
            used = json.loads((record.run_dir / "environment.json").read_text())["torch_threads"]
            want = {"study": STUDY_THREADS, "head": HEAD_THREADS, "machine": outer}[threads]
            assert used == want
            assert torch.get_num_threads() == outer  # restored after the run
            losses.append(_losses(record))
    finally:
        torch.set_num_threads(before)
    if threads != "machine":
        assert losses[0] == losses[1]
