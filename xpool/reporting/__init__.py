"""Reporting: the paper's reference numbers, result tables, paired bootstrap and seaborn figures.

Everything here works on plain data (pandas DataFrames of metrics, numpy rank arrays, image
arrays), so it is testable without training anything. `xpool.study` turns run records into those
DataFrames; the notebooks only call the two packages and display what they return.

The modules, bottom up: `names` (metric and pooling names, display order), `references` (the
published numbers), `stats` (mean and std over seeds, paired bootstrap), `tables` (result tables,
markdown, csv + md files) and `plots` (figures). This facade re-exports their public names, so
`from xpool import reporting; reporting.results_table(...)` is the way to call them.
"""

from xpool.reporting.names import (
    HIGHER_IS_BETTER,
    METRICS,
    POOLING_LABELS,
    pooling_label,
    pooling_sort_key,
)
from xpool.reporting.plots import (
    plot_attention,
    plot_pooling_ablation,
    plot_subregion,
    plot_top5,
    plot_training_curves,
    pyplot_seaborn,
    save_figure,
)
from xpool.reporting.references import (
    DATASETS,
    REFERENCES,
    Reference,
    reference_for,
    references_frame,
)
from xpool.reporting.stats import (
    bootstrap_against,
    bootstrap_interval,
    format_p,
    paired_bootstrap,
    sample_std,
    summarize,
)
from xpool.reporting.tables import (
    bootstrap_markdown,
    fmt_mean_std,
    frame_markdown,
    markdown_table,
    read_table,
    results_markdown,
    results_table,
    write_table,
)

__all__ = [
    "DATASETS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "POOLING_LABELS",
    "REFERENCES",
    "Reference",
    "bootstrap_against",
    "bootstrap_interval",
    "bootstrap_markdown",
    "fmt_mean_std",
    "format_p",
    "frame_markdown",
    "markdown_table",
    "paired_bootstrap",
    "plot_attention",
    "plot_pooling_ablation",
    "plot_subregion",
    "plot_top5",
    "plot_training_curves",
    "pooling_label",
    "pooling_sort_key",
    "pyplot_seaborn",
    "read_table",
    "reference_for",
    "references_frame",
    "results_markdown",
    "results_table",
    "sample_std",
    "save_figure",
    "summarize",
    "write_table",
]
