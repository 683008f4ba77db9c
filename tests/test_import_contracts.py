"""The import contracts in pyproject.toml have teeth: each breaks on a deliberate violation.

Each case copies the package, bench/ and pyproject.toml into a temporary folder, plants one
import that the contract forbids (inside a function, as most of the package's cross-module
imports are, which shows that import-linter counts function-local imports), and runs
``lint-imports`` on that one contract there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter is a dev dependency: make setup")

_LOCAL = "\n\ndef _planted_by_test():\n    import {target}  # noqa: F401\n"

# (contract id, file to change, text appended to it) -> the contract must break.
VIOLATIONS = {
    "metrics-imports-study": ("layers", "xpool/metrics.py", _LOCAL.format(target="xpool.study")),
    "losses-imports-sibling-metrics": (
        "layers", "xpool/losses.py", _LOCAL.format(target="xpool.metrics")
    ),
    "config-imports-data": ("layers", "xpool/config.py", _LOCAL.format(target="xpool.data.video")),
    "module-without-a-layer": ("layers", "xpool/stray.py", '"""Not in any layer."""\n'),
    "embed-imports-evaluate": (
        "engine-layers", "xpool/engine/embed.py", _LOCAL.format(target="xpool.engine.evaluate")
    ),
    "engine-module-without-a-layer": (
        "engine-layers", "xpool/engine/stray.py", '"""Not in any engine layer."""\n'
    ),
    "evaluate-imports-train": (
        "no-cycles", "xpool/engine/evaluate.py", _LOCAL.format(target="xpool.engine.train")
    ),
    "model-imports-similarity": (
        "layers", "xpool/model/retrieval.py", _LOCAL.format(target="xpool.similarity")
    ),
    "corpora-imports-train": (
        "lower-layers-stay-clean", "xpool/data/corpora.py",
        _LOCAL.format(target="xpool.engine.train")
    ),
    "similarity-imports-evaluate": (
        "lower-layers-stay-clean", "xpool/similarity/base.py",
        _LOCAL.format(target="xpool.engine.evaluate")
    ),
    "reporting-imports-model": (
        "reporting-is-pure", "xpool/reporting/tables.py", _LOCAL.format(target="xpool.model.pooling")
    ),
    "study-imports-protocol": (
        "layers", "xpool/study/runner.py", _LOCAL.format(target="xpool.protocol")
    ),
    "study-collect-imports-runner": (
        "study-layers", "xpool/study/collect.py", _LOCAL.format(target="xpool.study.runner")
    ),
    "study-figures-imports-experiments": (
        "study-layers", "xpool/study/figures.py", _LOCAL.format(target="xpool.study.experiments")
    ),
    "study-module-without-a-layer": ("study-layers", "xpool/study/stray.py", '"""No layer."""\n'),
    "synthetic-scenes-imports-render": (
        "synthetic-layers", "xpool/data/synthetic/scenes.py",
        _LOCAL.format(target="xpool.data.synthetic.render"),
    ),
    "synthetic-stream-imports-sibling-corpus": (
        "synthetic-layers", "xpool/data/synthetic/stream.py",
        _LOCAL.format(target="xpool.data.synthetic.corpus"),
    ),
    "synthetic-module-without-a-layer": (
        "synthetic-layers", "xpool/data/synthetic/stray.py", '"""No layer."""\n'
    ),
    "reporting-names-imports-tables": (
        "reporting-layers", "xpool/reporting/names.py",
        _LOCAL.format(target="xpool.reporting.tables"),
    ),
    "similarity-base-imports-matrix": (
        "similarity-layers", "xpool/similarity/base.py",
        _LOCAL.format(target="xpool.similarity.matrix"),
    ),
    "factored-imports-weighting": (
        "similarity-layers", "xpool/similarity/factored.py",
        _LOCAL.format(target="xpool.similarity.weighting"),
    ),
    "train-imports-bench": (
        "package-without-bench", "xpool/engine/train.py", _LOCAL.format(target="bench.similarity")
    ),
}
CONTRACTS = sorted({contract for contract, _, _ in VIOLATIONS.values()})


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "profiles", "configs")
    for folder in ("xpool", "bench"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _lint(where: Path, contract: str) -> subprocess.CompletedProcess:
    # PYTHONPATH makes the copy, not an installed xpool, the package that grimp analyses.
    env = {**os.environ, "PYTHONPATH": str(where)}
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", "--no-logo", "--contract", contract],
        cwd=where, env=env, capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("clean")
    _copy_tree(where)
    return where


@pytest.mark.parametrize("contract", CONTRACTS)
def test_contract_is_kept_by_the_tree(clean_copy, contract):
    res = _lint(clean_copy, contract)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_contract_breaks_on_a_planted_import(tmp_path, case):
    contract, rel, text = VIOLATIONS[case]
    _copy_tree(tmp_path)
    path = tmp_path / rel
    path.write_text((path.read_text() if path.exists() else "") + text)
    res = _lint(tmp_path, contract)
    assert res.returncode == 1, f"{contract} kept despite {case}:\n{res.stdout}{res.stderr}"
    assert "BROKEN" in res.stdout
