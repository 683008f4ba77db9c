"""Study plumbing: parallel frozen-head training equals one-at-a-time training, and `fresh`
retrains a run once per study, not at every use."""

from __future__ import annotations

import pandas as pd

from xpool import study as xs

VARIANTS = [({}, {"model.pooling": p}) for p in ("xpool", "mean", "self_attention")]


def _metrics(results: list[xs.RunResult]) -> list[tuple[str, dict, list]]:
    return [(r.config.model.pooling,
             {k: r.metrics[k] for k in ("t2v", "v2t", "t2v_dsl", "v2t_dsl")},
             pd.read_csv(r.record.log_path)["loss"].tolist()) for r in results]


def test_parallel_frozen_heads_equal_sequential_training(tmp_path):
    one = xs.open_study("smoke", tmp_path / "a" / "smoke", mode="frozen", workers=1,
                        progress=False)
    two = xs.open_study("smoke", tmp_path / "b" / "smoke", mode="frozen", workers=2,
                        progress=False)
    seq = one.grid(VARIANTS, seeds=[0, 1])
    par = two.grid(VARIANTS, seeds=[0, 1])
    assert [r.record.run_dir.name for r in seq] == [r.record.run_dir.name for r in par]
    assert all(r.record.run_dir.is_relative_to(tmp_path / "b") for r in par)
    assert _metrics(seq) == _metrics(par)
    # Same order as the variants, seeds outermost.
    assert [(r.config.train.seed, r.config.model.pooling) for r in par] == [
        (s, p) for s in (0, 1) for p in ("xpool", "mean", "self_attention")]


def test_fresh_retrains_a_run_once_per_study(tmp_path):
    out = tmp_path / "smoke"
    first = xs.open_study("smoke", out, mode="frozen", workers=1, progress=False)
    run_dir = first.run({"model.pooling": "mean"}, seed=0).record.run_dir
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    fresh = xs.open_study("smoke", out, mode="frozen", fresh=True, workers=1, progress=False)
    fresh.run({"model.pooling": "mean"}, seed=0)
    restamp = (run_dir / "metrics.json").stat().st_mtime_ns
    assert restamp != stamp
    fresh.run({"model.pooling": "mean"}, seed=0)  # the same study uses it again: no retraining
    assert (run_dir / "metrics.json").stat().st_mtime_ns == restamp


def _sigint_handler_name() -> str:
    import signal

    return str(signal.getsignal(signal.SIGINT))


def test_head_workers_leave_ctrl_c_to_the_parent():
    """Jupyter interrupts a kernel's whole process group when shutting it down; idle head
    workers must not answer with KeyboardInterrupt tracebacks in the reproduce log."""
    import signal

    from xpool.study import runner

    pool = runner._head_pool(1)
    try:
        assert pool.submit(_sigint_handler_name).result(timeout=120) == str(signal.SIG_IGN)
    finally:
        pool.shutdown()
        runner._HEAD_POOL.clear()
