"""Checkpoint-selection protocols measured side by side (notebook 10).

Which checkpoint a study reports is part of its result. Four rules, on the same strategies and
seeds:

- (a) `test_best`: the test split, the best single evaluation (text-to-video R@1);
- (b) `test_window`: the test split, the authors' rule (layer6ai-labs/xpool, `trainer.py`:
  10 evaluations per epoch, `eval_window_size` 5): after every evaluation, the mean R@1 over the
  last `window` evaluations (fewer at the start of training), and the checkpoint kept is the one
  whose evaluation ends the best window; its own metrics are reported, not the window's mean;
- (c) `val`: a validation split held out from the training videos chooses the checkpoint, the
  test split is evaluated once (its own runs: `train.selection: val`, fewer training videos);
- (d) `last`: the last checkpoint, no selection.

Rules (a), (b) and (d) read one run's evaluation log (every evaluation records its per-query
ranks), so they are three readings of the same training run; (c) is another run with the same
seed. Ties go to the earliest evaluation, as the authors' strict `>` does.

The first part of this module is pure functions over evaluation logs and rank arrays; the last
part (`protocol_study`) trains or reads the runs through `xpool.study` and writes the tables and
the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xpool import reporting
from xpool.config import DIRECTIONS, POOLINGS, Config
from xpool.errors import ConfigError, XPoolError
from xpool.metrics import rank_metrics
from xpool.study import NATIVE_VAL, Study, dataset_title, describe_selection

RULES = ("test_best", "test_window", "val", "last")
# The rules read from a test-selected run's own evaluation log.
LOG_RULES = ("test_best", "test_window", "last")
RULE_LABELS = {
    "test_best": "(a) test, best evaluation",
    "test_window": "(b) test, best window (authors')",
    "val": "(c) validation split, test once",
    "last": "(d) last checkpoint",
}
# (rule, baseline) pairs of the paired table: every log rule against honest selection (c), and
# the two test-split rules against the last checkpoint (d) of the same runs, which isolates what
# choosing on the test split adds.
PAIRS = (("test_best", "val"), ("test_window", "val"), ("last", "val"),
         ("test_best", "last"), ("test_window", "last"))
REPORTED = ("R1", "R5")
# The score every rule selects on (the authors' default `metric: t2v`, R@1).
SELECT_ON = ("t2v", "R1")


# ----------------------------------------------------------------------------------------------
# Selection rules


def window_means(scores: Sequence[float], window: int) -> np.ndarray:
    """Mean of each score with the up to `window - 1` before it (the authors' bounded deque)."""
    if window < 1:
        raise XPoolError(f"window must be at least 1, got {window}")
    s = np.asarray(scores, dtype=np.float64)
    return np.array([s[max(0, i - window + 1) : i + 1].mean() for i in range(len(s))])


def select_index(scores: Sequence[float], rule: str, window: int = 5) -> int:
    """Index of the evaluation a log rule keeps (`test_best`, `test_window` or `last`)."""
    if len(scores) == 0:
        raise XPoolError("no evaluations to select from")
    if rule == "last":
        return len(scores) - 1
    if rule == "test_best":
        window = 1
    elif rule != "test_window":
        raise XPoolError(f"rule {rule!r} does not read an evaluation log; expected one of "
                         f"{LOG_RULES}")
    # np.argmax returns the first maximum: the earliest evaluation wins a tie, as `>` does.
    return int(np.argmax(window_means(scores, window)))


def selected_evaluation(evals: Sequence[Mapping[str, Any]], rule: str, window: int = 5,
                        where: str = "run") -> Mapping[str, Any]:
    """The evaluation record a log rule keeps from a test-selected run's evaluations."""
    if not evals:
        raise XPoolError(f"{where}: no evaluations in its log")
    splits = {e.get("split") for e in evals}
    if splits != {"test"}:
        raise XPoolError(f"{where}: rules {LOG_RULES} need evaluations on the test split, the log "
                         f"has {sorted(map(str, splits))} (a val-selected run is rule (c))")
    d, m = SELECT_ON
    return evals[select_index([float(e[d][m]) for e in evals], rule, window)]


# ----------------------------------------------------------------------------------------------
# Per-run outcomes


@dataclass
class TestLog:
    """A test-selected run: its evaluation log, in order (`RunRecord.evaluations()`)."""

    pooling: str
    seed: int
    evals: list[dict[str, Any]]
    run_id: str = ""


@dataclass
class ValOutcome:
    """A val-selected run: its final test metrics and per-query test ranks."""

    pooling: str
    seed: int
    metrics: dict[str, Any]
    ranks: dict[str, list[int]]
    run_id: str = ""
    num_evals: int = 0


@dataclass
class ProtocolOutcomes:
    """One row per (pooling, seed, rule, direction) and the per-query ranks behind each row."""

    runs: pd.DataFrame
    ranks: dict[tuple[str, int, str, str], np.ndarray] = field(repr=False)


def _metric_values(ranks: np.ndarray) -> dict[str, float]:
    return rank_metrics(ranks)


def protocol_outcomes(test_logs: Sequence[TestLog], val_outcomes: Sequence[ValOutcome],
                      window: int = 5) -> ProtocolOutcomes:
    """Every rule applied to every (pooling, seed): metrics from the per-query ranks each rule
    keeps, so a table's number and its bootstrap come from the same array."""
    rows: list[dict[str, Any]] = []
    ranks: dict[tuple[str, int, str, str], np.ndarray] = {}

    def add(pooling: str, seed: int, rule: str, run_ranks: Mapping[str, Any], step: Any,
            n_evals: int, run_id: str) -> None:
        for d in DIRECTIONS:
            if d not in run_ranks:
                raise XPoolError(f"run {run_id}: no per-query {d} ranks")
            r = np.asarray(run_ranks[d], dtype=np.int64)
            ranks[(pooling, seed, rule, d)] = r
            vals = _metric_values(r)
            rows.append({"pooling": pooling, "seed": seed, "rule": rule, "direction": d,
                         **{m: vals[m] for m in REPORTED}, "step": step,
                         "evaluations": n_evals, "run_id": run_id})

    for log in test_logs:
        if log.evals and "ranks" not in log.evals[0]:
            raise XPoolError(f"run {log.run_id}: its evaluation log has no per-query ranks "
                             f"(recorded by newer versions); retrain it (fresh=True)")
        for rule in LOG_RULES:
            e = selected_evaluation(log.evals, rule, window, where=f"run {log.run_id}")
            add(log.pooling, log.seed, rule, e["ranks"], int(e["step"]), len(log.evals),
                log.run_id)
    for v in val_outcomes:
        add(v.pooling, v.seed, "val", v.ranks, int(v.metrics.get("best_step", -1)), v.num_evals,
            v.run_id)
    runs = pd.DataFrame(rows)
    if runs.empty:
        raise XPoolError("protocol_outcomes: no runs")
    _check_recorded_metrics(runs, test_logs, val_outcomes, window)
    return ProtocolOutcomes(runs, ranks)


def _check_recorded_metrics(runs: pd.DataFrame, test_logs: Sequence[TestLog],
                            val_outcomes: Sequence[ValOutcome], window: int) -> None:
    """The metrics recomputed from the ranks must equal what each run recorded."""
    recorded: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    for log in test_logs:
        for rule in LOG_RULES:
            e = selected_evaluation(log.evals, rule, window)
            for d in DIRECTIONS:
                recorded[(log.pooling, log.seed, rule, d)] = e[d]
    for v in val_outcomes:
        for d in DIRECTIONS:
            recorded[(v.pooling, v.seed, "val", d)] = v.metrics[d]
    for row in runs.itertuples(index=False):
        rec = recorded[(row.pooling, row.seed, row.rule, row.direction)]
        for m in REPORTED:
            if abs(float(rec[m]) - getattr(row, m)) > 1e-6:
                raise XPoolError(f"run {row.run_id}: recorded {row.direction} {m} {rec[m]} but "
                                 f"its ranks give {getattr(row, m)} (rule {row.rule})")


# ----------------------------------------------------------------------------------------------
# Summaries, paired differences, ranking


def distinct_outcomes(ranks: Mapping[tuple[str, int, str, str], np.ndarray], pooling: str,
                      rule: str, direction: str, seeds: Sequence[int]) -> int:
    """How many different per-query rank vectors the seeds produced (1: the seeds are copies)."""
    return len({ranks[(pooling, s, rule, direction)].tobytes() for s in seeds})


def summarize(out: ProtocolOutcomes) -> pd.DataFrame:
    """Mean and std over seeds per (pooling, rule, direction), with the number of seeds and of
    distinct outcomes among them."""
    s = reporting.summarize(out.runs, ["pooling", "rule", "direction"], metrics=REPORTED)
    s["n_distinct"] = [
        distinct_outcomes(out.ranks, p, r, d, [int(x) for x in seeds.split()])
        for p, r, d, seeds in zip(s["pooling"], s["rule"], s["direction"], s["seeds"],
                                  strict=True)]
    return _sorted(s)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by pooling, then rule (or, in a paired table, the pair's place in `PAIRS`), then
    direction."""
    if "baseline" in df:
        order = [PAIRS.index(pair) for pair in zip(df["rule"], df["baseline"], strict=True)]
    else:
        order = [RULES.index(r) for r in df["rule"]]
    key = [(reporting.pooling_sort_key(p), o, DIRECTIONS.index(d))
           for p, o, d in zip(df["pooling"], order, df["direction"], strict=True)]
    return df.assign(_k=key).sort_values("_k").drop(columns="_k").reset_index(drop=True)


def _short(rule: str) -> str:
    """"(a)" for "test_best", and so on."""
    return RULE_LABELS[rule][:3]


def paired_differences(out: ProtocolOutcomes, n_boot: int = 10_000,
                       ks: Sequence[int] = (1, 5)) -> pd.DataFrame:
    """Rule minus baseline for every pair in `PAIRS`, per pooling and direction, for R@k in
    `ks`: a paired bootstrap over test queries (reporting.paired_bootstrap). Pairs are matched
    by seed (each query's hit averaged over the seeds both sides have) and by caption (the same
    test queries in the same order); against (c) the two sides are different runs, against (d)
    two checkpoints of the same run."""
    rows = []
    for pooling in sorted(out.runs["pooling"].unique(), key=reporting.pooling_sort_key):
        sub = out.runs[out.runs["pooling"] == pooling]
        for rule, baseline in PAIRS:
            base_seeds = set(sub[sub["rule"] == baseline]["seed"])
            if not base_seeds:
                raise XPoolError(f"no rule {_short(baseline)} runs of {pooling}: nothing "
                                 f"to pair against")
            seeds = sorted(base_seeds & set(sub[sub["rule"] == rule]["seed"]))
            if not seeds:
                raise XPoolError(f"{pooling}: no seed has both rule {_short(rule)} and rule "
                                 f"{_short(baseline)} outcomes")
            for d in DIRECTIONS:
                a = np.stack([out.ranks[(pooling, s, rule, d)] for s in seeds])
                b = np.stack([out.ranks[(pooling, s, baseline, d)] for s in seeds])
                if a.shape != b.shape:
                    raise XPoolError(f"{pooling} {d}: rule {_short(rule)} has {a.shape[1]} test "
                                     f"queries, rule {_short(baseline)} {b.shape[1]}: not the "
                                     f"same test split")
                row: dict[str, Any] = {"pooling": pooling, "rule": rule, "baseline": baseline,
                                       "direction": d, "seeds": " ".join(map(str, seeds))}
                for k in ks:
                    res = reporting.paired_bootstrap(a, b, k=k, n_boot=n_boot)
                    row.update({f"diff_R{k}": res["diff"], f"lo_R{k}": res["lo"],
                                f"hi_R{k}": res["hi"], f"p_R{k}": res["p"]})
                row["n_queries"] = int(a.shape[1])
                rows.append(row)
    return _sorted(pd.DataFrame(rows))


def paired_table(paired: pd.DataFrame) -> pd.DataFrame:
    """`paired_differences` for a reader: strategy names, "(a) vs (d)", and each difference with
    its 95% interval, R@1 and R@5."""
    def cell(r: pd.Series, k: int) -> str:
        return f"{r[f'diff_R{k}']:+.1f} [{r[f'lo_R{k}']:+.1f}, {r[f'hi_R{k}']:+.1f}]"
    return pd.DataFrame({
        "strategy": [reporting.POOLING_LABELS.get(p, p) for p in paired["pooling"]],
        "comparison": [f"{_short(r)} vs {_short(b)}"
                       for r, b in zip(paired["rule"], paired["baseline"], strict=True)],
        "direction": paired["direction"],
        "Δ R@1 [95% CI]": [cell(r, 1) for _, r in paired.iterrows()],
        "Δ R@5 [95% CI]": [cell(r, 5) for _, r in paired.iterrows()],
        "seeds": paired["seeds"],
        "test queries": paired["n_queries"],
    })


def paired_markdown(paired: pd.DataFrame) -> str:
    """`paired_table` as the markdown table `protocol_paired.md` holds."""
    return reporting.frame_markdown(paired_table(paired), "Paired bootstrap: rule minus baseline")


def rankings(summary: pd.DataFrame, direction: str = "t2v", metric: str = "R1") -> pd.DataFrame:
    """Per rule, the strategies from best to worst by mean `metric` (ties share a place)."""
    rows = []
    for rule in RULES:
        s = summary[(summary["rule"] == rule) & (summary["direction"] == direction)]
        if s.empty:
            continue
        means = {p: round(float(v), 6) for p, v in zip(s["pooling"], s[f"{metric}_mean"],
                                                        strict=True)}
        order = sorted(means, key=lambda p: (-means[p], reporting.pooling_sort_key(p)))
        text = ""
        for i, p in enumerate(order):
            sep = "" if i == 0 else (" = " if means[p] == means[order[i - 1]] else " > ")
            text += sep + reporting.POOLING_LABELS.get(p, p)
        rows.append({"rule": rule, "direction": direction, "ranking": text})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Tables and figure


def _deterministic(summary: pd.DataFrame) -> list[str]:
    """Poolings whose seeds gave one outcome under every rule and direction."""
    out = []
    for p, g in summary.groupby("pooling", sort=False):
        if (g["n_distinct"] == 1).all() and (g["n_seeds"] > 1).all():
            out.append(p)
    return sorted(out, key=reporting.pooling_sort_key)


def protocol_markdown(summary: pd.DataFrame, paired: pd.DataFrame, title: str,
                      notes: Sequence[str] = ()) -> str:
    """The protocol table: per strategy and direction, R@1 and R@5 under every rule and the
    paired differences of `PAIRS` (each rule against (c), the test-split rules against (d))."""
    header = ["pooling", "direction", "seeds (distinct)"]
    for r in RULES:
        header += [f"{RULE_LABELS[r]} R@1", "R@5"]
    header += [f"Δ R@1 {_short(r)} vs {_short(b)} [95% CI]" for r, b in PAIRS]
    rows = []
    for (p, d), g in summary.groupby(["pooling", "direction"], sort=False):
        g = g.set_index("rule")
        n = int(g["n_seeds"].max())
        distinct = int(g["n_distinct"].max())
        cells = [reporting.POOLING_LABELS.get(p, p), d, f"{n} ({distinct})"]
        for r in RULES:
            if r not in g.index:
                cells += ["—", "—"]
                continue
            cells += [reporting.fmt_mean_std(g.loc[r, f"{m}_mean"], g.loc[r, f"{m}_std"],
                                             int(g.loc[r, "n_seeds"])) for m in REPORTED]
        for r, base in PAIRS:
            b = paired[(paired["pooling"] == p) & (paired["direction"] == d) &
                       (paired["rule"] == r) & (paired["baseline"] == base)]
            cells.append("—" if b.empty else
                         f"{b['diff_R1'].iloc[0]:+.1f} [{b['lo_R1'].iloc[0]:+.1f}, "
                         f"{b['hi_R1'].iloc[0]:+.1f}]")
        rows.append(cells)
    return reporting.markdown_table(header, rows, title=title, notes=notes)


def plot_protocol(runs: pd.DataFrame, title: str = "") -> Any:
    """R@1 per strategy under every rule, text-to-video and video-to-text: one dot per seed
    (dodged by rule), a bar for the mean over seeds."""
    plt, sns = reporting.pyplot_seaborn()
    d = runs.copy()
    order = sorted(d["pooling"].unique(), key=reporting.pooling_sort_key)
    d["strategy"] = d["pooling"].map(lambda p: reporting.POOLING_LABELS.get(p, p))
    d["protocol"] = d["rule"].map(RULE_LABELS)
    labels = [reporting.POOLING_LABELS.get(p, p) for p in order]
    hue_order = [RULE_LABELS[r] for r in RULES if r in set(d["rule"])]
    palette = dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order)), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=False)
    # seaborn draws the jitter from numpy's global RNG: seed it (and restore it) so the same
    # runs always give the same picture.
    state = np.random.get_state()
    np.random.seed(0)
    try:
        for ax, direction in zip(axes, DIRECTIONS, strict=True):
            g = d[d["direction"] == direction]
            sns.barplot(data=g, x="strategy", y="R1", hue="protocol", order=labels,
                        hue_order=hue_order, palette=palette, errorbar=None, alpha=0.35, ax=ax)
            sns.stripplot(data=g, x="strategy", y="R1", hue="protocol", order=labels,
                          hue_order=hue_order, palette=palette, dodge=True, jitter=0.08, size=4,
                          ax=ax, legend=False)
            ax.set(xlabel="", ylabel=f"{direction} R@1 (%)",
                   title=f"{direction}: bar = mean over seeds, dots = seeds")
            for tick in ax.get_xticklabels():
                tick.set_rotation(20)
                tick.set_horizontalalignment("right")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
    finally:
        np.random.set_state(state)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles[: len(hue_order)], names[: len(hue_order)], title="checkpoint protocol",
               loc="upper center", ncol=len(hue_order), bbox_to_anchor=(0.5, 0.0), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# The study (notebook 10)


@dataclass
class ProtocolResult:
    """Every run's outcome under every rule, the summary, the paired differences, the rankings
    and the rendered table."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    rankings: pd.DataFrame
    markdown: str
    figure_path: Any = None


RUN_COLUMNS = ["pooling", "seed", "rule", "direction", *REPORTED, "step", "evaluations", "mode",
               "run_id"]


def protocol_overrides(base: Config, pooling: str, selection: str,
                       evals_per_epoch: int | None, val_videos: int | None) -> dict[str, Any]:
    """The overrides of one protocol run: its pooling, the split that selects, how often it
    evaluates, and for rule (c) on a corpus without a validation split the held-out videos."""
    o: dict[str, Any] = {"model.pooling": pooling, "train.selection": selection}
    if evals_per_epoch is not None:
        o["train.evals_per_epoch"] = int(evals_per_epoch)
    if selection == "val" and base.data.corpus not in NATIVE_VAL:
        n = base.data.val_videos if val_videos is None else int(val_videos)
        if n < 1:
            raise ConfigError(f"rule (c) needs a validation split: {base.data.corpus} has none, so "
                              f"set val_videos (training videos held out), got {n}")
        o["data.val_videos"] = n
    return o


def protocol_study(study: Study, seeds: Sequence[int], poolings: Sequence[str] = POOLINGS,
                   window: int = 5, evals_per_epoch: int | None = None,
                   val_videos: int | None = None, n_boot: int = 10_000,
                   write: bool = True) -> ProtocolResult:
    """Every pooling strategy over `seeds` under the four rules.

    study: an `xpool.study.Study`. evals_per_epoch: how often every run evaluates (None: the
    profile's); rules (a), (b) and (d) differ only when it is large enough. val_videos: training
    videos held out for rule (c) where the corpus has no validation split (None: the profile's
    data.val_videos). Writes `tables/protocol*.csv|md` and `figures/protocol.png`.
    """
    if window < 1:
        raise ConfigError(f"window must be at least 1, got {window}")
    base = study.base
    study.require_corpus()
    variants = []
    for p in poolings:
        for sel in ("test", "val"):
            o = protocol_overrides(base, p, sel, evals_per_epoch, val_videos)
            variants.append(({"protocol_run": sel}, o))
    if any(v[1].get("data.val_videos") for v in variants):
        study.require_corpus(next(v[1] for v in variants if v[1].get("data.val_videos")))
    results = study.grid(variants, seeds)
    test_logs, val_outcomes = [], []
    for r in results:
        p, s, rid = r.config.model.pooling, int(r.config.train.seed), r.record.run_dir.name
        if r.labels["protocol_run"] == "test":
            test_logs.append(TestLog(p, s, r.record.evaluations(), rid))
        else:
            val_outcomes.append(ValOutcome(p, s, r.metrics, {d: r.ranks(d).tolist() for d in
                                                             DIRECTIONS}, rid,
                                           len(list(r.record.evals_dir.glob("eval_*.json")))))
    out = protocol_outcomes(test_logs, val_outcomes, window)
    mode = study.effective_mode
    out.runs["mode"] = mode
    runs = out.runs[RUN_COLUMNS]
    summary = summarize(out)
    paired = paired_differences(out, n_boot=n_boot)
    ranks = pd.concat([rankings(summary, d) for d in DIRECTIONS], ignore_index=True)
    cfg_t = results[0].config
    cfg_v = next(r.config for r in results if r.labels["protocol_run"] == "val")
    title = (f"Checkpoint protocols ({dataset_title(study)}, {mode}): R@1 and R@5 under "
             f"rules (a)-(d)")
    md = protocol_markdown(summary, paired, title,
                           _notes(summary, ranks, cfg_t, cfg_v, test_logs, seeds, window, n_boot,
                                  mode))
    result = ProtocolResult(runs, summary, paired, ranks, md)
    if write:
        reporting.write_table(runs, study.tables_dir, "protocol", md)
        reporting.write_table(summary, study.tables_dir, "protocol_summary",
                              reporting.frame_markdown(summary, f"{title}: summary"))
        reporting.write_table(paired, study.tables_dir, "protocol_paired",
                              paired_markdown(paired))
        fig = plot_protocol(runs, f"checkpoint protocols ({dataset_title(study)}, {mode})")
        result.figure_path = reporting.save_figure(fig, study.figures_dir / "protocol.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    return result


def _notes(summary: pd.DataFrame, ranks: pd.DataFrame, cfg_t: Config, cfg_v: Config,
           test_logs: Sequence[TestLog], seeds: Sequence[int], window: int, n_boot: int,
           mode: str) -> list[str]:
    n_evals = sorted({len(t.evals) for t in test_logs})
    held = ("the corpus's validation split" if cfg_v.data.corpus in NATIVE_VAL else
            f"{cfg_v.data.val_videos} training videos held out (fixed seed), so these runs "
            f"train on fewer videos")
    notes = [
        f"Mean ± std over seeds {', '.join(map(str, seeds))}; every rule selects on "
        f"text-to-video R@1 and reports the kept checkpoint's own metrics.",
        f"(a), (b), (d) read the evaluation log of one test-selected run per seed "
        f"({'/'.join(map(str, n_evals))} evaluations, {cfg_t.train.evals_per_epoch} per epoch); "
        f"(b) is the authors' rule with a window of {window} evaluations (partial windows at the "
        f"start count, ties go to the earliest). (c) is a separate run per seed chosen on "
        f"{held}; {describe_selection(cfg_v)}.",
        f"Δ: rule minus baseline on the same test queries, paired by seed and caption (each "
        f"query's hit averaged over the seeds), 95% paired bootstrap interval ({n_boot:,} "
        f"resamples). (a) vs (d) and (b) vs (d) compare checkpoints of the same runs: what "
        f"choosing on the test split adds; the differences against (c) mix honest selection with "
        f"training on fewer videos.",
        "seeds (distinct): how many seeds, and how many different per-query outcomes they gave; "
        "copies of one outcome are one piece of evidence, not several.",
    ]
    det = _deterministic(summary)
    if det:
        names = ", ".join(reporting.POOLING_LABELS.get(p, p) for p in det)
        why = (" In frozen mode a parameter-free head has no parameter that changes a ranking "
               "(only the logit scale learns), so every seed, checkpoint and rule gives the same "
               "result." if mode == "frozen" else "")
        notes.append(f"Deterministic here: {names} (every seed gave the same outcome under every "
                     f"rule); their ± 0 and their seeds are not independent evidence.{why}")
    for _, r in ranks.iterrows():
        notes.append(f"Ranking by mean {r['direction']} R@1 under {RULE_LABELS[r['rule']]}: "
                     f"{r['ranking']}.")
    return notes
