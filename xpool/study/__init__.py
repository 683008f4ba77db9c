"""Studies: grids of training runs, collected into DataFrames and written as tables.

The notebooks are thin drivers over this package (`from xpool import study as xs`, then
`xs.open_study(...)`, `xs.dataset_study(...)`, ...). Its modules, bottom up, each importing only
from those below it (the `study-layers` contract in pyproject.toml):

- `collect`: finished runs as data (records to metrics DataFrames, ranks, saved embeddings);
- `runner`: `Study` and `open_study`, which train or read the runs of a grid;
- `qualitative`: frames, the frames a caption names, attention mass, the held-out ambiguity;
- `experiments`: the dataset tables, the pooling and X-Pool ablations, the sub-region study;
- `figures`: the attention, top-5, training-curve, ablation and sub-region figures;
- `explore`: the interactive explorer of notebook 08.

This facade re-exports the names the notebooks, the command line and the other modules use.
"""

from xpool.config import dataset_key
from xpool.study.collect import (
    RunOutputs,
    RunResult,
    load_outputs,
    metrics_frame,
    ranks_by_method,
    results_from_table,
    training_curves,
)
from xpool.study.experiments import (
    ABLATION_COLUMNS,
    MSVD_HELDOUT_FRACTION,
    MSVD_HELDOUT_MAX,
    NATIVE_VAL,
    PAPER_POOLINGS,
    PARAMETER_FREE,
    STANDINS,
    SUBREGION_COLUMNS,
    AblationResult,
    DatasetResult,
    SubregionResult,
    dataset_study,
    dataset_title,
    describe_selection,
    frozen_spread_note,
    pooling_ablation,
    standin_overrides,
    subregion_study,
    xpool_ablations,
)
from xpool.study.explore import Explorer, explorer_for, explorer_widget
from xpool.study.figures import attention_figure, render_figures, top5_figure
from xpool.study.qualitative import (
    CAPTION_GLUE,
    attention_mass,
    msvd_heldout_note,
    named_frames,
    pick_query,
    synthetic_vocabulary,
    video_frames,
)
from xpool.study.runner import (
    DEFAULT_HEAD_WORKERS,
    FROZEN_EPOCH_FACTOR,
    FROZEN_LR_FACTOR,
    HEAD_COST,
    HEAD_THREADS,
    MODES,
    Study,
    StudyStop,
    head_workers,
    open_study,
    results_folder,
)

__all__ = [
    "ABLATION_COLUMNS",
    "CAPTION_GLUE",
    "DEFAULT_HEAD_WORKERS",
    "FROZEN_EPOCH_FACTOR",
    "FROZEN_LR_FACTOR",
    "HEAD_COST",
    "HEAD_THREADS",
    "MODES",
    "MSVD_HELDOUT_FRACTION",
    "MSVD_HELDOUT_MAX",
    "NATIVE_VAL",
    "PAPER_POOLINGS",
    "PARAMETER_FREE",
    "STANDINS",
    "SUBREGION_COLUMNS",
    "AblationResult",
    "DatasetResult",
    "Explorer",
    "RunOutputs",
    "RunResult",
    "Study",
    "StudyStop",
    "SubregionResult",
    "attention_figure",
    "attention_mass",
    "dataset_key",
    "dataset_study",
    "dataset_title",
    "describe_selection",
    "explorer_for",
    "explorer_widget",
    "frozen_spread_note",
    "head_workers",
    "load_outputs",
    "metrics_frame",
    "msvd_heldout_note",
    "named_frames",
    "open_study",
    "pick_query",
    "pooling_ablation",
    "ranks_by_method",
    "render_figures",
    "results_folder",
    "results_from_table",
    "standin_overrides",
    "subregion_study",
    "synthetic_vocabulary",
    "top5_figure",
    "training_curves",
    "video_frames",
    "xpool_ablations",
]
