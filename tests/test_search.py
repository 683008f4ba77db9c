"""`xpool index` / `xpool search` on a folder of real fixture videos plus a broken file, and on a
synthetic folder: broken files reported and skipped, decoding cached, resume after an
interruption, and search scores equal to the model's plain similarity path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_helpers import SMOKE, random_authors_head, random_clip, write_authors_checkpoint

from xpool import search as xs
from xpool.cli import main
from xpool.config import load_config
from xpool.errors import XPoolError
from xpool.model.pooling import XPool


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model_best.pth"
    return write_authors_checkpoint(path, random_clip(SMOKE, seed=7), random_authors_head(64, 8))


@pytest.fixture
def folder(tmp_path, fixture_videos):
    d = tmp_path / "my videos"
    (d / "sub").mkdir(parents=True)
    for name, src in fixture_videos.items():
        (d / ("sub" if name == "tree.avi" else ".") / name).symlink_to(src)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    (d / "notes.txt").write_text("not a video")
    return d


def test_index_and_search_through_the_cli(tmp_path, folder, checkpoint, capsys):
    idx = tmp_path / "idx"
    # Overrides after options, profile and checkpoint chosen as for eval.
    assert main(["index", str(folder), "smoke", "--checkpoint", str(checkpoint), "--out",
                 str(idx), "model.pretrained=none"]) == 0
    out = capsys.readouterr().out
    assert "4 embedded, 0 reused, 1 failed" in out
    assert "broken.mp4" in out
    assert len(list((idx / "frames").rglob("*.npy"))) == 4  # decoded once, cached

    assert main(["search", "a bunny in a meadow", "--top", "3", "--index", str(idx)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(lines) == 3 and "frame weights" in out
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)

    # Again: nothing re-decoded or re-embedded; the broken file is retried and still reported.
    assert main(["index", str(folder), "smoke", "model.pretrained=none", "--checkpoint",
                 str(checkpoint), "--out", str(idx)]) == 0
    assert "0 embedded, 4 reused, 1 failed" in capsys.readouterr().out


def test_search_equals_the_plain_similarity_and_attention(tmp_path, folder, checkpoint):
    cfg = load_config("smoke", ["model.pretrained=none"])
    report = xs.build_index(cfg, folder, tmp_path / "idx", checkpoint=checkpoint, progress=False,
                            log=lambda _: None)
    assert sorted(report.failed) == [str((folder / "broken.mp4").resolve())]
    index = xs.load_index(tmp_path / "idx")
    assert len(index.paths) == 4 and index.frame_embeds.shape == (4, 4, 64)
    hits = xs.search(index, "a man is riding a bike", top=4)

    model = xs._model_for(index.cfg, index.checkpoint).eval()
    with torch.no_grad():
        text = model.encode_text(model.backbone.tokenize(["a man is riding a bike"]))
        plain = model.pairwise_similarity(text, index.frame_embeds)[0]  # the head's forward
        _, attn = model.pooling(text, index.frame_embeds, return_attention=True)
    order = plain.argsort(descending=True)
    assert [h.path for h in hits] == [index.paths[i] for i in order]
    assert np.allclose([h.score for h in hits], plain[order].numpy(), atol=1e-5)
    for h, i in zip(hits, order, strict=True):
        assert np.allclose(h.weights, attn[i, 0].numpy(), atol=1e-4)
        assert sum(h.weights) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(model.pooling, XPool)

    mean_hits = xs.search(index, "a man is riding a bike", top=2, pooling="mean")
    assert len(mean_hits) == 2 and mean_hits[0].weights is None
    topk = xs.search(index, "a man is riding a bike", top=1, pooling="topk")
    assert sorted(set(topk[0].weights)) == [0.0, pytest.approx(1 / 3, abs=1e-4)]
    with pytest.raises(XPoolError, match="trained parameters"):
        xs.search(index, "a man", pooling="self_attention")
    with pytest.raises(XPoolError, match="empty"):
        xs.search(index, "  ")
    figs = xs.explore_index(tmp_path / "idx", "a man is riding a bike", top=3)
    assert len(figs) == 2


def test_synthetic_folder_resumes_after_an_interruption(tmp_path, checkpoint, make_video,
                                                        monkeypatch):
    rng = np.random.default_rng(1)
    d = tmp_path / "synthetic"
    for i in range(5):
        make_video(d / f"clip{i}.mp4", frames=rng.integers(0, 256, (6, 40, 56, 3), dtype=np.uint8))
    cfg = load_config("smoke", ["model.pretrained=none"])
    real_write = xs.atomic_write
    calls = {"n": 0}

    def flaky(path, write):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_write(path, write)

    monkeypatch.setattr(xs, "atomic_write", flaky)
    with pytest.raises(KeyboardInterrupt):
        xs.build_index(cfg, d, tmp_path / "idx", checkpoint=checkpoint, batch_size=2,
                       progress=False)
    monkeypatch.setattr(xs, "atomic_write", real_write)
    report = xs.build_index(cfg, d, tmp_path / "idx", checkpoint=checkpoint, batch_size=2,
                            progress=False)
    assert len(report.reused) == 2 and len(report.embedded) == 3 and not report.failed
    fresh = xs.build_index(cfg, d, tmp_path / "fresh", checkpoint=checkpoint, progress=False)
    assert len(fresh.embedded) == 5
    a, b = xs.load_index(tmp_path / "idx"), xs.load_index(tmp_path / "fresh")
    assert a.paths == b.paths and torch.allclose(a.frame_embeds, b.frame_embeds, atol=1e-5)

    with pytest.raises(XPoolError, match="another model"):
        xs.build_index(load_config("smoke", ["model.pretrained=none", "data.num_frames=2"]), d,
                       tmp_path / "idx", checkpoint=checkpoint, progress=False)
    with pytest.raises(XPoolError, match="random weights"):
        xs.build_index(cfg, d, tmp_path / "other", progress=False)
    with pytest.raises(XPoolError, match="no video index"):
        xs.load_index(tmp_path / "nothing")


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    from xpool import reproduce as rp

    return rp.KERNEL in KernelSpecManager().find_kernel_specs()


@pytest.mark.slow
@pytest.mark.skipif(not _kernel_available(), reason="the 'xpool' Jupyter kernel is not registered")
def test_explore_notebook_searches_an_index_under_smoke(tmp_path, folder, checkpoint):
    from pathlib import Path

    import nbformat

    from xpool import reproduce as rp

    cfg = load_config("smoke", ["model.pretrained=none"])
    xs.build_index(cfg, folder, tmp_path / "idx", checkpoint=checkpoint, progress=False,
                   log=lambda _: None)
    lines: list[str] = []
    nb_dir = Path(__file__).resolve().parents[1] / "notebooks"
    rc = rp.reproduce("smoke", results_dir=tmp_path / "results", notebooks_dir=nb_dir,
                      only=["08_explore"], log=lines.append,
                      parameters={"index": str(tmp_path / "idx"), "query": "a rabbit"})
    assert rc == 0, "\n".join(lines)
    nb = nbformat.read(tmp_path / "results" / "smoke" / "notebooks" / "08_explore.ipynb", 4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "4 indexed videos" in text and "'a rabbit'" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # top-5 strips and the best match's frame weights


def test_cli_help_of_the_new_verbs(capsys):
    for verb in ("index", "search"):
        with pytest.raises(SystemExit) as done:
            main([verb, "--help"])
        assert done.value.code == 0
        assert f"usage: xpool {verb}" in capsys.readouterr().out
