"""`python -m xpool.engine.pretrain_check PROFILE [key=value ...]`: the synthetic benchmark's
sanity check. Generates the corpus, pretrains the tiny CLIP (or reuses its cache), and prints the
held-out single-scene retrieval of pretraining and frozen mean pooling on the video test split.

A command of its own, above `pretrain` and `evaluate`: the check evaluates with
`xpool.engine.evaluate.score`, and evaluation builds models on pretrained weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from xpool.config import Config, load_config
from xpool.data.synthetic import ensure_corpus
from xpool.engine.evaluate import evaluate_frozen_mean_pool
from xpool.engine.pretrain import ensure_pretrained, load_metrics

__all__ = ["main", "pretrain_and_check"]


def pretrain_and_check(config: Config, frames: int = 8,
                       progress: bool = True) -> tuple[Path, float, dict[str, Any], dict[str, float]]:
    """(corpus root, its seconds in this call, pretraining metrics, frozen mean pooling's
    text-to-video metrics over `frames` frames): the corpus and the tiny CLIP made or reused."""
    start = time.perf_counter()
    root = ensure_corpus(config, progress=progress)
    gen_seconds = time.perf_counter() - start
    ckpt = ensure_pretrained(config, progress=progress)
    frozen = evaluate_frozen_mean_pool(config, ckpt, num_frames=frames)
    return root, gen_seconds, load_metrics(config), frozen


def main(argv: list[str] | None = None) -> int:
    """Generate the corpus, pretrain (or reuse the cache), and print the held-out and frozen
    mean-pooling retrieval numbers."""
    parser = argparse.ArgumentParser(prog="python -m xpool.engine.pretrain_check",
                                     description=main.__doc__)
    parser.add_argument("profile")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (synth.scenes=4)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video for the check")
    args = parser.parse_args(argv)
    config = load_config(args.profile, args.overrides)
    root, gen_seconds, pre, frozen = pretrain_and_check(config, args.frames)
    print(f"corpus {root} (K={config.synth.scenes}, this call {gen_seconds:.1f}s)")
    print(
        f"pretraining ({pre['train_seconds']:.0f}s when trained): held-out R@1 image->text "
        f"{pre['i2t_R1']:.1f}%, text->image {pre['t2i_R1']:.1f}% over {pre['eval_images']} "
        f"scenes (chance {pre['chance_R1']:.2f}%)"
    )
    print(
        f"frozen mean pooling, {args.frames} frames, text-to-video on the test split: "
        + ", ".join(f"{k} {frozen[k]:.1f}" for k in ("R1", "R5", "R10", "MdR", "MnR"))
        + f" (chance R1 {frozen['chance_R1']:.2f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
