"""Exact mode's sqrt, exp and log (xpool.exact_math) against torch's MKL vector-math kernels.

Each op runs on a float32 tensor the size of the tiny CLIP's parameters (1.4 M values; Adam's
`sqrt` of the second moments is the largest call the study makes) and on a 64-value tensor (the
temperature's `exp` is a single value): torch's kernel against the exact one
(`xpool.exact_math.exact_<op>`, what the dispatcher runs inside `exact_gemm()`), interleaved. The record
also counts, on the large input, how many exact and native results differ from the float64
reference rounded once (IEEE's correctly rounded square root for `sqrt`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from bench.common import BenchReport, apply_threads, bench_parser, fmt, time_interleaved

LARGE = 1_400_000
SMALL = 64


def _inputs(name: str, n: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    if name == "exp":
        return torch.randn(n, generator=g) * 10
    return torch.rand(n, generator=g) * 1e-6 + 1e-12  # second moments' scale


def _misses(name: str, x: Any, y: Any) -> int:
    """Values of `y` off the reference: IEEE's float32 sqrt, or float64 exp/log rounded once."""
    if name == "sqrt":
        ref = np.sqrt(x.numpy())
    else:
        ref = getattr(np, name)(x.numpy().astype(np.float64)).astype(np.float32)
    return int((y.numpy() != ref).sum())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes ``<results dir>/exact_math.json``."""
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)

    import torch

    from xpool import exact_math

    threads = apply_threads(args)
    repeats = args.repeats or (5 if args.quick else 20)
    report = BenchReport.from_args("exact_math", __doc__.splitlines()[0], args,
                                   params={"large": LARGE, "small": SMALL, "repeats": repeats,
                                           "threads": threads})
    rows, results = [], {}
    for name in ("sqrt", "exp", "log"):
        fn = getattr(torch, name)
        for n in (LARGE, SMALL):
            x = _inputs(name, n)
            kernel = getattr(exact_math, f"exact_{name}")
            t = time_interleaved({"native": lambda fn=fn, x=x: fn(x),
                                  "exact": lambda kernel=kernel, x=x: kernel(x)},
                                 repeats=repeats, number=1 if n == LARGE else 200)
            ratio = t["exact"].median / t["native"].median
            misses = (_misses(name, x, fn(x)), _misses(name, x, kernel(x))) if n == LARGE else ("", "")
            rows.append([name, n, fmt(t["native"].median * 1e3), fmt(t["exact"].median * 1e3),
                         fmt(ratio), *misses])
            results[f"{name}-{n}"] = {k: v.to_dict() for k, v in t.items()}
            if n == LARGE:
                report.add_headline(f"exact {name} / native, {LARGE:,} values", ratio, "x")
    report.add_table("Median ms per call",
                     ["op", "values", "native ms", "exact ms", "exact / native",
                      "native != float64 ref", "exact != float64 ref"], rows)
    report.results = results
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
