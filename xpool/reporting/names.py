"""The metric and pooling names every table and figure uses, and the order they are shown in."""

from __future__ import annotations

from xpool.config import POOLINGS

METRICS = ("R1", "R5", "R10", "MdR", "MnR")
# Higher is better for recalls, lower for ranks: used to phrase differences and pick best rows.
HIGHER_IS_BETTER = {"R1": True, "R5": True, "R10": True, "MdR": False, "MnR": False}
POOLING_LABELS = {
    "xpool": "X-Pool",
    "mean": "mean",
    "self_attention": "self-attention",
    "topk": "top-k",
    "attention": "param-free attention",
}


def pooling_label(pooling: str) -> str:
    """The display name of a pooling head (its config name where it has none)."""
    return POOLING_LABELS.get(pooling, pooling)


def pooling_sort_key(pooling: str) -> int:
    """Rows and plots follow `config.POOLINGS`: the text-agnostic baselines first, X-Pool last;
    names outside it sort after them."""
    return POOLINGS.index(pooling) if pooling in POOLINGS else len(POOLINGS)
