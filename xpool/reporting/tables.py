"""Result tables: the paper-style table with the reference numbers beside ours, markdown
rendering, and the csv + md pair every study writes.

Conventions: R@K in percent, MdR/MnR in ranks, one row per (pooling, direction) with the mean and
the standard deviation over seeds (sample std, ddof=1; 0 for a single seed), dual-softmax (DSL)
re-scored numbers in separate `DSL ...` columns, and for real corpora the paper's number and the
difference (ours - paper) beside every metric, with the reference's source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xpool.config import DIRECTIONS
from xpool.errors import XPoolError
from xpool.io import atomic_write_text
from xpool.paths import resolve
from xpool.reporting.names import METRICS, POOLING_LABELS, pooling_sort_key
from xpool.reporting.references import DATASETS, reference_for
from xpool.reporting.stats import format_p, summarize


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 1) -> str:
    """`46.9 ± 0.4` (or just `46.9` for a single seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n <= 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


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
    main["_order"] = [(pooling_sort_key(p), DIRECTIONS.index(d))
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
    return markdown_table(header, rows, title=title, notes=notes)


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], title: str | None = None,
                   notes: Sequence[str] = (), aligned: bool = False,
                   cell: Callable[[Any], str] = str) -> str:
    """A GitHub-flavoured markdown table, ending with a newline: `### title` above it and one
    `- note` line per note below it when given. `cell` turns a row value into text; '|' in any
    cell is escaped so it cannot split the cell. `aligned` pads every column to its widest cell,
    so the table also reads well as plain text (a terminal, the benchmark summary)."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    head = [esc(str(h)) for h in header]
    body = [[esc(cell(c)) for c in row] for row in rows]
    # Width 0 leaves a cell as it is (ljust(0) is a no-op), the unaligned layout.
    widths = [max([len(h)] + [len(r[i]) for r in body]) if aligned else 0
              for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) if aligned else "---" for w in widths) + "|"
    lines = [f"### {title}", ""] if title is not None else []
    lines += [line(head), rule, *(line(r) for r in body)]
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
    return markdown_table(list(df.columns), rows, title=title, notes=notes)


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
    return markdown_table(header, rows, title=title or f"Paired bootstrap against {baseline}",
                          notes=notes)


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
