"""The paper's reference numbers, each with its source, and the datasets they are for."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from xpool.reporting.names import METRICS

DATASETS = {
    "msrvtt9k": "MSR-VTT 9k (1k-A test)",
    "msrvtt7k": "MSR-VTT 7k (1k-A test)",
    "msvd": "MSVD",
    "lsmdc": "LSMDC",
}


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
