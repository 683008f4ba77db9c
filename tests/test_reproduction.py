"""`make reproduce` semantics: committed run records are a reference, not a cache (only runs this
checkout trained are reused), and the reproduction check counts and locates differences."""

from __future__ import annotations

import subprocess

import pandas as pd

from xpool import study as xs
from xpool.reproduction_check import compare_tables, reproduction_check


def test_a_record_this_checkout_did_not_train_is_retrained_then_reused(tmp_path):
    out = tmp_path / "smoke"
    st = xs.open_study("smoke", out, mode="frozen", workers=1, progress=False)
    record = st.run({"model.pooling": "mean"}, seed=0).record
    assert record.trained_here
    stamp = record.metrics_path.stat().st_mtime_ns
    again = xs.open_study("smoke", out, mode="frozen", workers=1, progress=False)
    again.run({"model.pooling": "mean"}, seed=0)
    assert record.metrics_path.stat().st_mtime_ns == stamp  # made here: reused
    record.local_marker.unlink()  # as in a fresh clone: the committed record, no marker
    clone = xs.open_study("smoke", out, mode="frozen", workers=1, progress=False)
    clone.run({"model.pooling": "mean"}, seed=0)
    assert record.metrics_path.stat().st_mtime_ns != stamp and record.trained_here
    figures = xs.open_study("smoke", out, mode="frozen", figures_only=True, progress=False)
    record.local_marker.unlink()
    stamp = record.metrics_path.stat().st_mtime_ns
    figures.run({"model.pooling": "mean"}, seed=0)  # figures-only reads committed records
    assert record.metrics_path.stat().st_mtime_ns == stamp


def test_compare_tables_counts_equal_numbers_and_names_the_largest_difference():
    committed = pd.DataFrame({"pooling": ["mean", "xpool"], "R1": [29.0, 75.7], "R5": [1.0, 2.0],
                              "run_id": ["a", "b"]})
    here = committed.copy()
    here.loc[1, "R1"] = 72.0
    here.loc[0, "R5"] = 1.5
    check = compare_tables(here, committed, "t")
    assert (check.equal, check.total) == (2, 4)
    assert check.differences[0][1:] == ("pooling=xpool", "R1", 72.0, 75.7)
    assert not check.all_equal
    assert compare_tables(committed, committed, "t").all_equal
    assert compare_tables(committed.iloc[:1], committed, "t").note.startswith("layout differs")


def test_reproduction_check_compares_with_the_committed_version(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    tables = tmp_path / "results" / "p" / "tables"
    tables.mkdir(parents=True)
    (tables / "a.csv").write_text("k,R1\nx,1.5\ny,2.0\n")
    (tables.parent / "artifacts.json").write_text('{"corpus": {"h": {"corpus_sha256": "s"}}}\n')
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    report, equal = reproduction_check(tables.parent)
    assert equal and "**All equal**" in report
    (tables / "a.csv").write_text("k,R1\nx,1.5\ny,2.5\n")
    report, equal = reproduction_check(tables.parent)
    assert not equal and "1 of 2" in report and "R1 at k=y: 2.5 vs 2.0" in report
    assert (tables.parent / "reproduction_check.md").read_text() == report
    # A table no commit holds: a first run, said so, not "0 of 0 equal".
    (tables / "b.csv").write_text("k,R1\nx,1.0\n")
    report, equal = reproduction_check(tables.parent)
    assert not equal and "**Not all equal**: 1 of 2" in report
    assert "| b | - | - | not committed: nothing to compare with |" in report
    # Committed but with another layout: no number compared, yet not "nothing to compare with".
    (tables / "a.csv").write_text("k,R1,R5\nx,1.5,3.0\n")
    (tables / "b.csv").unlink()
    report, equal = reproduction_check(tables.parent)
    assert not equal and "**Not all equal**: 0 of 0" in report and "layout differs" in report
    (tables / "a.csv").unlink()
    report, equal = reproduction_check(tables.parent)
    assert not equal and "**Nothing to compare with**" in report and "Not all equal" not in report
