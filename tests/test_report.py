"""The static report (xpool/report.py) and the reader-facing table helpers: pages, offline
assets, the reproduction check and environment on the overview, widgets replaced; p-values at
their resolution; the explorer's vocabulary check; the frozen-mode ± 0.0 note."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest

from xpool import reporting
from xpool import study as xs
from xpool.errors import XPoolError
from xpool.report import WIDGET_NOTE, build_report

# A 1x1 PNG, as notebooks embed figures.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c"
    "63f8cfc0f01f0005000201e22b5f6a0000000049454e44ae426082")).decode()


def _profile(tmp_path: Path) -> Path:
    out = tmp_path / "results" / "demo"
    (out / "notebooks").mkdir(parents=True)
    (out / "tables").mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Demo notebook"),
        nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("w", outputs=[nbformat.v4.new_output(
            "execute_result", data={"application/vnd.jupyter.widget-view+json":
                                    {"model_id": "abc", "version_major": 2, "version_minor": 0},
                                    "text/plain": "VBox()"}, execution_count=1)]),
    ])
    nbformat.write(nb, out / "notebooks" / "05_pooling_ablation.ipynb")
    (out / "tables" / "pooling_ablation.md").write_text(
        "### Pooling ablation\n\n| pooling | R1 |\n|---|---|\n| X-Pool | 75.7 ± 1.2 |\n")
    (out / "tables" / "other.md").write_text("### Other\n\n| a |\n|---|\n| 1 |\n")
    for i, threads in enumerate((1, 1, 2)):
        run = out / "runs" / f"r{i}"
        run.mkdir(parents=True)
        (run / "environment.json").write_text(json.dumps({"torch": "2.14.1", "threads": threads}))
    return out


def test_report_pages_offline_check_and_environment(tmp_path):
    out = _profile(tmp_path)
    lines: list[str] = []
    index = build_report(out, log=lines.append)
    site = out / "report"
    assert index == site / "index.html"
    assert sorted(p.name for p in site.iterdir()) == [
        "05_pooling_ablation.html", "index.html", "tables.html"]
    html = index.read_text()
    assert "has not been run" in html and "reproduction_check.md" in html
    # Environment: one value for torch; threads with its count of runs.
    assert "2.14.1" in html and "(2 runs)" in html and "(1 runs)" in html
    assert "75.7 ± 1.2" in html  # the main table
    nb_page = (site / "05_pooling_ablation.html").read_text()
    assert f"data:image/png;base64,{PNG}" in nb_page  # figure inline
    assert "widget-view" not in nb_page and "make lab" in nb_page
    assert WIDGET_NOTE.split("`")[0] in nb_page
    for page in site.iterdir():
        text = page.read_text()
        assert not re.search(r"<script|<link|(src|href)=\"https?:", text), page.name
        for href in re.findall(r'href="([^"#]+)"', text):  # navigation stays inside the site
            assert (site / href).is_file(), (page.name, href)
    assert "Other" in (site / "tables.html").read_text()
    # Same records, same bytes (nothing depends on when it was built).
    before = {p.name: p.read_bytes() for p in site.iterdir()}
    (out / "reproduction_check.md").write_text("# Reproduction check\n\nall equal\n")
    build_report(out, log=lines.append)
    after = {p.name: p.read_bytes() for p in site.iterdir()}
    assert after["tables.html"] == before["tables.html"]
    assert "all equal" in after["index.html"].decode() and "has not been run" not in \
        after["index.html"].decode()


def test_report_of_nothing_names_the_folder(tmp_path):
    with pytest.raises(XPoolError, match=str(tmp_path / "empty")):
        build_report(tmp_path / "empty")


def test_p_values_are_shown_at_their_resolution():
    assert reporting.format_p(0.0, 10_000) == "< 0.0002"
    assert reporting.format_p(0.0002, 10_000) == "0.0002"
    assert reporting.format_p(0.0312, 200) == "0.031"
    boot = pd.DataFrame([{"pooling": "self_attention", "direction": "t2v", "diff_R1": -40.83,
                          "lo": -48.33, "hi": -33.17, "p": 0.0, "n_queries": 200,
                          "seeds": "0 1 2"}])
    md = reporting.bootstrap_markdown(boot, 10_000)
    assert "| self-attention | t2v | -40.8 | [-48.3, -33.2] | < 0.0002 | 200 | 0 1 2 |" in md
    assert "self_attention" not in md


def test_frozen_note_names_the_parameter_free_heads_only_in_frozen_mode():
    note = xs.frozen_spread_note("frozen", ["xpool", "attention", "mean"])
    assert len(note) == 1 and "mean, param-free attention pooling have" in note[0]
    assert "± 0.0" in note[0]
    assert xs.frozen_spread_note("finetune", ["mean"]) == []
    assert xs.frozen_spread_note("frozen", ["xpool", "self_attention"]) == []


def _explorer(corpus: str = "synthetic") -> xs.Explorer:
    ex = xs.Explorer.__new__(xs.Explorer)
    ex.out = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(corpus=corpus)),
                             emb=SimpleNamespace(texts=["a small red circle moving up on dots"]))
    ex._model = None
    return ex


def test_explorer_names_the_vocabulary_for_unknown_words():
    ex = _explorer()
    assert ex.unknown_words("a small red circle moving up on dots then a large blue cross") == []
    assert ex.unknown_words("A dog playing in the park") == ["dog", "playing", "in", "the",
                                                             "park"]
    note = ex.vocabulary_note("a red dog")
    assert "'dog'" in note and "'red'" not in note
    for kind in ("shape", "colour", "size", "motion", "background"):
        assert f"{kind}: " in note
    assert "plain grey" in note and "magenta" in note
    # Nothing known: an error instead of a meaningless top-5 (raised before any encoding).
    with pytest.raises(XPoolError, match="no word of this query is known.*vocabulary"):
        ex.show("a dog playing in the park")
    with pytest.raises(XPoolError, match="empty query"):
        ex.show("   ")
    # Real corpora have an open vocabulary: nothing to warn about.
    assert _explorer("msrvtt").unknown_words("a dog playing in the park") == []
