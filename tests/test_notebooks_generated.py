"""The committed notebooks are exactly what notebooks/generate_notebooks.py writes.

The generator is copied into a temporary folder and run there as a script, so it writes next to
itself without touching the repository, whatever notebooks it knows about. Cell ids are the one
field left out of the comparison: nbformat draws them at random on every run.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def _without_cell_ids(nb: dict[str, Any]) -> dict[str, Any]:
    return {**nb, "cells": [{k: v for k, v in cell.items() if k != "id"} for cell in nb["cells"]]}


def _load(path: Path) -> dict[str, Any]:
    return _without_cell_ids(json.loads(path.read_text(encoding="utf-8")))


def _first_difference(committed: dict[str, Any], generated: dict[str, Any]) -> str:
    """A readable account of where two notebooks part: cell count, a cell's diff, or metadata."""
    if committed.get("metadata") != generated.get("metadata"):
        return f"metadata differs: {committed.get('metadata')} != {generated.get('metadata')}"
    cells_c, cells_g = committed["cells"], generated["cells"]
    for i, (a, b) in enumerate(zip(cells_c, cells_g, strict=False)):
        if a != b:
            diff = difflib.unified_diff(
                "".join(a.get("source", "")).splitlines(),
                "".join(b.get("source", "")).splitlines(),
                "committed", "generated", lineterm="",
            )
            return f"cell {i} differs ({a.get('cell_type')}):\n" + "\n".join(diff)
    if len(cells_c) != len(cells_g):
        return f"{len(cells_c)} committed cells, {len(cells_g)} generated"
    return "top-level fields differ"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "notebooks"
    out.mkdir()
    shutil.copy(NB_DIR / "generate_notebooks.py", out / "generate_notebooks.py")
    res = subprocess.run(
        [sys.executable, str(out / "generate_notebooks.py")],
        cwd=out, capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    return out


def test_generator_and_repository_hold_the_same_notebooks(generated):
    written = sorted(p.name for p in generated.glob("*.ipynb"))
    committed = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    assert written, "the generator wrote no notebook"
    assert written == committed, (
        f"only generated: {sorted(set(written) - set(committed))}; "
        f"only committed: {sorted(set(committed) - set(written))}. "
        "Run `python notebooks/generate_notebooks.py` and commit the result."
    )


def test_each_committed_notebook_equals_the_generated_one(generated):
    for path in sorted(generated.glob("*.ipynb")):
        committed_path = NB_DIR / path.name
        if not committed_path.exists():
            continue  # reported by the test above
        committed, fresh = _load(committed_path), _load(path)
        assert committed == fresh, (
            f"notebooks/{path.name} is not what the generator writes: "
            f"{_first_difference(committed, fresh)}\n"
            "Edit notebooks/generate_notebooks.py, rerun it and commit both."
        )


def test_comparison_sees_a_changed_cell(generated, tmp_path):
    # The equality above must be able to fail: one changed character in one cell is caught.
    path = sorted(generated.glob("*.ipynb"))[0]
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][-1]["source"] = "".join(nb["cells"][-1]["source"]) + " "
    edited = tmp_path / path.name
    edited.write_text(json.dumps(nb), encoding="utf-8")
    assert _load(edited) != _load(path)
    assert "cell" in _first_difference(_load(path), _load(edited))
