"""The study's figures from saved runs and tables (no training): X-Pool's attention over a
query's video, the top-5 retrieved videos, training curves, the pooling ablation and R@1 against
K (notebook 07, `make figures`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from xpool import reporting
from xpool.errors import XPoolError
from xpool.paths import resolve
from xpool.study.collect import RunOutputs, load_outputs, results_from_table, training_curves
from xpool.study.qualitative import attention_mass, named_frames, pick_query, video_frames


def attention_figure(out: RunOutputs, query: int) -> Any:
    """The paper's attention figure for test caption `query`: its video's frames and X-Pool's
    weight on each (frames of the scenes the caption names outlined)."""
    v = int(out.emb.video_of_text[query])
    vid, text = out.emb.video_ids[v], out.emb.texts[query]
    weights = out.attention(out.emb.text_embeds[query], v)
    if weights is None:
        raise XPoolError(f"run {out.result.record.run_dir.name} is not an X-Pool run")
    return reporting.plot_attention(
        text, video_frames(out.config, vid), weights, highlight=named_frames(out.config, vid, text),
        title=f"X-Pool attention over the frames of {vid} for the query\n{text!r}")


def top5_figure(out: RunOutputs, query: int | None = None, text_embed: Any = None,
                text: str | None = None, k: int = 5) -> Any:
    """The top-k videos of a test caption (or of any text embedding) as frame strips."""
    gt = None
    if query is not None:
        text_embed, text = out.emb.text_embeds[query], out.emb.texts[query]
        gt = int(out.emb.video_of_text[query])
    hits = out.top_k(text_embed, k, gt)
    for h in hits:
        h["frames"] = video_frames(out.config, h["video_id"])
    pooling = reporting.POOLING_LABELS.get(out.config.model.pooling, out.config.model.pooling)
    note = "" if gt is None or any(h["is_gt"] for h in hits) else \
        f" (ground truth {out.emb.video_ids[gt]} not in the top {k})"
    return reporting.plot_top5(text or "", hits,
                               title=f"{pooling}: top-{k} videos for {text!r}{note}")


def render_figures(output_dir: str | Path, data_root: str | None = None,
                   seed: int | None = None, log: Any = print) -> dict[str, Path]:
    """Every figure of the study from saved runs and tables (no training): attention weights,
    top-5 retrieval and training curves from the pooling ablation's runs of one seed (default:
    the first), the ablation plot, and the sub-region plot when that study ran. Also writes
    `tables/attention_mass.*` for synthetic corpora. Returns name -> path."""
    out = resolve(output_dir)
    figs = out / "figures"
    paths: dict[str, Path] = {}
    abl = results_from_table(out, "pooling_ablation")
    if data_root is not None:
        for r in abl:
            r.config = dataclasses.replace(r.config, data=dataclasses.replace(r.config.data,
                                                                              root=data_root))
    seeds = sorted({r.config.train.seed for r in abl})
    s = seeds[0] if seed is None else int(seed)
    xr = [r for r in abl if r.config.model.pooling == "xpool" and r.config.train.seed == s]
    if not xr:
        raise XPoolError(f"no X-Pool run with seed {s} in the pooling ablation (seeds {seeds})")
    o = load_outputs(xr[0])
    q = pick_query(o)
    log(f"qualitative figures: run {xr[0].record.run_dir.name}, test query {q}: "
        f"{o.emb.texts[q]!r}")
    paths["attention_weights"] = reporting.save_figure(attention_figure(o, q),
                                                       figs / "attention_weights.png")
    paths["top5_retrieval"] = reporting.save_figure(top5_figure(o, q), figs / "top5_retrieval.png")
    mass = attention_mass(o)
    if not mass.empty:
        summary = pd.DataFrame([{
            "run_id": xr[0].record.run_dir.name, "queries": len(mass),
            "mean_attention_on_named_frames": mass["attention_mass"].mean(),
            "mean_share_of_named_frames": mass["uniform_share"].mean(),
            "argmax_frame_named": mass["argmax_on_named"].mean(),
        }])
        reporting.write_table(summary, out / "tables", "attention_mass", reporting.frame_markdown(
            summary, "X-Pool attention on the frames of the scenes a caption names",
            ["mean_share_of_named_frames is what uniform (mean) pooling would put there; "
             "argmax_frame_named: share of test captions whose most-attended frame shows a "
             "scene the caption names."], digits=3))
    curves, evals = training_curves([r for r in abl if r.config.train.seed == s])
    paths["training_curves"] = reporting.save_figure(
        reporting.plot_training_curves(curves, evals, f"training, seed {s}"),
        figs / "training_curves.png")
    runs = reporting.read_table(out / "tables", "pooling_ablation")
    boot = reporting.read_table(out / "tables", "pooling_bootstrap")
    paths["pooling_ablation"] = reporting.save_figure(
        reporting.plot_pooling_ablation(runs, boot[boot["direction"] == "t2v"],
                                        "pooling ablation (text-to-video)"),
        figs / "pooling_ablation.png")
    if (out / "tables" / "subregion_summary.csv").is_file():
        paths["subregion_r1_vs_k"] = reporting.save_figure(
            reporting.plot_subregion(reporting.read_table(out / "tables", "subregion_summary"),
                                     reporting.read_table(out / "tables", "subregion_study"),
                                     "text-to-video R@1 against K, scenes per video"),
            figs / "subregion_r1_vs_k.png")
    else:
        log("no sub-region study in this profile (it needs the synthetic benchmark): skipped")
    # matplotlib only here, at the end: reporting imports it lazily, and so does this.
    import matplotlib.pyplot as plt

    plt.close("all")
    return paths
