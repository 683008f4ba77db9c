"""xpool: a reproducibility study of X-Pool (CVPR 2022) for text-video retrieval."""

import os

# libgomp's default busy-wait makes idle OpenMP threads spin on the CPU; on a small shared machine
# (2 cores, data-loader workers, parallel test processes) that spinning starves the threads doing
# the work. It is read once, when torch loads libgomp, so it must be set before `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Instruction-set caps for torch's CPU kernels (see xpool/determinism.py): AVX-512 kernels round
# differently from AVX2 ones, so results are bit-identical across CPUs only when both run the same
# kernels. XPOOL_CPU_ISA=avx2 (set by `make reproduce`, `make figures`, `make test` and the xpool
# Jupyter kernel) caps ATen and oneDNN; torch reads both variables once, when it loads, so they are
# set here, before any xpool module imports torch.
_ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
_isa = os.environ.get("XPOOL_CPU_ISA", "").strip().lower()
if _isa in _ISA_CAPS:
    os.environ.update(_ISA_CAPS[_isa])
elif _isa not in ("", "native"):
    raise ValueError(f"environment variable XPOOL_CPU_ISA must be avx2 or native, got {_isa!r}")

__version__ = "0.1.0"
