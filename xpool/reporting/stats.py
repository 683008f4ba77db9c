"""Statistics over seeds and queries: mean and sample std over seeds, and the paired bootstrap over
per-query ranks (a difference in R@k with its interval and p-value)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from xpool.errors import XPoolError
from xpool.reporting.names import METRICS, pooling_sort_key


def sample_std(x: pd.Series) -> float:
    """Sample std over seeds (ddof=1); a single seed has no spread, shown as 0 rather than NaN."""
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
            row[f"{m}_std"] = sample_std(g[m])
        seeds = sorted(int(s) for s in g["seed"].unique())
        row["n_seeds"] = len(seeds)
        row["seeds"] = " ".join(str(s) for s in seeds)
        rows.append(row)
    return pd.DataFrame(rows)


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
        out = out.sort_values("pooling", key=lambda s: s.map(pooling_sort_key))
    return out.reset_index(drop=True)
