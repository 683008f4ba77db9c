"""The authors' checkpoint format end to end: a file written the way their trainer saves it (from
a random HF CLIPModel and a random head with their key names), evaluated through `xpool eval`,
gives the metrics of an independent computation: HF's own forward and the authors' head written
out plainly in tests/hf_helpers.py.

CUDA tensors cannot be made on this machine, so the file holds CPU tensors; the loader's
`map_location="cpu"` is what makes CUDA-saved files load, and torch 1.8 wrote the same zip format.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hf_helpers import (
    SMOKE,
    authors_head_forward,
    features,
    hf_tokenizer,
    msrvtt_test_captions,
    random_authors_head,
    random_clip,
    ranks_of,
    write_authors_checkpoint,
)

from xpool.cli import main
from xpool.config import load_config
from xpool.data.transforms import VideoTransform
from xpool.data.video import sample_frames
from xpool.errors import XPoolError
from xpool.model.checkpoints import (
    is_authors_file,
    load_authors_checkpoint,
    read_authors_checkpoint,
)

NUM_FRAMES = 4  # the smoke profile's


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fixture_videos, fixtures_dir):
    """A 6-video MSR-VTT-layout corpus: the three real .mp4 fixtures plus three random-noise
    videos, each with one real 1k-A caption."""
    from conftest import write_video

    root = tmp_path_factory.mktemp("msrvtt")
    (root / "videos").mkdir()
    mp4s = [p for n, p in sorted(fixture_videos.items()) if n.endswith(".mp4")]
    for i, src in enumerate(mp4s):
        (root / "videos" / f"video{9000 + i}.mp4").symlink_to(src)
    rng = np.random.default_rng(0)
    for i in range(len(mp4s), 6):
        write_video(root / "videos" / f"video{9000 + i}.mp4",
                    frames=rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8))
    captions = msrvtt_test_captions(fixtures_dir)[:6]
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, c in enumerate(captions):
            w.writerow([f"ret{i}", f"msr{9000 + i}", f"video{9000 + i}", c])
    return root, captions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = random_clip(SMOKE, seed=5)
    head = random_authors_head(64, seed=6)
    path = tmp_path_factory.mktemp("ckpt") / "msrvtt9k" / "model_best.pth"
    path.parent.mkdir()
    return write_authors_checkpoint(path, hf, head), hf, head


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = tmp_path_factory.mktemp("profile") / "authors-smoke.yaml"
    p.write_text("extends: smoke\ndata:\n  corpus: msrvtt\nmodel:\n  pretrained: null\n")
    return p


def independent_sims(corpus, hf, head, tmp_path, profile) -> torch.Tensor:
    root, captions = corpus
    data = load_config(profile).data  # the frame rule and resize the evaluation must use
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    transform = VideoTransform(32, mean, std, train=False, antialias=data.antialias)
    clips = torch.stack([transform(sample_frames(root / "videos" / f"video{9000 + i}.mp4",
                                                 NUM_FRAMES, rule=data.sampling_rule)[0])
                         for i in range(6)])
    tok = hf_tokenizer(tmp_path / "bpe")(captions, padding=True, truncation=True, max_length=32,
                                         return_tensors="pt")
    with torch.no_grad():
        video = features(hf.get_image_features(pixel_values=clips.flatten(0, 1))).view(6, NUM_FRAMES, -1)
        text = features(hf.get_text_features(**tok))
        pooled = authors_head_forward(head, text, video)  # [V, T, D]
    t = text / text.norm(dim=-1, keepdim=True)
    p = pooled / pooled.norm(dim=-1, keepdim=True)
    return torch.einsum("td,vtd->tv", t, p)


def metrics_of(ranks: torch.Tensor) -> dict[str, float]:
    r = ranks.numpy().astype(float)
    return {"R1": 100 * (r <= 1).mean(), "R5": 100 * (r <= 5).mean(),
            "R10": 100 * (r <= 10).mean(), "MdR": float(np.median(r)), "MnR": r.mean()}


def test_cli_eval_of_authors_checkpoint_matches_independent_computation(
        tmp_path, corpus, checkpoint, profile, capsys):
    path, hf, head = checkpoint
    root, _ = corpus
    results = tmp_path / "results"
    # Options before overrides: this order failed with "unrecognized arguments" before.
    rc = main(["eval", str(profile), "--checkpoint", str(path), f"data.root={root}",
               f"output.results_dir={results}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    record = results / profile.stem / "authors" / "msrvtt9k-model_best"
    metrics = json.loads((record / "metrics.json").read_text())
    assert (record / "config.yaml").is_file() and (record / "environment.json").is_file()
    assert metrics["checkpoint_epoch"] == 3 and metrics["num_videos"] == 6

    sims = independent_sims(corpus, hf, head, tmp_path, profile)
    t2v, v2t = ranks_of(sims), ranks_of(sims.T)
    assert metrics["ranks"]["t2v"] == t2v.tolist()
    assert metrics["ranks"]["v2t"] == v2t.tolist()
    for direction, ranks in (("t2v", t2v), ("v2t", v2t)):
        for k, v in metrics_of(ranks).items():
            assert metrics[direction][k] == pytest.approx(v), (direction, k)
    assert {"t2v_dsl", "v2t_dsl"} <= set(metrics)
    tables = list((results / profile.stem / "tables").glob("authors_*.md"))
    assert len(tables) == 1 and "DSL R1" in tables[0].read_text()
    assert "t2v" in out and "v2t" in out

    # The same similarity matrix through the package's own path, for the recorded error.
    from xpool.authors import authors_model
    from xpool.engine.evaluate import build_eval_embeddings, score  # noqa: F401  (cmd_eval's path)
    from xpool.similarity import similarity_matrix

    cfg = load_config(profile, [f"data.root={root}"])
    model = authors_model(cfg)
    load_authors_checkpoint(model, path)
    model.eval()
    emb = build_eval_embeddings(cfg, model, "test", torch.device("cpu"), progress=False)
    ours = similarity_matrix(model.pooling, emb.text_embeds, emb.frame_embeds)
    err = float((ours - sims).abs().max())
    print(f"authors' checkpoint: max abs similarity difference {err:.2e} (6x6, cosines)")
    assert err < 1e-4


def test_overrides_and_options_in_either_order(tmp_path, corpus, checkpoint, profile):
    path, _, _ = checkpoint
    root, _ = corpus
    results = tmp_path / "r"
    rc = main(["eval", str(profile), f"data.root={root}", "--checkpoint", str(path),
               f"output.results_dir={results}", "--split", "test"])
    assert rc == 0
    assert (results / profile.stem / "authors" / "msrvtt9k-model_best" / "metrics.json").is_file()
    with pytest.raises(SystemExit):
        main(["eval", str(profile), "--checkpoint", str(path), "--bogus"])


def test_wrong_shapes_and_keys_are_listed(tmp_path, checkpoint, profile, corpus):
    path, hf, head = checkpoint
    root, _ = corpus
    cfg = load_config(profile, [f"data.root={root}"])
    from xpool.authors import authors_model

    bad_head = dict(head)
    bad_head["pool_frames.linear_proj.weight"] = torch.zeros(32, 64)
    bad_head["pool_frames.extra.weight"] = torch.zeros(2)
    del bad_head["pool_frames.layer_norm3.bias"]
    bad = write_authors_checkpoint(tmp_path / "bad.pth", hf, bad_head)
    with pytest.raises(XPoolError) as err:
        load_authors_checkpoint(authors_model(cfg), bad)
    msg = str(err.value)
    assert "missing: pooling.layer_norm3.bias" in msg
    assert "unexpected: pooling.extra.weight" in msg
    assert "mis-shaped: pooling.linear_proj.weight (file (32, 64), model (64, 64))" in msg
    # The number of heads changes no shape, so no file can tell it: the profile says it (the
    # authors' released models use 1, as the paper profiles do).
    load_authors_checkpoint(authors_model(load_config(profile, ["model.num_heads=2"])), path)


def test_reader_rejects_other_files(tmp_path, checkpoint):
    path, _, _ = checkpoint
    assert is_authors_file(path)
    ckpt = read_authors_checkpoint(path)
    assert ckpt.epoch == 3 and "q_proj.weight" in ckpt.head_state
    other = tmp_path / "plain.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}}, other)
    assert not is_authors_file(other)
    with pytest.raises(XPoolError, match="not an authors' X-Pool checkpoint"):
        read_authors_checkpoint(other)
    with pytest.raises(XPoolError, match="README links one model_best.pth"):
        read_authors_checkpoint(tmp_path / "absent.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "state_dict": {}, "optimizer": object()}, evil)
    with pytest.raises(XPoolError, match="weights_only=True"):
        read_authors_checkpoint(evil)


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    from xpool import reproduce as rp

    return rp.KERNEL in KernelSpecManager().find_kernel_specs()


@pytest.mark.slow
@pytest.mark.skipif(not _kernel_available(), reason="the 'xpool' Jupyter kernel is not registered")
def test_authors_notebook_under_smoke_and_without_files(tmp_path):
    from pathlib import Path

    from xpool import reproduce as rp

    nb_dir = Path(__file__).resolve().parents[1] / "notebooks"
    lines: list[str] = []
    rc = rp.reproduce("smoke", results_dir=tmp_path, notebooks_dir=nb_dir,
                      only=["09_authors_checkpoints"], log=lines.append)
    assert rc == 0, "\n".join(lines)
    md = (tmp_path / "smoke" / "tables" / "authors_random-model_best.md").read_text()
    assert "| X-Pool | t2v |" in md and "| X-Pool | v2t |" in md and "DSL R1" in md
    nb = (tmp_path / "smoke" / "notebooks" / "09_authors_checkpoints.ipynb").read_text()
    assert "SMOKE TEST: a random xpool-smoke model converted" in nb


def test_authors_study_names_missing_files(tmp_path):
    from xpool.authors import authors_study
    from xpool.study import StudyStop

    with pytest.raises(StudyStop) as err:
        authors_study("paper-msrvtt9k", {"msrvtt9k": str(tmp_path / "model_best.pth"),
                                         "lsmdc": None}, {}, output_dir=tmp_path / "p")
    msg = str(err.value)
    assert str(tmp_path / "model_best.pth") in msg and "lsmdc: (no path given)" in msg
    assert "layer6ai-labs/xpool" in msg
