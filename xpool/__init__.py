"""xpool: a reproducibility study of X-Pool (CVPR 2022) for text-video retrieval."""

__version__ = "0.1.0"
