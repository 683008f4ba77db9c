"""Reporting: reference numbers, result tables, paired bootstrap and figures on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xpool import reporting
from xpool.errors import XPoolError


def _runs(poolings=("xpool", "mean"), seeds=(0, 1), selection="test") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in poolings:
        for s in seeds:
            for d in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
                base = 40.0 if p == "xpool" else 30.0
                rows.append({"pooling": p, "seed": s, "direction": d,
                             "R1": base + rng.normal(), "R5": 70.0, "R10": 80.0, "MdR": 2.0,
                             "MnR": 10.0 + s, "selection": selection})
    return pd.DataFrame(rows)


def test_references_match_design_table():
    ref = reporting.reference_for("msrvtt9k", "xpool", "t2v")
    assert ref is not None and ref.as_dict() == {"R1": 46.9, "R5": 72.8, "R10": 82.2,
                                                 "MdR": 2.0, "MnR": 14.3}
    assert "README" in ref.source
    assert reporting.reference_for("msrvtt9k", "xpool", "v2t").values[0] == 44.4
    assert reporting.reference_for("lsmdc", "xpool", "t2v").values == (25.2, 43.7, 53.5, 8.0, 53.2)
    assert reporting.reference_for("msvd", "mean", "t2v") is None
    frame = reporting.references_frame()
    assert len(frame) == 7 and frame["source"].str.len().min() > 5


def test_summarize_mean_and_sample_std():
    df = pd.DataFrame({"pooling": ["a", "a", "b"], "seed": [0, 1, 0], "R1": [10.0, 20.0, 5.0],
                       "R5": 0.0, "R10": 0.0, "MdR": 1.0, "MnR": 1.0})
    s = reporting.summarize(df, ["pooling"]).set_index("pooling")
    assert s.loc["a", "R1_mean"] == 15.0
    assert s.loc["a", "R1_std"] == pytest.approx(np.std([10, 20], ddof=1))
    assert s.loc["b", "R1_std"] == 0.0 and s.loc["b", "n_seeds"] == 1
    assert s.loc["a", "seeds"] == "0 1"
    with pytest.raises(XPoolError, match="missing"):
        reporting.summarize(df.drop(columns="R5"), ["pooling"])


def test_results_table_real_dataset_has_paper_and_difference():
    table = reporting.results_table(_runs(), "msrvtt9k")
    assert list(table["pooling"]) == ["mean", "mean", "xpool", "xpool"]
    x = table[(table["pooling"] == "xpool") & (table["direction"] == "t2v")].iloc[0]
    assert x["paper_R1"] == 46.9
    assert x["diff_R1"] == pytest.approx(x["R1_mean"] - 46.9)
    assert "DSL_R1_mean" in table.columns and x["selection"] == "test"
    v = table[(table["pooling"] == "mean") & (table["direction"] == "v2t")].iloc[0]
    assert np.isnan(v["paper_R1"]) and v["paper_source"] == "no published number"
    md = reporting.results_markdown(table, "MSR-VTT", ["note"])
    assert "paper R1" in md and "Δ R1" in md and "DSL R1" in md and "46.9" in md
    assert "reference source" in md and "- note" in md
    # Every metric cell: mean ± std over two seeds.
    assert "±" in md


def test_results_table_synthetic_has_no_paper_columns():
    table = reporting.results_table(_runs(), None)
    assert not any(c.startswith("paper_") for c in table.columns)
    md = reporting.results_markdown(table, "stand-in")
    assert "paper" not in md
    with pytest.raises(XPoolError):
        reporting.results_table(_runs(), "kinetics")
    with pytest.raises(XPoolError):
        reporting.results_table(_runs().iloc[:0], None)


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    q = 400
    b = rng.integers(1, 10, size=q)
    a = b.copy()
    a[:80] = 1  # a hits 80 more queries where b did not necessarily
    a[(b == 1)] = 1
    res = reporting.paired_bootstrap(a, b, k=1, n_boot=2000)
    expected = 100 * ((a <= 1).mean() - (b <= 1).mean())
    assert res["diff"] == pytest.approx(expected)
    assert res["lo"] > 0 and res["lo"] <= res["diff"] <= res["hi"]
    assert res["p"] < 0.01 and res["n_queries"] == q
    same = reporting.paired_bootstrap(b, b, n_boot=500)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["p"] == 1.0
    # Seeds: [S, Q] ranks average each query's hit over seeds.
    two = reporting.paired_bootstrap(np.stack([a, b]), np.stack([b, b]), n_boot=500)
    assert two["diff"] == pytest.approx(expected / 2)
    with pytest.raises(XPoolError, match="same queries"):
        reporting.paired_bootstrap(a, b[:10])


def test_paired_bootstrap_is_deterministic_and_narrower_than_unpaired():
    rng = np.random.default_rng(2)
    base = rng.integers(1, 4, size=300)
    better = np.where(rng.random(300) < 0.1, 1, base)
    r1 = reporting.paired_bootstrap(better, base, n_boot=1000, seed=3)
    r2 = reporting.paired_bootstrap(better, base, n_boot=1000, seed=3)
    assert r1 == r2
    # Unpaired intervals would add both methods' variances; the paired one is much narrower.
    _, lo_a, hi_a = reporting.bootstrap_interval(better, n_boot=1000)
    assert (r1["hi"] - r1["lo"]) < (hi_a - lo_a)


def test_bootstrap_against_baseline():
    ranks = {"xpool": np.array([[1, 1, 2, 5]]), "mean": np.array([[2, 1, 2, 5]]),
             "topk": np.array([[1, 1, 2, 5]])}
    out = reporting.bootstrap_against(ranks, n_boot=200)
    assert list(out["pooling"]) == ["mean", "topk"]
    assert out.set_index("pooling").loc["mean", "diff_R1"] == pytest.approx(-25.0)
    with pytest.raises(XPoolError, match="baseline"):
        reporting.bootstrap_against({"mean": ranks["mean"]})


def test_write_and_read_table(tmp_path):
    df = pd.DataFrame({"a": [1.23456], "b": ["x"]})
    path = reporting.write_table(df, tmp_path / "tables", "t", reporting.frame_markdown(df, "T"))
    assert path.read_text().splitlines()[1] == "1.2346,x"
    assert (tmp_path / "tables" / "t.md").read_text().startswith("### T")
    assert reporting.read_table(tmp_path / "tables", "t")["b"][0] == "x"
    with pytest.raises(XPoolError, match="make reproduce"):
        reporting.read_table(tmp_path / "tables", "missing")


def test_figures_render(tmp_path):
    runs = _runs(("xpool", "mean", "topk"), seeds=(0, 1, 2))
    boot = pd.DataFrame({"pooling": ["mean", "topk"], "diff_R1": [-3.0, 1.0], "lo": [-5.0, -1.0],
                         "hi": [-1.0, 2.0]})
    paths = [reporting.save_figure(reporting.plot_pooling_ablation(runs, boot, "t"),
                                   tmp_path / "ablation.png")]
    summary = pd.DataFrame({"pooling": ["xpool", "xpool", "mean", "mean"], "K": [1, 2, 1, 2],
                            "R1_mean": [50, 45, 50, 30], "R1_lo": [45, 40, 45, 25],
                            "R1_hi": [55, 50, 55, 35]})
    sr = pd.DataFrame({"pooling": ["xpool", "mean"], "K": [1, 1], "R1": [50.0, 49.0]})
    paths.append(reporting.save_figure(reporting.plot_subregion(summary, sr), tmp_path / "k.png"))
    curves = pd.DataFrame({"label": ["a"] * 10, "step": range(10), "loss": np.linspace(3, 1, 10)})
    evals = pd.DataFrame({"label": ["a", "a"], "step": [5, 10], "R1": [10.0, 20.0]})
    paths.append(reporting.save_figure(reporting.plot_training_curves(curves, evals),
                                       tmp_path / "curves.png"))
    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    paths.append(reporting.save_figure(
        reporting.plot_attention("q", frames, np.full(4, 0.25), highlight=[True, False] * 2),
        tmp_path / "att.png"))
    top = [{"frames": frames, "video_id": f"v{i}", "score": 0.5, "is_gt": i == 1}
           for i in range(5)]
    paths.append(reporting.save_figure(reporting.plot_top5("q", top), tmp_path / "top.png"))
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(XPoolError):
        reporting.plot_attention("q", frames, np.ones(3))


def test_pooling_ablation_figure_is_reproducible(tmp_path):
    # The seed dots are jittered; the same runs must still give byte-identical pictures, whatever
    # the global RNG did before, and the global RNG must be left as it was.
    runs = _runs(("xpool", "mean"), seeds=(0, 1, 2))
    boot = pd.DataFrame({"pooling": ["mean"], "diff_R1": [-3.0], "lo": [-5.0], "hi": [-1.0]})
    pictures = []
    for k, seed in enumerate((1, 2)):
        np.random.seed(seed)
        before = np.random.get_state()[1].copy()
        path = reporting.save_figure(reporting.plot_pooling_ablation(runs, boot, "t"),
                                     tmp_path / f"a{k}.png")
        assert (np.random.get_state()[1] == before).all()
        pictures.append(path.read_bytes())
    assert pictures[0] == pictures[1]


def test_markdown_table_writer_plain_and_aligned():
    md = reporting.markdown_table(["a", "b|c"], [["x|y", 1.5], ["", None]], title="T",
                                  notes=["one", "two"])
    assert md == ("### T\n\n| a | b\\|c |\n|---|---|\n| x\\|y | 1.5 |\n|  | None |\n\n"
                  "- one\n- two\n")
    assert reporting.markdown_table(["n"], []) == "| n |\n|---|\n"
    aligned = reporting.markdown_table(["name", "v"], [["x", 1234.5], ["long", 2]], aligned=True,
                                       cell=lambda v: f"<{v}>")
    assert aligned == ("| name   | v        |\n|--------|----------|\n| <x>    | <1234.5> |\n"
                       "| <long> | <2>      |\n")
    with pytest.raises(ValueError):
        reporting.markdown_table(["a", "b"], [["only one cell"]])
