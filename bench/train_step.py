"""Training step time per pooling head, and the head's share of the step.

One step as `xpool train` does it: encode captions and frames with CLIP, pool, cosine
similarities, symmetric InfoNCE, backward, gradient-norm clip 1.0, AdamW (the recipe's two
learning rates and weight decay). Inputs are random tensors of the right shapes (no data loading:
see ``bench/dataloader.py``), so only compute is timed.

Two sides are timed for every pooling strategy, all poolings interleaved round by round (the
models share one backbone):

* ``step``: the whole step above.
* ``head``: the pooling head alone on the step's embeddings (forward, similarities, loss,
  backward down to the embeddings, AdamW on the head's parameters). ``head / step`` is the head's
  share of a training step.

Models: ``tiny`` (``xpool-tiny`` at its 64 px with the embedded profile's 8 frames and batch 32)
and ``vitb32`` (ViT-B/32 at 224 px with the paper's 12 frames; random weights, no download; batch
4 on a CPU, 32 on a GPU); ``--quick`` runs ``smoke`` (``xpool-smoke``, the smoke profile's sizes)
only. With CUDA the step runs in bf16 autocast like training does.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from bench.common import (
    BenchReport,
    apply_threads,
    bench_parser,
    round_ratios,
    time_interleaved,
)
from xpool.config import POOLINGS

# model key -> (profile whose recipe and sizes it uses, label)
MODELS = {"smoke": ("smoke", "xpool-smoke"), "tiny": ("embedded", "xpool-tiny"),
          "vitb32": ("paper-msrvtt9k", "ViT-B/32")}
# Timed rounds per model (each also gets one warm-up step): a ViT-B/32 step at batch 4 is a
# TFLOP of work, tens of seconds on 2 CPU cores.
CPU_ROUNDS = {"smoke": 3, "tiny": 3, "vitb32": 2}
GPU_ROUNDS = 10


def _sync(device: Any) -> Any:
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else None


class StepBench:
    """A backbone with each pooling head in turn, its optimizer and fixed random inputs."""

    def __init__(self, model_key: str, device: Any, batch_size: int | None, frames: int | None,
                 precision: str) -> None:
        import torch

        from xpool.config import load_config
        from xpool.model.backbone import build_backbone

        self.key = model_key
        profile, self.label = MODELS[model_key]
        self.cfg = load_config(profile)
        self.device = device
        self.batch_size = batch_size or (4 if model_key == "vitb32" and device.type == "cpu"
                                         else self.cfg.train.batch_size)
        self.frames = frames or self.cfg.data.num_frames
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        torch.manual_seed(0)
        self.backbone = build_backbone(self.cfg.model.backbone, pretrained=None).to(device)
        size = self.backbone.image_size
        self.pixels = torch.randn(self.batch_size, self.frames, 3, size, size, device=device)
        texts = [f"caption number {i} of a video in the benchmark" for i in range(self.batch_size)]
        self.tokens = self.backbone.tokenize(texts).to(device)
        self.backbone_opt: Any = None

    def params(self) -> dict[str, Any]:
        bb = self.backbone
        return {"model": self.label, "backbone": self.cfg.model.backbone, "recipe_profile": self.cfg.profile,
                "batch_size": self.batch_size, "frames": self.frames, "image_size": bb.image_size,
                "embed_dim": bb.embed_dim, "bf16_autocast": self.bf16,
                "backbone_params_m": round(sum(p.numel() for p in bb.parameters()) / 1e6, 2)}

    def model_for(self, pooling: str) -> tuple[Any, Any]:
        """(model, optimizer of the head's parameters or None) for ``pooling``.

        All models share the backbone, and one AdamW (``self.backbone_opt``) updates it: two
        optimizers over the recipe's two parameter groups cost what one over both does.
        """
        import torch

        from xpool.model.build import pooling_options
        from xpool.model.pooling import build_pooling
        from xpool.model.retrieval import RetrievalModel

        self.cfg.model.pooling = pooling
        head = build_pooling(pooling, self.backbone.embed_dim, **pooling_options(self.cfg)).to(self.device)
        model = RetrievalModel(self.backbone, head).train()
        tc = self.cfg.train
        # As xpool.engine.train: every parameter decayed, CLIP's at lr_clip, the head's at lr_new.
        groups = model.param_groups(tc.lr_clip, tc.lr_new, tc.weight_decay, exclude_1d_from_decay=False)
        clip = [g for g in groups if g["name"].startswith("clip")]
        new = [g for g in groups if not g["name"].startswith("clip")]
        if self.backbone_opt is None:
            self.backbone_opt = torch.optim.AdamW(clip, eps=tc.adam_eps)
        head_opt = torch.optim.AdamW(new, eps=tc.adam_eps) if new else None
        return model, head_opt

    def _autocast(self) -> Any:
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, model: Any, head_opt: Any) -> float:
        """One full training step (as xpool.engine.train does it); returns the loss."""
        import torch

        from xpool.losses import symmetric_infonce

        for opt in (self.backbone_opt, head_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        with self._autocast():
            text = model.encode_text(self.tokens)
            frames = model.encode_frames(self.pixels)
            sims = model.pairwise_similarity(text.float(), frames.float())
            loss = symmetric_infonce(sims, model.logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
        self.backbone_opt.step()
        if head_opt is not None:
            head_opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        return float(loss.detach())

    def embeddings(self, model: Any) -> tuple[Any, Any]:
        import torch

        with torch.no_grad(), self._autocast():
            return model.encode_text(self.tokens).float(), model.encode_frames(self.pixels).float()

    def head_step(self, model: Any, head_opt: Any, text: Any, frames: Any) -> None:
        """The head's part of a step on fixed embeddings (gradients flow back to them too)."""
        from xpool.losses import symmetric_infonce

        text = text.detach().requires_grad_(True)
        frames = frames.detach().requires_grad_(True)
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        with self._autocast():
            sims = model.pairwise_similarity(text, frames)
            loss = symmetric_infonce(sims, model.logit_scale.detach())
        loss.backward()
        if head_opt is not None:
            head_opt.step()


def run_model(report: BenchReport, bench: StepBench, poolings: list[str], repeats: int) -> None:
    """Time step and head of every pooling, all interleaved; add the table and headline.

    Every round runs each pooling's step and head once, so all poolings see the same machine
    state; the head's share and the difference to mean pooling are medians of per-round values.
    """
    import statistics

    import torch

    models = {p: bench.model_for(p) for p in poolings}
    sides: dict[str, Any] = {}
    for p, (model, head_opt) in models.items():
        text, frames = bench.embeddings(model)
        sides[f"{p} step"] = lambda m=model, h=head_opt: bench.step(m, h)
        sides[f"{p} head"] = lambda m=model, h=head_opt, t=text, f=frames: bench.head_step(m, h, t, f)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    print(f"  {bench.label}: {len(poolings)} poolings x (step, head), 1 warm-up + {repeats} rounds",
          flush=True)
    timings = time_interleaved(sides, repeats=repeats, warmup=1, sync=_sync(bench.device))
    rows, results = [], {}
    for p, (model, _) in models.items():
        step, head = timings[f"{p} step"], timings[f"{p} head"]
        share = statistics.median(round_ratios(timings, f"{p} step", f"{p} head"))
        extra = None
        if "mean" in models:
            extra = statistics.median(s - m for s, m in zip(step.seconds, timings["mean step"].seconds,
                                                            strict=True))
        head_params = sum(q.numel() for q in model.pooling.parameters())
        rows.append([p, step.median * 1e3, head.median * 1e3, 100 * share,
                     None if extra is None else extra * 1e3, bench.batch_size / step.median, head_params])
        results[p] = {"step": step.to_dict(), "head": head.to_dict(), "head_share": share,
                      "step_minus_mean_s": extra, "clips_per_s": bench.batch_size / step.median,
                      "head_params": head_params}
    p = bench.params()
    report.results[bench.key] = {**p, "repeats": repeats, "poolings": results}
    if bench.device.type == "cuda":
        report.results[bench.key]["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(bench.device) / 2**30
    report.add_table(
        f"{bench.label}: batch {p['batch_size']}, {p['frames']} frames, {p['image_size']} px, "
        f"{'bf16' if p['bf16_autocast'] else 'fp32'} on {bench.device.type}, {torch.get_num_threads()} "
        f"threads (median of {repeats} rounds)",
        ["pooling", "step ms", "head ms", "head % of step", "step - mean-pooling step, ms", "clips/s",
         "head params"], rows)
    if "xpool" in results:
        x = results["xpool"]
        vs_mean = ""
        if "mean" in results:
            vs_mean = (f"; vs mean pooling {results['mean']['step']['median_s'] * 1e3:.0f} ms per step, "
                       f"median per-round difference {x['step_minus_mean_s'] * 1e3:+.0f} ms")
        report.add_headline(f"X-Pool head share of a {bench.label} training step", 100 * x["head_share"], "%",
                            detail=f"step {x['step']['median_s'] * 1e3:.0f} ms{vs_mean}; batch "
                                   f"{p['batch_size']}, {p['frames']} frames, {bench.device.type}")


def main(argv: list[str] | None = None) -> int:
    """Run the training-step benchmark; writes results/bench[/quick]/train_step.json."""
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="ViT-B/32 batch (default 4 on CPU, 32 on GPU); tiny uses 32")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: profile's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                        help="default: tiny and vitb32 (quick: smoke)")
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS), choices=list(POOLINGS))
    args = parser.parse_args(argv)
    import torch

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    threads = apply_threads(args)
    models = args.models or (["smoke"] if args.quick else ["tiny", "vitb32"])
    report = BenchReport.from_args("train_step", "Training step: forward + backward + AdamW, per pooling head",
                                   args, argv, device=str(device), models=models, poolings=args.poolings,
                                   torch_threads=threads,
                                   inputs="random tensors (no data loading)")
    for key in models:
        bench = StepBench(key, device, args.batch_size if key == "vitb32" else None,
                          args.frames if key == "vitb32" else None, args.precision)
        print(f"{bench.label}: {bench.params()}", flush=True)
        repeats = args.repeats or (GPU_ROUNDS if device.type == "cuda" else CPU_ROUNDS[key])
        run_model(report, bench, args.poolings, repeats)
        del bench
    if device.type == "cpu" and "vitb32" in models:
        report.note("CPU run: ViT-B/32 at batch 4 (the paper trains with 32 on a GPU); run "
                    "`python -m bench.train_step --device cuda` on a GPU for batch 32 in bf16")
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
