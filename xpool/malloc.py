"""glibc's allocator set to keep freed memory, for the study's large short-lived CPU tensors.

Why: glibc serves every allocation above its mmap threshold (which grows to at most 32 MB) with a
fresh `mmap` and returns it to the kernel on `free`, so every large tensor pays page faults that
zero its pages again. Exact mode (`xpool.exact_gemm`) allocates float64 patches of up to 150 MB
per convolution of a fine-tuning step. Measured on 2 cores with another study running beside it
(8 fine-tuning steps and one evaluation of `embedded-finetune-protocol`, X-Pool, two runs each):
18.0 and 19.3 s of system time and 51 and 52 s of wall time by default, 1.6 s and 37 s with
these settings, and the same losses.

What: `M_MMAP_MAX = 0` (every block comes from the heap) and `M_TRIM_THRESHOLD = 1 GiB` (freed
heap is kept for reuse up to that much). The cost is that a process's resident memory stays near
its peak. Where memory comes from never changes a value: `tests/test_exact_gemm.py` checks that
pretraining gives the same bits with and without it, under `MALLOC_PERTURB_` (which fills
allocated and freed memory with a byte pattern, so a read of uninitialised memory would show).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["ENV", "keep_freed_memory"]

# mallopt's parameter numbers (glibc's malloc.h) and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
# The same settings as environment variables, which glibc reads when a process starts.
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Apply the settings to this process (`mallopt`) and, through the environment, to every
    process it starts (notebook kernels, head workers). Returns False, changing nothing, where
    the C library is not glibc; variables the user has set are left as they are."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    for name, value in ENV.items():
        os.environ.setdefault(name, value)
    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(_M_MMAP_MAX, int(os.environ["MALLOC_MMAP_MAX_"]))
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(os.environ["MALLOC_TRIM_THRESHOLD_"]))
    return bool(ok)
