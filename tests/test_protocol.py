"""Checkpoint-selection protocols (xpool.protocol): the rules against hand-computed logs and an
independent re-implementation of the authors' loop, the paired differences, and the study end to
end on the smoke profile against the training loop's own selection."""

from __future__ import annotations

import os
from collections import deque

import numpy as np
import pandas as pd
import pytest

from xpool import protocol as xp
from xpool import study as xs
from xpool.config import load_config
from xpool.errors import ConfigError, XPoolError
from xpool.metrics import rank_metrics


def test_window_means_count_partial_windows_at_the_start():
    np.testing.assert_allclose(xp.window_means([10, 30, 20, 40, 35], 2),
                               [10, 20, 25, 30, 37.5])
    np.testing.assert_allclose(xp.window_means([10, 30, 20, 40, 35], 5),
                               [10, 20, 20, 25, 27])
    with pytest.raises(XPoolError, match="window"):
        xp.window_means([1.0], 0)


def test_rules_on_a_hand_made_log():
    scores = [10, 40, 12, 30, 31, 32, 5]
    assert xp.select_index(scores, "test_best") == 1
    # windows of 3: 10, 25, 20.67, 27.33, 24.33, 31, 22.67 -> the one ending at index 5
    assert xp.select_index(scores, "test_window", window=3) == 5
    assert xp.select_index(scores, "last") == 6
    # ties go to the earliest evaluation (the authors' strict >)
    assert xp.select_index([1, 3, 3, 2], "test_best") == 1
    # a high first evaluation wins a window rule on its own (partial windows count)
    assert xp.select_index([50, 10, 10, 40, 45, 44], "test_window", window=3) == 0
    assert xp.select_index([7, 9], "test_window", window=1) == xp.select_index([7, 9], "test_best")
    with pytest.raises(XPoolError, match="no evaluations"):
        xp.select_index([], "last")
    with pytest.raises(XPoolError, match="does not read an evaluation log"):
        xp.select_index([1, 2], "val")


def _authors_loop(scores, window):
    """The authors' trainer, re-implemented: a bounded deque per metric, the mean after every
    evaluation, a checkpoint saved whenever the window mean is strictly better."""
    dq, best, kept = deque(maxlen=window), -1.0, None
    for i, s in enumerate(scores):
        dq.append(s)
        if np.mean(dq) > best:
            best, kept = np.mean(dq), i
    return kept


@pytest.mark.parametrize("window", [1, 2, 5])
def test_window_rule_matches_the_authors_loop(window):
    rng = np.random.default_rng(window)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        # integer-valued scores make ties common
        scores = rng.integers(0, 6, size=n).astype(float) * 12.5
        rule = "test_best" if window == 1 else "test_window"
        assert xp.select_index(scores, rule, window) == _authors_loop(scores, window)


# ----------------------------------------------------------------------------------------------
# outcomes from logs


def _eval(step, t2v, v2t, split="test"):
    return {"step": step, "split": split, "t2v": rank_metrics(t2v), "v2t": rank_metrics(v2t),
            "ranks": {"t2v": list(t2v), "v2t": list(v2t)}}


def _log(pooling, seed, seqs):
    return xp.TestLog(pooling, seed, [_eval(10 * (i + 1), t, v) for i, (t, v) in enumerate(seqs)],
                      f"{pooling}-{seed}")


def _val(pooling, seed, t2v, v2t):
    return xp.ValOutcome(pooling, seed, {"t2v": rank_metrics(t2v), "v2t": rank_metrics(v2t),
                                         "best_step": 20},
                         {"t2v": list(t2v), "v2t": list(v2t)}, f"{pooling}-{seed}-val", 3)


# four test queries, four videos: R@1 of each evaluation is 25 * (number of rank-1 queries)
E1 = ([1, 3, 3, 3], [1, 1, 2, 2])  # t2v R@1 25
E2 = ([1, 1, 1, 3], [2, 2, 2, 2])  # 75
E3 = ([1, 1, 3, 3], [1, 2, 2, 2])  # 50
E4 = ([1, 1, 3, 2], [1, 1, 1, 2])  # 50


def test_outcomes_take_each_rules_own_checkpoint():
    out = xp.protocol_outcomes([_log("xpool", 0, [E1, E2, E3, E4])],
                               [_val("xpool", 0, [1, 2, 2, 2], [1, 1, 2, 2])], window=3)
    r = out.runs.set_index(["rule", "direction"])
    assert r.loc[("test_best", "t2v"), "R1"] == 75 and r.loc[("test_best", "t2v"), "step"] == 20
    # windows of 3: 25, 50, 50, 58.3 -> the checkpoint at the 4th evaluation, its own R@1 (50)
    assert r.loc[("test_window", "t2v"), "step"] == 40
    assert r.loc[("test_window", "t2v"), "R1"] == 50
    assert r.loc[("test_window", "v2t"), "R1"] == 75  # v2t of that same checkpoint
    assert r.loc[("last", "t2v"), "step"] == 40
    assert r.loc[("val", "t2v"), "R1"] == 25 and r.loc[("val", "t2v"), "R5"] == 100
    np.testing.assert_array_equal(out.ranks[("xpool", 0, "test_best", "v2t")], E2[1])


def test_outcomes_refuse_inconsistent_or_incomplete_logs():
    bad = _log("xpool", 0, [E1, E2])
    bad.evals[1]["t2v"]["R1"] = 10.0  # recorded metrics disagree with the recorded ranks
    with pytest.raises(XPoolError, match="recorded t2v R1"):
        xp.protocol_outcomes([bad], [])
    old = _log("xpool", 0, [E1])
    del old.evals[0]["ranks"]
    with pytest.raises(XPoolError, match="no per-query ranks"):
        xp.protocol_outcomes([old], [])
    val_log = _log("xpool", 0, [E1])
    val_log.evals[0]["split"] = "val"
    with pytest.raises(XPoolError, match="test split"):
        xp.protocol_outcomes([val_log], [])


def test_paired_differences_pair_by_seed_and_caption():
    logs = [_log("xpool", 0, [E1, E2]), _log("xpool", 1, [E3, E1])]
    vals = [_val("xpool", 0, [1, 2, 2, 2], [1, 1, 2, 2]), _val("xpool", 1, [2, 2, 2, 2],
                                                               [1, 1, 2, 2])]
    out = xp.protocol_outcomes(logs, vals, window=5)
    both = xp.paired_differences(out, n_boot=500)
    assert set(zip(both["rule"], both["baseline"], strict=True)) == set(xp.PAIRS)
    paired = both[both["baseline"] == "val"].set_index(["rule", "direction"])
    # (a) t2v: seed 0 keeps E2 (hits 1,1,1,0), seed 1 keeps E3 (1,1,0,0): per-query mean hits
    # 1, 1, .5, 0; (c): seed 0 (1,0,0,0), seed 1 (0,0,0,0): .5, 0, 0, 0 -> (2.5 - .5) / 4 = 50
    row = paired.loc[("test_best", "t2v")]
    assert row["diff_R1"] == pytest.approx(50.0)
    assert row["lo_R1"] <= row["diff_R1"] <= row["hi_R1"] and row["seeds"] == "0 1"
    # (d): seed 0 keeps E2, seed 1 keeps E1 (1,0,0,0): means 1, .5, .5, 0 -> (2 - .5) / 4
    assert paired.loc[("last", "t2v"), "diff_R1"] == pytest.approx(37.5)
    assert paired.loc[("test_best", "t2v"), "n_queries"] == 4
    # within the same runs, (a) against (d): means 1, 1, .5, 0 against 1, .5, .5, 0 -> .5 / 4
    vs_last = both[both["baseline"] == "last"].set_index(["rule", "direction"])
    assert vs_last.loc[("test_best", "t2v"), "diff_R1"] == pytest.approx(12.5)
    # (b) with the default window of 5 keeps each run's best partial window: the same
    # checkpoints as (a) here (seed 0: 25, 50 -> E2; seed 1: 50, 37.5 -> E3)
    assert vs_last.loc[("test_window", "t2v"), "diff_R1"] == pytest.approx(12.5)
    # the same checkpoint on both sides: no difference, a degenerate interval
    same = xp.protocol_outcomes([_log("mean", 0, [E1])], [_val("mean", 0, *E1)])
    p = xp.paired_differences(same, n_boot=200)
    assert (p[["diff_R1", "lo_R1", "hi_R1", "diff_R5"]] == 0).all().all()
    with pytest.raises(XPoolError, match="no rule \\(c\\) runs"):
        xp.paired_differences(xp.protocol_outcomes([_log("mean", 0, [E1])], []))


def test_summary_counts_identical_seeds_once_and_rankings_show_ties():
    logs = [_log("mean", s, [E1, E1]) for s in (0, 1, 2)] + \
           [_log("xpool", 0, [E1, E2]), _log("xpool", 1, [E3, E3]), _log("xpool", 2, [E2, E2])]
    vals = [_val("mean", s, *E1) for s in (0, 1, 2)] + [_val("xpool", s, *E1) for s in (0, 1, 2)]
    out = xp.protocol_outcomes(logs, vals)
    s = xp.summarize(out)
    mean_rows = s[s["pooling"] == "mean"]
    assert (mean_rows["n_seeds"] == 3).all() and (mean_rows["n_distinct"] == 1).all()
    assert (mean_rows["R1_std"] == 0).all()
    xb = s[(s["pooling"] == "xpool") & (s["rule"] == "test_best") & (s["direction"] == "t2v")]
    assert xb["n_distinct"].iloc[0] == 2 and xb["R1_mean"].iloc[0] == pytest.approx(200 / 3)
    assert xp._deterministic(s) == ["mean"]
    ranks = xp.rankings(s).set_index("rule")["ranking"]
    assert ranks["test_best"] == "X-Pool > mean"
    assert ranks["val"] == "mean = X-Pool"
    md = xp.protocol_markdown(s, xp.paired_differences(out, n_boot=100), "t")
    assert "| mean | t2v | 3 (1) |" in md
    assert "Δ R@1 (a) vs (d) [95% CI]" in md and "Δ R@1 (b) vs (c) [95% CI]" in md


def test_overrides_and_descriptions():
    emb = load_config("embedded")
    o = xp.protocol_overrides(emb, "mean", "val", 5, 100)
    assert o == {"model.pooling": "mean", "train.selection": "val",
                 "train.evals_per_epoch": 5, "data.val_videos": 100}
    assert xp.protocol_overrides(emb, "mean", "test", None, 100) == {
        "model.pooling": "mean", "train.selection": "test"}
    with pytest.raises(ConfigError, match="val_videos"):
        xp.protocol_overrides(emb, "mean", "val", None, None)
    # MSVD has its own validation split: nothing held out
    assert "data.val_videos" not in xp.protocol_overrides(load_config("paper-msvd"), "xpool",
                                                          "val", None, 1000)
    assert xs.describe_selection(emb, 9) == (
        "checkpoint: best single test evaluation of 9 evaluations (chosen on the test split)")
    w = load_config("embedded", {"train.selection_window": 5})
    assert "over 5 consecutive evaluations" in xs.describe_selection(w)
    assert "authors'" in xs.describe_selection(w)
    v = load_config("embedded", {"train.selection": "val", "data.val_videos": 50})
    assert xs.describe_selection(v) == ("checkpoint: best single evaluation on 50 training videos "
                                        "held out for validation; test evaluated once")
    assert "the validation split" in xs.describe_selection(
        load_config("paper-msvd", {"train.selection": "val"}))


# ----------------------------------------------------------------------------------------------
# end to end on the smoke profile


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    from xpool.data.synthetic import ensure_corpus
    from xpool.engine.pretrain import ensure_pretrained

    wd = tmp_path_factory.mktemp("protocol")
    old = os.getcwd()
    os.chdir(wd)
    cfg = load_config("smoke")
    ensure_corpus(cfg)
    ensure_pretrained(cfg, progress=False)
    yield wd
    os.chdir(old)


def test_study_agrees_with_the_training_loops_own_selection(smoke_dir):
    st = xs.open_study("smoke", smoke_dir / "results" / "smoke", mode="frozen", progress=False)
    res = xp.protocol_study(st, [0], poolings=("mean", "xpool"), window=3, evals_per_epoch=3,
                            val_videos=4, n_boot=200)
    runs = res.runs.set_index(["pooling", "rule", "direction"])
    assert set(res.runs["rule"]) == set(xp.RULES)
    assert (res.runs.groupby(["pooling", "rule"]).size() == 2).all()
    for pooling in ("mean", "xpool"):
        # rule (a) is what the run chose itself (the smoke profile keeps the best single test
        # evaluation) ...
        test_run = st.run(xp.protocol_overrides(st.base, pooling, "test", 3, 4), seed=0)
        assert test_run.metrics["selection"] == "test"
        for d in ("t2v", "v2t"):
            assert runs.loc[(pooling, "test_best", d), "R1"] == pytest.approx(
                test_run.metrics[d]["R1"])
        assert runs.loc[(pooling, "test_best", "t2v"), "step"] == test_run.metrics["best_step"]
        # ... rule (b) is what a run of the same seed chooses with a window of 3 (evaluation does
        # not touch the training trajectory) ...
        o = {**xp.protocol_overrides(st.base, pooling, "test", 3, 4),
             "train.selection_window": 3}
        windowed = st.run(o, seed=0)
        assert runs.loc[(pooling, "test_window", "t2v"), "step"] == windowed.metrics["best_step"]
        assert runs.loc[(pooling, "test_window", "t2v"), "R1"] == pytest.approx(
            windowed.metrics["t2v"]["R1"])
        # ... (d) is the final step, (c) the val-selected run's test numbers
        assert runs.loc[(pooling, "last", "t2v"), "step"] == test_run.metrics["total_steps"]
        val_run = st.run(xp.protocol_overrides(st.base, pooling, "val", 3, 4), seed=0)
        assert val_run.metrics["selection"] == "val"
        assert runs.loc[(pooling, "val", "v2t"), "R1"] == pytest.approx(
            val_run.metrics["v2t"]["R1"])
        assert runs.loc[(pooling, "val", "t2v"), "run_id"] == val_run.record.run_dir.name
    # frozen mean pooling: no parameter changes a ranking, so every rule gives one result
    mean = res.runs[(res.runs["pooling"] == "mean") & (res.runs["direction"] == "t2v")]
    assert mean["R1"].nunique() == 1
    paired = res.paired[res.paired["pooling"] == "mean"]
    assert (paired["diff_R1"] == 0).all()
    tables = st.tables_dir
    for name in ("protocol", "protocol_summary", "protocol_paired"):
        assert (tables / f"{name}.csv").is_file() and (tables / f"{name}.md").is_file()
    assert pd.read_csv(tables / "protocol.csv").shape[0] == len(res.runs)
    assert res.figure_path.stat().st_size > 1000
    md = (tables / "protocol.md").read_text()
    assert "(b) test, best window (authors')" in md and "paired by seed and caption" in md
    assert "9 evaluations, 3 per epoch" in md  # 3 frozen epochs x 3 evaluations
    # figures-only rebuilds the same numbers from the records
    ro = xs.open_study("smoke", smoke_dir / "results" / "smoke", mode="frozen", progress=False,
                       figures_only=True)
    again = xp.protocol_study(ro, [0], poolings=("mean", "xpool"), window=3, evals_per_epoch=3,
                              val_videos=4, n_boot=200, write=False)
    pd.testing.assert_frame_equal(again.runs, res.runs)


def test_notebook_declares_every_parameter_reproduce_passes():
    """papermill drops a parameter whose line it cannot parse (silently running the default)."""
    from pathlib import Path

    import papermill as pm

    from xpool import reproduce as rp

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "10_protocol.ipynb"
    declared = set(pm.inspect_notebook(str(nb)))
    assert {"profile", "output_dir", "mode", "seeds", "window", "evals_per_epoch", "val_videos",
            "n_boot"} <= declared
    for profile in ("smoke", "paper-msrvtt9k", "frozen-msvd", "embedded-finetune-protocol"):
        assert set(rp.notebook_parameters(profile, "10_protocol")) <= declared, profile
