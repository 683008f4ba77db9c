"""Would a cheaper tiny-CLIP pretraining buy the 5-minute `make reproduce`? Variants against the
embedded profile's own settings.

Pretraining is the one serial step of the embedded study (about 150 s on the 2-core Intel Xeon
and 260 s on the AMD EPYC in exact mode), so a shorter one is the first place to look for time.
Each variant pretrains from scratch into a temporary cache (nothing under ``cache/`` is
touched; its corpus is generated, or reused, under ``data/`` as the study's are), and the record
gives its pretraining seconds, its held-out single-scene R@1 both ways and frozen mean pooling's
text-to-video R@1 on the K=3 test split: what ``python -m xpool.engine.pretrain_check`` prints,
by the same function. The half-resolution variant uses a copy of
``xpool-tiny`` with a 32-px image tower, registered from a temporary folder for this process
only, on a corpus rendered at 32 px.

``--gemm native`` (the default) is for quality: it is several times faster and its numbers are
the same kind as exact mode's. ``--gemm exact`` times what `make reproduce` would pay.
``--quick`` exercises two variants for 4 steps on throwaway 16-video corpora (a check that the
script works, not a measurement).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import BenchReport, bench_parser, fmt

# Overrides of the embedded profile. The short warmup keeps the shortened schedules' warmup at
# the profile's 10% of the steps.
VARIANTS: dict[str, dict[str, Any]] = {
    "profile": {},
    "steps100": {"pretrain.steps": 100, "pretrain.warmup_steps": 10},
    "steps150": {"pretrain.steps": 150, "pretrain.warmup_steps": 10},
    "batch32": {"pretrain.batch_size": 32},
    "batch32x400": {"pretrain.batch_size": 32, "pretrain.steps": 400},
    "px32": {"synth.resolution": 32, "model.backbone": "xpool-tiny-32px"},
}
QUICK_VARIANTS = ("profile", "px32")
QUICK_OVERRIDES = {"pretrain.steps": 4, "pretrain.warmup_steps": 1, "pretrain.eval_images": 50,
                   "synth.num_train": 16, "synth.num_test": 16}


def register_half_resolution(folder: Path) -> None:
    """Register ``xpool-tiny-32px`` (``xpool-tiny`` with a 32-px image tower) with open_clip."""
    import open_clip

    from xpool.model.backbone import CONFIG_DIR

    cfg = json.loads((CONFIG_DIR / "xpool-tiny.json").read_text())
    cfg["vision_cfg"]["image_size"] = 32
    (folder / "xpool-tiny-32px.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def run_variant(overrides: dict[str, Any], cache_dir: Path) -> dict[str, float]:
    """Pretrain one variant into `cache_dir`; its seconds, held-out R@1 and frozen mean pooling."""
    from xpool.config import load_config
    from xpool.engine.pretrain_check import pretrain_and_check

    config = load_config("embedded", {**overrides, "pretrain.cache_dir": str(cache_dir)})
    _, _, pre, frozen = pretrain_and_check(config, config.data.num_frames, progress=False)
    return {"pretrain_s": pre["train_seconds"], "i2t_R1": pre["i2t_R1"], "t2i_R1": pre["t2i_R1"],
            "mean_pool_t2v_R1": frozen["R1"]}


def main(argv: list[str] | None = None) -> int:
    """Run the variants; writes ``<results dir>/pretrain_budget.json``."""
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--gemm", choices=("native", "exact"), default="native",
                        help="matrix products of the pretraining (default native: quality)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    names = (args.variants.split(",") if args.variants
             else list(QUICK_VARIANTS if args.quick else VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected {', '.join(VARIANTS)}")
    extra = {"model.gemm": args.gemm, **(QUICK_OVERRIDES if args.quick else {})}
    report = BenchReport.from_args("pretrain_budget", __doc__.splitlines()[0], args, argv=argv,
                                   variants={n: VARIANTS[n] for n in names}, extra=extra)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="xpool-pretrain-budget-") as tmp:
        register_half_resolution(Path(tmp))
        for name in names:
            print(f"[pretrain_budget] {name} ({args.gemm} GEMM) ...", flush=True)
            over = {**VARIANTS[name], **extra}
            if args.quick:  # a throwaway corpus, not one under data/
                over["data.root"] = str(Path(tmp) / name / "corpus")
            r = run_variant(over, Path(tmp) / name / "cache")
            results[name] = r
            rows.append([name, fmt(r["pretrain_s"]), fmt(r["i2t_R1"]), fmt(r["t2i_R1"]),
                         fmt(r["mean_pool_t2v_R1"])])
    report.add_table(f"Tiny-CLIP pretraining variants ({args.gemm} GEMM)",
                     ["variant", "pretraining s", "held-out R@1 i2t", "held-out R@1 t2i",
                      "frozen mean pooling t2v R@1 (K=3)"], rows)
    for name in names:
        report.add_headline(f"{name}: held-out R@1 (mean of both ways)",
                            (results[name]["i2t_R1"] + results[name]["t2i_R1"]) / 2, "%")
    report.results = results
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
