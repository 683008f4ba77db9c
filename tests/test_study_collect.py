"""xpool.study.collect on hand-made run records: metrics frames, ranks, tables -> runs, saved
outputs and training curves, with exact expected values (nothing trains)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xpool.config import load_config, save_config
from xpool.engine.embed import Embeddings
from xpool.engine.runs import RunRecord
from xpool.errors import XPoolError
from xpool.io import torch_save, write_json
from xpool.model.build import pooling_options
from xpool.model.pooling import build_pooling
from xpool.study import collect
from xpool.study.collect import RunResult


def _m(r1: float, mnr: float = 10.0) -> dict[str, float]:
    return {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "MdR": 2.0, "MnR": mnr}


def _write_run(out: Path, name: str, pooling: str = "mean", seed: int = 0,
               metrics: dict | None = None, evals: tuple[dict, ...] = (),
               ranks: dict | None = None, log: tuple[tuple[int, str], ...] = (),
               overrides: dict | None = None, finished: bool = True) -> RunResult:
    """A run folder `out/runs/<name>` with the files a finished training run leaves."""
    cfg = load_config("smoke", {"model.pooling": pooling, "train.seed": seed,
                                **(overrides or {})})
    record = RunRecord(out / "runs" / name)
    record.run_dir.mkdir(parents=True)
    save_config(cfg, record.config_path)
    if finished:
        write_json(record.metrics_path, {"seed": seed, "selection": "test", "best_step": 4,
                                         **(metrics or {"t2v": _m(40.0), "v2t": _m(30.0)})})
    for e in evals:
        write_json(record.evals_dir / f"eval_{e['step']:06d}.json", e)
    if ranks is not None:
        write_json(record.run_dir / "test_ranks.json", ranks)
    if log:
        with record.log_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss"])
            w.writerows(log)
    return RunResult(record, cfg)


def test_dataset_key_names_the_paper_dataset():
    assert collect.dataset_key(load_config("paper-msrvtt9k")) == "msrvtt9k"
    assert collect.dataset_key(load_config("paper-msrvtt7k")) == "msrvtt7k"
    assert collect.dataset_key(load_config("paper-msvd")) == "msvd"
    assert collect.dataset_key(load_config("smoke")) is None


def test_metrics_frame_has_one_row_per_run_and_direction(tmp_path):
    a = _write_run(tmp_path, "a", "xpool", 0, metrics={
        "t2v": _m(40.0), "v2t": _m(30.0), "t2v_dsl": _m(45.0), "v2t_dsl": _m(35.0)})
    b = _write_run(tmp_path, "b", "mean", 1, metrics={"t2v": _m(20.5, 7.0), "v2t": _m(10.0)},
                   overrides={"model.frozen": True})
    b.labels = {"variant": "baseline"}
    df = collect.metrics_frame([a, b])
    # b has no DSL numbers: its DSL rows are left out, not filled in.
    assert list(zip(df["run_id"], df["direction"], strict=True)) == [
        ("a", "t2v"), ("a", "v2t"), ("a", "t2v_dsl"), ("a", "v2t_dsl"), ("b", "t2v"), ("b", "v2t")]
    row = df.iloc[4].to_dict()
    assert row == {"variant": "baseline", "dataset": "synthetic", "pooling": "mean", "seed": 1,
                   "direction": "t2v", "R1": 20.5, "R5": 30.5, "R10": 40.5, "MdR": 2.0,
                   "MnR": 7.0, "selection": "test", "mode": "frozen", "run_id": "b"}
    assert df.iloc[2]["R1"] == 45.0 and df.iloc[0]["mode"] == "finetune"
    assert pd.isna(df.iloc[0]["variant"])
    only = collect.metrics_frame([a], directions=("v2t",))
    assert only["direction"].tolist() == ["v2t"] and only["R1"].tolist() == [30.0]


def test_metrics_frame_reads_the_selected_evaluation(tmp_path):
    evals = ({"step": 2, "t2v": _m(11.0), "v2t": _m(12.0)},
             {"step": 4, "t2v": _m(21.0), "v2t": _m(22.0)},
             {"step": 6, "t2v": _m(31.0), "v2t": _m(32.0)})
    r = _write_run(tmp_path, "a", evals=evals)  # best_step is 4
    df = collect.metrics_frame([r], source="selected_eval")
    assert df["R1"].tolist() == [21.0, 22.0]
    lost = _write_run(tmp_path, "b", evals=evals[:1])
    with pytest.raises(XPoolError, match="no evaluation at its selected step 4"):
        collect.metrics_frame([lost], source="selected_eval")


def test_ranks_by_method_stacks_the_seeds_every_method_has(tmp_path):
    runs = [_write_run(tmp_path, f"{p}{s}", p, s, ranks={"t2v": [s + 1, 2, 3],
                                                       "v2t": [9, 9, s]})
            for p, seeds in (("xpool", (0, 1, 2)), ("mean", (1, 2))) for s in seeds]
    by = collect.ranks_by_method(runs, "pooling")
    assert sorted(by) == ["mean", "xpool"]
    np.testing.assert_array_equal(by["xpool"], [[2, 2, 3], [3, 2, 3]])  # seeds 1, 2 only
    np.testing.assert_array_equal(by["mean"], [[2, 2, 3], [3, 2, 3]])
    np.testing.assert_array_equal(collect.ranks_by_method(runs, "pooling", "v2t",
                                                          seeds=[2])["xpool"], [[9, 9, 2]])
    # A label names the method when the runs carry it.
    runs[0].labels = {"variant": "default"}
    assert sorted(collect.ranks_by_method(runs[:1], "variant")) == ["default"]
    with pytest.raises(XPoolError, match="no seed is shared"):
        collect.ranks_by_method(runs, "pooling", seeds=[0])
    no_ranks = _write_run(tmp_path, "bare")
    with pytest.raises(XPoolError, match="no test_ranks.json"):
        no_ranks.ranks()


def test_results_from_table_follows_the_run_id_column(tmp_path):
    _write_run(tmp_path, "xpool-seed0", "xpool", 0)
    _write_run(tmp_path, "mean-seed3", "mean", 3)
    table = pd.DataFrame({"run_id": ["mean-seed3", "xpool-seed0", "mean-seed3"],
                          "variant": ["m", "x", "m"], "K": [2, 3, 2], "R1": [1.0, 2.0, 3.0]})
    (tmp_path / "tables").mkdir()
    table.to_csv(tmp_path / "tables" / "abl.csv", index=False)
    results = collect.results_from_table(tmp_path, "abl")
    assert [r.record.run_dir.name for r in results] == ["mean-seed3", "xpool-seed0"]
    assert [(r.config.model.pooling, r.config.train.seed) for r in results] == [
        ("mean", 3), ("xpool", 0)]
    assert results[0].labels == {"variant": "m", "K": 2}
    assert results[1].metrics["t2v"]["R1"] == 40.0
    table.drop(columns="run_id").to_csv(tmp_path / "tables" / "ids.csv", index=False)
    with pytest.raises(XPoolError, match="no run_id column"):
        collect.results_from_table(tmp_path, "ids")
    _write_run(tmp_path, "half", finished=False)
    pd.DataFrame({"run_id": ["half"]}).to_csv(tmp_path / "tables" / "half.csv", index=False)
    with pytest.raises(XPoolError, match="no finished record"):
        collect.results_from_table(tmp_path, "half")


def _save_outputs(result: RunResult, frames: torch.Tensor, texts: list[str],
                  video_of_text: list[int], head: torch.nn.Module) -> None:
    emb = Embeddings(torch.eye(2)[[0] * len(texts)], frames,
                         np.asarray(video_of_text, dtype=np.int64),
                         [f"video{i}" for i in range(len(frames))], texts)
    emb.save(result.record.run_dir / "test_embeddings.pt")
    torch_save(head.state_dict(), result.record.run_dir / "pooling_head.pt")


def test_load_outputs_scores_and_ranks_the_saved_test_set(tmp_path):
    r = _write_run(tmp_path, "mean", "mean")
    with pytest.raises(XPoolError, match="has no test_embeddings.pt"):
        collect.load_outputs(r)
    # Three videos of two frames against the text (1, 0): the mean of the normalised frames is
    # (1, 0), (0, 1) and (0.5, 0.5), so the cosines are 1, 0 and 1/sqrt(2).
    frames = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 3.0]],
                           [[1.0, 0.0], [0.0, 1.0]]])
    _save_outputs(r, frames, ["a", "b"], [0, 2], build_pooling("mean", 2))
    out = collect.load_outputs(r)
    assert out.config is r.config and out.emb.texts == ["a", "b"]
    np.testing.assert_allclose(out.scores(torch.tensor([1.0, 0.0])), [1.0, 0.0, 0.5 ** 0.5],
                               atol=1e-6)
    assert out.top_k(torch.tensor([1.0, 0.0]), k=2, gt=2) == [
        {"index": 0, "video_id": "video0", "score": pytest.approx(1.0), "is_gt": False},
        {"index": 2, "video_id": "video2", "score": pytest.approx(0.5 ** 0.5), "is_gt": True}]
    assert out.attention(torch.tensor([1.0, 0.0]), 0) is None  # not an X-Pool run


def test_load_outputs_restores_the_x_pool_head(tmp_path):
    r = _write_run(tmp_path, "xp", "xpool", overrides={"model.num_heads": 1})
    torch.manual_seed(0)
    head = build_pooling("xpool", 2, **pooling_options(r.config))
    frames = torch.randn(2, 3, 2)
    _save_outputs(r, frames, ["q"], [1], head)
    out = collect.load_outputs(r)
    assert not out.head.training
    for k, v in head.state_dict().items():
        assert torch.equal(out.head.state_dict()[k], v), k
    a = out.attention(torch.tensor([0.3, -0.2]), 1)
    assert a.shape == (3,) and a.sum() == pytest.approx(1.0, abs=1e-6)
    head.eval()
    with torch.no_grad():
        _, want = head(torch.tensor([[0.3, -0.2]]), out.emb.frame_embeds[1:2],
                       return_attention=True)
    np.testing.assert_array_equal(a, want[0, 0].numpy())


def test_training_curves_label_runs_and_drop_empty_losses(tmp_path):
    x = _write_run(tmp_path, "x", "xpool", 3, log=((1, "2.5"), (2, ""), (3, "nan"), (4, "1.25")),
                   evals=({"step": 4, "t2v": _m(12.5), "v2t": _m(1.0)},))
    v = _write_run(tmp_path, "v", "mean", 0, log=((1, "0.5"),))
    v.labels = {"variant": "no residual FC"}
    curves, evals = collect.training_curves([x, v])
    assert curves.to_dict("records") == [
        {"label": "X-Pool (seed 3)", "step": 1, "loss": 2.5},
        {"label": "X-Pool (seed 3)", "step": 4, "loss": 1.25},
        {"label": "no residual FC (seed 0)", "step": 1, "loss": 0.5}]
    assert evals.to_dict("records") == [{"label": "X-Pool (seed 3)", "step": 4, "R1": 12.5}]
    empty_curves, empty_evals = collect.training_curves([])
    assert empty_curves.empty and empty_evals.empty
