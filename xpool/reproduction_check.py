"""The reproduction check that ends `make reproduce`: this machine's results against the committed
ones.

The reference is the committed version of each file (`git show HEAD:<path>`), so the check works
on a fresh clone whose tables the study has just overwritten. For every table (`tables/*.csv`) it
counts the numbers equal to the committed ones and lists the largest differences with their row
and column; for `artifacts.json` it compares the corpus, pretrained-checkpoint and feature sha256
sums. Written to `results/<profile>/reproduction_check.md`.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xpool.integrity import ARTIFACTS_FILE
from xpool.io import atomic_write_text, read_json

CHECK_FILE = "reproduction_check.md"
# Largest differences listed per table.
TOP_DIFFERENCES = 3


def committed_text(path: Path) -> str | None:
    """The file's content at git HEAD; None where it is not committed or git is unavailable."""
    path = path.resolve()
    try:
        root = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, check=True).stdout.strip()
        rel = path.relative_to(Path(root).resolve()).as_posix()
        out = subprocess.run(["git", "-C", root, "show", f"HEAD:{rel}"], capture_output=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    return out.stdout.decode("utf-8")


@dataclass
class TableCheck:
    """One table against its committed version."""

    name: str
    equal: int = 0
    total: int = 0
    note: str | None = None  # why the numbers could not be compared
    differences: list[tuple[float, str, str, Any, Any]] = field(default_factory=list)

    @property
    def all_equal(self) -> bool:
        return self.note is None and self.equal == self.total


def compare_tables(local: pd.DataFrame, committed: pd.DataFrame, name: str) -> TableCheck:
    """Cell-by-cell comparison of the numeric columns, rows in order; labels from the others."""
    check = TableCheck(name)
    if list(local.columns) != list(committed.columns) or len(local) != len(committed):
        check.note = (f"layout differs: {len(local)} rows x {list(local.columns)} here, "
                      f"{len(committed)} rows x {list(committed.columns)} committed")
        return check
    numeric = [c for c in local.columns if pd.api.types.is_numeric_dtype(local[c])
               and pd.api.types.is_numeric_dtype(committed[c])]
    labels = [c for c in local.columns if c not in numeric]
    for i in range(len(local)):
        row = ", ".join(f"{c}={local[c].iloc[i]}" for c in labels if c != "run_id")
        for c in numeric:
            a, b = local[c].iloc[i], committed[c].iloc[i]
            check.total += 1
            if (pd.isna(a) and pd.isna(b)) or a == b:
                check.equal += 1
            else:
                diff = abs(float(a) - float(b)) if not (pd.isna(a) or pd.isna(b)) else float("inf")
                check.differences.append((diff, row, c, a, b))
    check.differences.sort(key=lambda d: -d[0])
    return check


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def check_artifacts(profile_dir: Path) -> tuple[list[str], bool]:
    """Markdown lines comparing artifacts.json with the committed one, and whether all match."""
    path = profile_dir / ARTIFACTS_FILE
    committed = committed_text(path)
    if not path.is_file():
        return [f"- no {ARTIFACTS_FILE} here (nothing was generated)"], False
    if committed is None:
        return [f"- {ARTIFACTS_FILE}: no committed version to compare with"], False
    import json

    here, ref = _flatten(read_json(path)), _flatten(json.loads(committed))
    same = sorted(k for k in here if k in ref and here[k] == ref[k])
    differ = sorted(k for k in here if k in ref and here[k] != ref[k])
    new, missing = sorted(set(here) - set(ref)), sorted(set(ref) - set(here))
    lines = [f"- {len(same)} of {len(set(here) | set(ref))} digests equal the committed ones"]
    lines += [f"  - differs: `{k}`: `{here[k]}` here, `{ref[k]}` committed" for k in differ]
    lines += [f"  - only here: `{k}`" for k in new]
    lines += [f"  - only committed: `{k}`" for k in missing]
    return lines, not (differ or new or missing)


def reproduction_check(profile_dir: str | Path) -> tuple[str, bool]:
    """(markdown report, all equal) for `results/<profile>/`; also writes the report there."""
    profile_dir = Path(profile_dir)
    checks: list[TableCheck] = []
    committed_tables = 0
    for csv in sorted((profile_dir / "tables").glob("*.csv")):
        text = committed_text(csv)
        if text is None:
            checks.append(TableCheck(csv.stem, note="not committed: nothing to compare with"))
            continue
        committed_tables += 1
        checks.append(compare_tables(pd.read_csv(csv), pd.read_csv(io.StringIO(text)), csv.stem))
    artifact_lines, artifacts_equal = check_artifacts(profile_dir)
    all_equal = bool(checks) and all(c.all_equal for c in checks) and artifacts_equal
    equal = sum(c.equal for c in checks)
    total = sum(c.total for c in checks)
    if all_equal:
        headline = ("**All equal**: every number of every table and every digest equals the "
                    "committed one.")
    elif not committed_tables:
        headline = ("**Nothing to compare with**: no table of this profile is committed, so "
                    "these results are the first; commit them to make them the reference.")
    else:
        headline = f"**Not all equal**: {equal} of {total} table numbers equal the committed ones."
    lines = [f"# Reproduction check: {profile_dir.name}", "", headline,
             "", "| table | equal | numbers | largest difference (here vs committed) |",
             "|---|---|---|---|"]
    for c in checks:
        if c.note:
            lines.append(f"| {c.name} | - | - | {c.note} |")
            continue
        top = "; ".join(f"{col} at {row}: {a} vs {b}"
                        for _, row, col, a, b in c.differences[:TOP_DIFFERENCES]) or "none"
        lines.append(f"| {c.name} | {c.equal} | {c.total} | {top} |")
    lines += ["", "Digests (`artifacts.json`: synthetic corpora, pretrained tiny-CLIP tensors, "
              "frozen feature files):", *artifact_lines, ""]
    report = "\n".join(lines)
    atomic_write_text(profile_dir / CHECK_FILE, report)
    return report, all_equal
