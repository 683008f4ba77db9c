"""What makes the embedded study bit-identical across machines, and what records it.

Three things decide the numbers beyond the code and the lock file:

- **torch's CPU kernels.** ATen and oneDNN pick AVX-512 kernels where the CPU has them, and these
  round differently from the AVX2 ones. `XPOOL_CPU_ISA=avx2` caps both at AVX2 (applied in
  `xpool/__init__.py`, before torch loads); `native` (or unset) lets torch choose. The cap is set
  by `make reproduce`, `make figures`, `make test` and the `xpool` Jupyter kernel, never by the
  benchmarks; every run's `environment.json` records the capability torch actually used.
- **the vendor libraries.** MKL and oneDNN, which do torch's float32 matrix products and
  convolutions on the CPU, and MKL's vector math, which does its `sqrt`, `exp`, `log` and a few
  more, choose code paths by CPU vendor and model under any cap: an Intel Xeon and an AMD EPYC
  gave different pretrained tiny CLIPs with the cap on. `model.gemm: exact` (the embedded
  profiles) computes those products exactly and those functions from ATen's own kernels instead,
  so no vendor code decides a bit (`xpool.exact_gemm`, `xpool.exact_math`).
- **thread counts.** A reduction split over 1 or 2 threads rounds differently, so pretraining,
  feature extraction and, with `model.gemm: exact` on the CPU, fine-tuning run with
  STUDY_THREADS threads whatever the machine has; frozen heads run with HEAD_THREADS.

`python -m xpool.determinism --kernel-env NAME` adds the cap to an installed Jupyter kernel's
`kernel.json` (what `make setup` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from xpool import _ISA_CAPS
from xpool.errors import XPoolError

# The instruction set bit-identity is promised for: every x86-64 CPU of the last decade has AVX2.
STUDY_ISA = "avx2"
# torch.backends.cpu.get_cpu_capability() under the cap.
STUDY_CAPABILITY = "AVX2"
# Intra-op threads of pretraining and feature extraction (the machines the study targets have 2
# cores; a count fixed here, not the machine's, keeps the reductions' rounding the same).
STUDY_THREADS = 2
# Intra-op threads of a frozen head's training: its tensors are tiny, where one thread is also the
# fastest (no synchronisation per op), and the study trains two heads at a time instead.
HEAD_THREADS = 1
CAP_VARIABLES = ("XPOOL_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cap_cpu_isa(isa: str = STUDY_ISA) -> bool:
    """Set the caps in this process's environment (inherited by every process it starts).

    Returns True when torch in this process runs under them: torch not loaded yet (it will read
    them), or loaded with the capped capability. False means torch was loaded earlier without the
    cap; only child processes (notebook kernels, workers) get it then.
    """

    if isa not in _ISA_CAPS:
        raise XPoolError(f"unknown CPU instruction-set cap {isa!r}; valid: {sorted(_ISA_CAPS)}")
    os.environ["XPOOL_CPU_ISA"] = isa
    os.environ.update(_ISA_CAPS[isa])
    if "torch" not in sys.modules:
        return True
    return torch_capability() == STUDY_CAPABILITY


def torch_capability() -> str:
    """The CPU capability torch's ATen dispatches to (e.g. AVX2, AVX512)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def cpu_flags() -> list[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo), sorted; empty where unavailable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def cpu_state() -> dict[str, Any]:
    """What decides torch's CPU kernels here: the caps requested and the capability in use."""
    flags = cpu_flags()
    return {
        "torch_cpu_capability": torch_capability(),
        "cpu_isa_cap": {k: os.environ.get(k) for k in CAP_VARIABLES},
        # MKL's code branch, when forced: it decides native products and math, not exact ones.
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "cpu_avx512": any(f.startswith("avx512") for f in flags),
        "cpu_flags": " ".join(flags),
    }


def install_kernel_env(kernel: str, isa: str = STUDY_ISA, prefix: str | None = None) -> Path:
    """Add XPOOL_CPU_ISA=`isa` to the `env` of an installed kernel's kernel.json."""
    path = Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / kernel / "kernel.json"
    if not path.is_file():
        raise XPoolError(f"no Jupyter kernel {kernel!r} at {path}: install it first "
                         f"(python -m ipykernel install --sys-prefix --name {kernel})")
    spec = json.loads(path.read_text())
    spec.setdefault("env", {})["XPOOL_CPU_ISA"] = isa
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m xpool.determinism --kernel-env xpool`: cap the kernel; prints the state."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-env", metavar="KERNEL",
                        help=f"add XPOOL_CPU_ISA={STUDY_ISA} to this installed kernel's env")
    args = parser.parse_args(argv)
    if args.kernel_env:
        print(f"{install_kernel_env(args.kernel_env)}: XPOOL_CPU_ISA={STUDY_ISA}")
    else:
        state = cpu_state()
        state.pop("cpu_flags")
        print(json.dumps(state, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
