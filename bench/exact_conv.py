"""Exact mode's convolutions (xpool.exact_gemm) against torch's own, on the tiny CLIP's layers.

Every convolution of the `xpool-tiny` image tower, at the shapes a fine-tuning step gives it
(batch 32 videos x 8 frames = 256 images of 64 px; `--quick`: 16 images), is timed three ways,
interleaved:

* ``native``: torch's convolution, forward and backward (oneDNN);
* ``exact``: the same inside `exact_gemm()`, forward and backward;
* the exact kernels' patch extraction (im2col to float64), ATen's `im2col` followed by a
  conversion against `xpool.exact_gemm._patches`, one strided copy. Both give the same bits
  (`tests/test_exact_gemm.py`); the headline is how much faster the copy is.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.common import BenchReport, apply_threads, bench_parser, fmt, time_interleaved


def _conv_layers(images: int) -> list[tuple[str, Any, Any]]:
    """(name, conv module, its input) for every Conv2d of the tiny tower on `images` frames."""
    import open_clip
    import torch

    import xpool.model.backbone  # noqa: F401  (registers the tiny configs)

    model = open_clip.create_model("xpool-tiny", pretrained=None).visual
    seen: list[tuple[str, Any, Any]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, m, a[0])))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(images, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for h in hooks:
        h.remove()
    return [(name, m, x.detach().clone()) for name, m, x in seen]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes ``<results dir>/exact_conv.json``."""
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)

    import torch

    from xpool.exact_gemm import _patches, exact_gemm

    threads = apply_threads(args)
    images = 16 if args.quick else 256
    repeats = args.repeats or (3 if args.quick else 7)
    report = BenchReport.from_args("exact_conv", __doc__.splitlines()[0], args,
                                   params={"images": images, "repeats": repeats,
                                           "threads": threads})

    def step(conv: Any, x: Any, up: Any) -> None:
        x = x.requires_grad_()
        (conv(x) * up).sum().backward()
        conv.zero_grad(set_to_none=True)

    def exact_step(conv: Any, x: Any, up: Any) -> None:
        with exact_gemm():
            step(conv, x, up)

    rows, results = [], {}
    totals = {"native": 0.0, "exact": 0.0, "im2col": 0.0, "patches": 0.0}
    for name, conv, x in _conv_layers(images):
        k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        up = torch.randn_like(conv(x))
        xq = x.round()
        t = time_interleaved({
            "native": lambda conv=conv, x=x, up=up: step(conv, x, up),
            "exact": lambda conv=conv, x=x, up=up: exact_step(conv, x, up),
            "im2col": lambda xq=xq, k=k, s=s, p=p, d=d: torch.ops.aten.im2col(
                xq, list(k), list(d), list(p), list(s)).to(torch.float64),
            "patches": lambda xq=xq, k=k, s=s, p=p, d=d: _patches(xq, *k, s, p, d),
        }, repeats=repeats)
        for side in totals:
            totals[side] += t[side].median
        rows.append([name, "x".join(map(str, x.shape)), f"{k[0]}x{k[1]}/{s[0]}",
                     *(fmt(t[side].median * 1e3) for side in totals),
                     fmt(t["exact"].median / t["native"].median)])
        results[name] = {side: v.to_dict() for side, v in t.items()}
    rows.append(["all layers", "", "", *(fmt(v * 1e3) for v in totals.values()),
                 fmt(totals["exact"] / totals["native"])])
    report.add_headline("patch extraction: ATen im2col + conversion / one strided copy",
                        totals["im2col"] / totals["patches"], "x")
    report.add_headline("exact / native convolution, forward + backward, all layers",
                        totals["exact"] / totals["native"], "x")
    report.add_table("Median ms per layer",
                     ["layer", "input", "kernel/stride", "native fwd+bwd", "exact fwd+bwd",
                      "im2col + to(f64)", "strided copy", "exact / native"], rows)
    report.results = results
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
