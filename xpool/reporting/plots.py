"""Figures: the pooling ablation, R@1 against K, training curves, X-Pool's attention over a
video's frames and the top retrieved videos, as seaborn/matplotlib figures saved as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpool.errors import XPoolError
from xpool.io import atomic_write
from xpool.reporting.names import pooling_label, pooling_sort_key


def pyplot_seaborn() -> tuple[Any, Any]:
    """(matplotlib.pyplot, seaborn), with the figure theme set."""
    # A non-interactive backend unless a notebook already chose one; imported lazily so that
    # building tables never loads matplotlib and seaborn (seconds of import).
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


def plot_pooling_ablation(runs: pd.DataFrame, boot: pd.DataFrame, title: str = "") -> Any:
    """Left: text-to-video R@1 per pooling strategy (mean and every seed). Right: the paired
    bootstrap difference in R@1 against X-Pool with its 95% interval."""
    plt, sns = pyplot_seaborn()
    d = runs[runs["direction"] == "t2v"].copy()
    order = sorted(d["pooling"].unique(), key=pooling_sort_key)
    d["strategy"] = d["pooling"].map(pooling_label)
    labels = [pooling_label(p) for p in order]
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
        b["strategy"] = b["pooling"].map(pooling_label)
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
    plt, sns = pyplot_seaborn()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = sorted(summary["pooling"].unique(), key=pooling_sort_key)
    palette = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    for p in order:
        s = summary[summary["pooling"] == p].sort_values("K")
        ax.plot(s["K"], s["R1_mean"], marker="o", color=palette[p], label=pooling_label(p))
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
    plt, sns = pyplot_seaborn()
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
    plt, _ = pyplot_seaborn()
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
    plt, _ = pyplot_seaborn()
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
