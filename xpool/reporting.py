"""Reporting: the paper's reference numbers, result tables, paired bootstrap and seaborn figures.

Everything here works on plain data (pandas DataFrames of metrics, numpy rank arrays, image
arrays), so it is testable without training anything. `xpool.study` turns run records into those
DataFrames; the notebooks only call the two modules and display what they return.

Table conventions: R@K in percent, MdR/MnR in ranks, one row per (pooling, direction) with the
mean and the standard deviation over seeds (sample std, ddof=1; 0 for a single seed), dual-softmax
(DSL) re-scored numbers in separate `DSL ...` columns, and for real corpora the paper's number and
the difference (ours - paper) beside every metric, with the reference's source.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpool.errors import XPoolError
from xpool.io import atomic_write, atomic_write_text
from xpool.paths import resolve

METRICS = ("R1", "R5", "R10", "MdR", "MnR")
# Higher is better for recalls, lower for ranks: used to phrase differences and pick best rows.
HIGHER_IS_BETTER = {"R1": True, "R5": True, "R10": True, "MdR": False, "MnR": False}
DIRECTIONS = ("t2v", "v2t")
POOLING_LABELS = {
    "xpool": "X-Pool",
    "mean": "mean",
    "self_attention": "self-attention",
    "topk": "top-k",
    "attention": "param-free attention",
}
# Plot order: the text-agnostic baselines first, X-Pool last.
POOLING_ORDER = ("mean", "self_attention", "topk", "attention", "xpool")
DATASETS = {
    "msrvtt9k": "MSR-VTT 9k (1k-A test)",
    "msrvtt7k": "MSR-VTT 7k (1k-A test)",
    "msvd": "MSVD",
    "lsmdc": "LSMDC",
}


# ----------------------------------------------------------------------------------------------
# Reference numbers


@dataclass(frozen=True)
class Reference:
    """A published number set (R@1, R@5, R@10, MdR, MnR) with where it comes from."""

    method: str
    pooling: str  # which of our pooling heads it corresponds to
    dataset: str  # a key of DATASETS
    direction: str  # t2v or v2t
    values: tuple[float, float, float, float, float]
    source: str

    def as_dict(self) -> dict[str, float]:
        """Metric name -> published value."""
        return dict(zip(METRICS, self.values, strict=True))


# docs/architecture.md, "Results and reference numbers". The CLIP4Clip rows are the baselines
# the X-Pool paper compares against (mean pooling = meanP, self-attention = seqTransf).
REFERENCES: tuple[Reference, ...] = (
    Reference("X-Pool", "xpool", "msrvtt9k", "t2v", (46.9, 72.8, 82.2, 2.0, 14.3),
              "authors' README (R@1), later papers' tables"),
    Reference("X-Pool", "xpool", "msrvtt9k", "v2t", (44.4, 73.3, 84.0, 2.0, 9.0),
              "later papers' tables"),
    Reference("X-Pool", "xpool", "msrvtt7k", "t2v", (43.9, 72.5, 82.3, 2.0, 14.6),
              "R@1 from authors' README; the rest unverified"),
    Reference("X-Pool", "xpool", "msvd", "t2v", (47.2, 77.4, 86.0, 2.0, 9.3),
              "later papers' tables; MdR unverified"),
    Reference("X-Pool", "xpool", "lsmdc", "t2v", (25.2, 43.7, 53.5, 8.0, 53.2),
              "authors' README; MnR unverified"),
    Reference("CLIP4Clip meanP", "mean", "msrvtt9k", "t2v", (43.1, 70.4, 80.8, 2.0, 16.2),
              "CLIP4Clip-derived tables"),
    Reference("CLIP4Clip seqTransf", "self_attention", "msrvtt9k", "t2v",
              (44.5, 71.4, 81.6, 2.0, 15.3), "CLIP4Clip-derived tables"),
)


def reference_for(dataset: str, pooling: str, direction: str) -> Reference | None:
    """The published numbers for (dataset, pooling, direction), or None where none exist."""
    for ref in REFERENCES:
        if (ref.dataset, ref.pooling, ref.direction) == (dataset, pooling, direction):
            return ref
    return None


def references_frame() -> pd.DataFrame:
    """All reference rows as a DataFrame (for display and the sources footnote)."""
    return pd.DataFrame(
        [{"method": r.method, "pooling": r.pooling, "dataset": r.dataset,
          "direction": r.direction, **r.as_dict(), "source": r.source} for r in REFERENCES]
    )


# ----------------------------------------------------------------------------------------------
# Tables


def _std(x: pd.Series) -> float:
    # Sample std over seeds; a single seed has no spread, shown as 0 rather than NaN.
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def summarize(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean and std over seeds of `metrics`, grouped by `by`: columns `<m>_mean`, `<m>_std`,
    `n_seeds` and `seeds` (the seed list as text)."""
    missing = [c for c in [*by, *metrics, "seed"] if c not in df.columns]
    if missing:
        raise XPoolError(f"summarize: columns {missing} missing from the metrics frame")
    rows = []
    for key, g in df.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        for m in metrics:
            row[f"{m}_mean"] = float(g[m].mean())
            row[f"{m}_std"] = _std(g[m])
        seeds = sorted(int(s) for s in g["seed"].unique())
        row["n_seeds"] = len(seeds)
        row["seeds"] = " ".join(str(s) for s in seeds)
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 1) -> str:
    """`46.9 ± 0.4` (or just `46.9` for a single seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n <= 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _pooling_sort_key(p: str) -> int:
    return POOLING_ORDER.index(p) if p in POOLING_ORDER else len(POOLING_ORDER)


def results_table(df: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    """The paper-style result table from a long metrics frame.

    `df` has one row per (run, direction), direction in t2v, v2t, t2v_dsl, v2t_dsl, with
    columns pooling, seed, direction, selection and METRICS. Returns one row per (pooling,
    direction in t2v/v2t): mean and std over seeds, DSL columns, seeds, selection, and when
    `dataset` is a real dataset key, `paper_<m>` and `diff_<m>` (ours - paper) and the source.
    Rows without a published reference say so in `paper_source`.
    """
    if df.empty:
        raise XPoolError("results_table: no runs to tabulate")
    plain = df[df["direction"].isin(DIRECTIONS)]
    dsl = df[df["direction"].str.endswith("_dsl")].copy()
    dsl["direction"] = dsl["direction"].str.removesuffix("_dsl")
    main = summarize(plain, ["pooling", "direction"])
    if not dsl.empty:
        extra = summarize(dsl, ["pooling", "direction"])
        extra = extra.rename(columns={c: f"DSL_{c}" for c in extra.columns
                                      if c.endswith(("_mean", "_std"))})
        main = main.merge(extra.drop(columns=["n_seeds", "seeds"]), on=["pooling", "direction"],
                          how="left")
    selections = plain.groupby(["pooling", "direction"])["selection"].agg(
        lambda s: ", ".join(sorted(set(map(str, s)))))
    main["selection"] = [selections[(p, d)] for p, d in zip(main["pooling"], main["direction"],
                                                            strict=True)]
    if dataset is not None:
        if dataset not in DATASETS:
            raise XPoolError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
        sources = []
        for i, row in main.iterrows():
            ref = reference_for(dataset, row["pooling"], row["direction"])
            for m in METRICS:
                paper = ref.as_dict()[m] if ref else float("nan")
                main.loc[i, f"paper_{m}"] = paper
                main.loc[i, f"diff_{m}"] = row[f"{m}_mean"] - paper if ref else float("nan")
            sources.append(f"{ref.method}: {ref.source}" if ref else "no published number")
        main["paper_source"] = sources
    main["_order"] = [(_pooling_sort_key(p), DIRECTIONS.index(d))
                      for p, d in zip(main["pooling"], main["direction"], strict=True)]
    return main.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def results_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """Render `results_table` output as a markdown table with mean ± std cells."""
    real = "paper_source" in table.columns
    has_dsl = "DSL_R1_mean" in table.columns
    header = ["pooling", "direction"]
    for m in METRICS:
        header.append(m)
        if real:
            header += [f"paper {m}", f"Δ {m}"]
    if has_dsl:
        header += [f"DSL {m}" for m in METRICS]
    header += ["seeds", "selection"]
    if real:
        header.append("reference source")
    rows = []
    for _, r in table.iterrows():
        n = int(r["n_seeds"])
        cells = [POOLING_LABELS.get(r["pooling"], r["pooling"]), r["direction"]]
        for m in METRICS:
            cells.append(fmt_mean_std(r[f"{m}_mean"], r[f"{m}_std"], n))
            if real:
                paper = r[f"paper_{m}"]
                cells.append("—" if pd.isna(paper) else f"{paper:.1f}")
                diff = r[f"diff_{m}"]
                cells.append("—" if pd.isna(diff) else f"{diff:+.1f}")
        if has_dsl:
            cells += [fmt_mean_std(r[f"DSL_{m}_mean"], r[f"DSL_{m}_std"], n) for m in METRICS]
        cells += [str(r["seeds"]), str(r["selection"])]
        if real:
            cells.append(str(r["paper_source"]))
        rows.append(cells)
    return _markdown(title, header, rows, notes)


def _markdown(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]],
              notes: Sequence[str] = ()) -> str:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = [f"### {title}", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def frame_markdown(df: pd.DataFrame, title: str, notes: Sequence[str] = (),
                   digits: int = 2) -> str:
    """Any DataFrame as a markdown table (floats rounded to `digits`)."""
    def cell(x: Any) -> str:
        if isinstance(x, float | np.floating):
            return "—" if math.isnan(x) else f"{x:.{digits}f}"
        return str(x)

    rows = [[cell(x) for x in row] for row in df.itertuples(index=False)]
    return _markdown(title, list(df.columns), rows, notes)


def write_table(df: pd.DataFrame, tables_dir: str | Path, name: str, markdown: str) -> Path:
    """Write `<tables_dir>/<name>.csv` (the numbers) and `<name>.md` (the rendered table)."""
    tables_dir = Path(tables_dir)
    csv_path = tables_dir / f"{name}.csv"
    atomic_write_text(csv_path, df.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(tables_dir / f"{name}.md", markdown)
    return csv_path


def read_table(tables_dir: str | Path, name: str) -> pd.DataFrame:
    """Read a table written by `write_table`, with a clear error when it is absent."""
    path = resolve(tables_dir) / f"{name}.csv"
    if not path.is_file():
        raise XPoolError(f"table {path} does not exist: run the notebook that writes it first "
                         f"(make reproduce)")
    return pd.read_csv(path)


# ----------------------------------------------------------------------------------------------
# Paired bootstrap over per-query ranks


def _hits(ranks: Any, k: int) -> np.ndarray:
    """[S, Q] ranks (or [Q]) -> per-query hit rate averaged over seeds, [Q]."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.shape[1] == 0:
        raise XPoolError(f"ranks must be [queries] or [seeds, queries], got shape {r.shape}")
    return (r <= k).mean(axis=0)


def paired_bootstrap(ranks_a: Any, ranks_b: Any, k: int = 1, n_boot: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Difference in R@k (percent, a - b) over the same queries with a bootstrap interval.

    `ranks_a`, `ranks_b`: per-query ranks, [Q] or [S, Q] (S seeds; each query's hit is averaged
    over seeds first, so seeds are treated as fixed and queries as the random sample). Queries
    are resampled with replacement jointly for both methods, which is what makes it paired: the
    interval reflects how much the difference depends on which queries were asked, not the
    (shared) difficulty of the queries.

    Returns diff, lo, hi (percentile interval at `level`), p (two-sided bootstrap p-value for
    "no difference", the share of resamples on the other side of 0, doubled) and n_queries.
    """
    a, b = _hits(ranks_a, k), _hits(ranks_b, k)
    if a.shape != b.shape:
        raise XPoolError(f"paired bootstrap needs the same queries: {a.shape[0]} vs {b.shape[0]}")
    d = a - b
    q = d.shape[0]
    rng = np.random.default_rng(seed)
    # Resample in blocks so memory stays bounded for large query sets.
    means = np.empty(n_boot)
    block = max(1, 2_000_000 // q)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, q, size=(stop - start, q))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    diff = float(d.mean())
    p = 2 * min((means <= 0).mean(), (means >= 0).mean()) if diff != 0 else 1.0
    return {"diff": 100 * diff, "lo": 100 * float(lo), "hi": 100 * float(hi),
            "p": float(min(1.0, p)), "n_queries": int(q)}


def format_p(p: float, n_boot: int) -> str:
    """A bootstrap p-value as a reader should see it: below its resolution (no resample on the
    other side of 0; the smallest non-zero value is 2 / n_boot) it is "< 2/n_boot", not 0."""
    floor = 2 / n_boot
    return f"< {floor:.2g}" if p < floor else f"{p:.2g}"


def bootstrap_markdown(boot: pd.DataFrame, n_boot: int, key: str = "pooling",
                       baseline: str = "X-Pool", title: str | None = None) -> str:
    """The paired-bootstrap table for readers: display names, ΔR@1 with its 95% interval, and
    the p-value at its resolution (see `format_p`)."""
    header = [key, "direction", f"ΔR@1 vs {baseline}", "95% CI", "p", "queries", "seeds"]
    rows = []
    for _, r in boot.iterrows():
        label = POOLING_LABELS.get(r[key], r[key]) if key == "pooling" else r[key]
        rows.append([label, r["direction"], f"{r['diff_R1']:+.1f}",
                     f"[{r['lo']:+.1f}, {r['hi']:+.1f}]", format_p(float(r["p"]), n_boot),
                     int(r["n_queries"]), r["seeds"]])
    notes = [f"Paired bootstrap over test queries ({n_boot:,} resamples): row minus {baseline}, "
             f"in R@1 points. p: two-sided share of resamples on the other side of 0; "
             f"'< {2 / n_boot:.2g}' means none was."]
    return _markdown(title or f"Paired bootstrap against {baseline}", header, rows, notes)


def bootstrap_interval(ranks: Any, k: int = 1, n_boot: int = 2_000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """R@k in percent with a bootstrap interval over queries: (mean, lo, hi)."""
    h = _hits(ranks, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, h.shape[0], size=(n_boot, h.shape[0]))
    means = h[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return 100 * float(h.mean()), 100 * float(lo), 100 * float(hi)


def bootstrap_against(ranks: Mapping[str, Any], baseline: str = "xpool", k: int = 1,
                      n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap of every method in `ranks` against `baseline` (method - baseline).

    `ranks`: method -> [S, Q] ranks over the same seeds and queries. Returns one row per other
    method: pooling, diff_R{k}, lo, hi, p, n_queries.
    """
    if baseline not in ranks:
        raise XPoolError(f"paired bootstrap: no runs of the baseline {baseline!r}; have "
                         f"{sorted(ranks)}")
    rows = []
    for name, r in ranks.items():
        if name == baseline:
            continue
        res = paired_bootstrap(r, ranks[baseline], k=k, n_boot=n_boot, seed=seed)
        rows.append({"pooling": name, f"diff_R{k}": res["diff"], "lo": res["lo"],
                     "hi": res["hi"], "p": res["p"], "n_queries": res["n_queries"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values("pooling", key=lambda s: s.map(_pooling_sort_key))
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Figures


def _plt():
    # A non-interactive backend unless a notebook already chose one; imported lazily so that
    # `import xpool.reporting` stays cheap in tests that only build tables.
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower() and "ipympl" not in \
            matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and return its path."""
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    return path


def _label(p: str) -> str:
    return POOLING_LABELS.get(p, p)


def plot_pooling_ablation(runs: pd.DataFrame, boot: pd.DataFrame, title: str = "") -> Any:
    """Left: text-to-video R@1 per pooling strategy (mean and every seed). Right: the paired
    bootstrap difference in R@1 against X-Pool with its 95% interval."""
    plt, sns = _plt()
    d = runs[runs["direction"] == "t2v"].copy()
    order = sorted(d["pooling"].unique(), key=_pooling_sort_key)
    d["strategy"] = d["pooling"].map(_label)
    labels = [_label(p) for p in order]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    sns.barplot(data=d, x="strategy", y="R1", order=labels, errorbar="sd", ax=axes[0],
                color="#9ecae1", capsize=0.15)
    # seaborn draws the jitter from numpy's global RNG: seed it here (and restore it) so that the
    # same runs always give the same picture.
    state = np.random.get_state()
    np.random.seed(0)
    try:
        sns.stripplot(data=d, x="strategy", y="R1", order=labels, ax=axes[0], color="#08519c",
                      size=5, jitter=0.15)
    finally:
        np.random.set_state(state)
    axes[0].set(xlabel="", ylabel="text-to-video R@1 (%)", title="R@1 per strategy (bar: mean ± sd "
                "over seeds, dots: seeds)")
    for tick in axes[0].get_xticklabels():
        tick.set_rotation(25)
        tick.set_horizontalalignment("right")
    ax = axes[1]
    if boot.empty:
        ax.text(0.5, 0.5, "no paired comparison", ha="center", va="center")
    else:
        b = boot.copy()
        b["strategy"] = b["pooling"].map(_label)
        y = np.arange(len(b))
        col = next(c for c in b.columns if c.startswith("diff_R"))
        ax.errorbar(b[col], y, xerr=[b[col] - b["lo"], b["hi"] - b[col]], fmt="o",
                    color="#08519c", capsize=4)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(y, b["strategy"])
        ax.invert_yaxis()
        ax.set(xlabel="R@1 difference vs X-Pool (points, 95% paired bootstrap CI)",
               title="paired comparison over the same queries")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_subregion(summary: pd.DataFrame, runs: pd.DataFrame | None = None,
                   title: str = "") -> Any:
    """R@1 against K (scenes per video) per pooling strategy: the mean over seeds with the
    bootstrap interval (columns R1_lo, R1_hi) as a band, seeds as faint dots."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = sorted(summary["pooling"].unique(), key=_pooling_sort_key)
    palette = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    for p in order:
        s = summary[summary["pooling"] == p].sort_values("K")
        ax.plot(s["K"], s["R1_mean"], marker="o", color=palette[p], label=_label(p))
        ax.fill_between(s["K"], s["R1_lo"], s["R1_hi"], color=palette[p], alpha=0.15)
        if runs is not None:
            r = runs[runs["pooling"] == p]
            ax.scatter(r["K"], r["R1"], color=palette[p], alpha=0.35, s=12)
    ax.set_xticks(sorted(summary["K"].unique()))
    ax.set(xlabel="K, scenes per video (a caption names 1..K-1 of them)",
           ylabel="text-to-video R@1 (%)", title=title or "R@1 against K")
    ax.legend(title="pooling", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_training_curves(curves: pd.DataFrame, evals: pd.DataFrame, title: str = "") -> Any:
    """Training loss (smoothed) and evaluation R@1 against the step, one line per run label.

    `curves`: columns label, step, loss. `evals`: columns label, step, R1.
    """
    plt, sns = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    c = curves.copy()
    if not c.empty:
        # A rolling mean per run: single-step losses of a small batch are noisy.
        c["loss (smoothed)"] = c.groupby("label")["loss"].transform(
            lambda s: s.rolling(5, min_periods=1).mean())
        sns.lineplot(data=c, x="step", y="loss (smoothed)", hue="label", ax=axes[0],
                     errorbar=None)
    axes[0].set(title="training loss")
    if not evals.empty:
        sns.lineplot(data=evals, x="step", y="R1", hue="label", marker="o", ax=axes[1],
                     errorbar=None)
    axes[1].set(title="evaluation R@1 during training", ylabel="R@1 (%)")
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()
    if axes[1].get_legend() is not None:
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _strip(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """Frames [F, H, W, 3] side by side with white gaps: one image, so a figure draws one axes
    per video instead of one per frame (much faster to render)."""
    frames = np.asarray(frames)
    n, h, w = frames.shape[:3]
    out = np.full((h, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i, f in enumerate(frames):
        out[:, i * (w + gap) : i * (w + gap) + w] = f
    return out


def plot_attention(query: str, frames: np.ndarray, weights: np.ndarray,
                   highlight: Sequence[bool] | None = None, title: str = "") -> Any:
    """A query, its video's frames and X-Pool's attention weight on each frame.

    `highlight`: per frame, whether it shows a scene the query names (synthetic corpora know
    this): those frames are underlined and their bars coloured, so one sees whether the
    attention goes where the caption points.
    """
    plt, _ = _plt()
    from matplotlib.patches import Rectangle

    frames = np.asarray(frames)
    weights = np.asarray(weights, dtype=float)
    n = len(frames)
    if weights.shape != (n,):
        raise XPoolError(f"plot_attention: {n} frames but weights of shape {weights.shape}")
    mask = np.zeros(n, bool) if highlight is None else np.asarray(highlight, bool)
    if mask.shape != (n,):
        raise XPoolError(f"plot_attention: {n} frames but highlight of shape {mask.shape}")
    named, other = "#e6550d", "#3182bd"
    # About one inch per frame in both directions, so frames stay roughly square.
    fig, (top, ax) = plt.subplots(2, 1, figsize=(max(4.0, 1.0 * n) + 2.6, 3.4), sharex=True,
                                  gridspec_kw={"height_ratios": [1, 1.1], "hspace": 0.05})
    # The strip spans x in [-0.5, n - 0.5] so frame i sits above bar i.
    top.imshow(_strip(frames, gap=0), extent=(-0.5, n - 0.5, 0, 1), aspect="auto")
    for i in np.flatnonzero(mask):
        top.add_patch(Rectangle((i - 0.5, 0), 1, 1, fill=False, edgecolor=named, lw=5))
    for i in range(1, n):
        top.axvline(i - 0.5, color="white", lw=2)
    top.set_yticks([])
    top.grid(False)
    ax.bar(np.arange(n), weights, color=[named if m else other for m in mask])
    ax.axhline(1 / n, color="grey", ls="--", lw=1, label="uniform (mean pooling)")
    if mask.any():
        ax.bar([0], [0], color=named, label="frames of scenes the query names")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xticks(np.arange(n))
    ax.set_xlabel("frame")
    ax.set_ylabel("attention")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(title or f"query: {query!r}", fontsize=10)
    return fig


def plot_top5(query: str, results: Sequence[Mapping[str, Any]], title: str = "") -> Any:
    """The top retrieved videos of a query as frame strips, the ground truth outlined in green.

    `results`: dicts with frames [F, H, W, 3], video_id, score, is_gt (in rank order).
    """
    plt, _ = _plt()
    rows = len(results)
    if rows == 0:
        raise XPoolError("plot_top5: no results to show")
    n = max(len(r["frames"]) for r in results)
    fig, axes = plt.subplots(rows, 1, figsize=(1.0 * n + 1.8, 1.1 * rows + 0.6), squeeze=False)
    for i, r in enumerate(results):
        ax = axes[i, 0]
        ax.imshow(_strip(r["frames"]))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(bool(r["is_gt"]))
            spine.set_edgecolor("#2ca02c")
            spine.set_linewidth(4)
        mark = "\n(ground truth)" if r["is_gt"] else ""
        ax.set_ylabel(f"#{i + 1} {r['video_id']}\nscore {r['score']:.3f}{mark}", rotation=0,
                      ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"top-{rows} for: {query!r}", fontsize=10)
    fig.tight_layout()
    return fig
