"""xpool: a reproducibility study of X-Pool (CVPR 2022) for text-video retrieval."""

import os

# libgomp's default busy-wait makes idle OpenMP threads spin on the CPU; on a small shared machine
# (2 cores, data-loader workers, parallel test processes) that spinning starves the threads doing
# the work. It is read once, when torch loads libgomp, so it must be set before `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
