"""The benchmark suite's plumbing (not its timings): helpers, the summary, one real subprocess run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common
from bench.decode import frames_to_decode
from bench.reproduce import latest_runs
from bench.reproduce import main as reproduce_main
from bench.suite import BENCHMARKS, available_benchmarks, run_benchmarks, write_summary
from xpool.errors import XPoolError

ROOT = Path(__file__).resolve().parents[1]


def test_time_interleaved_alternates_order_and_counts_calls() -> None:
    calls: list[str] = []
    timings = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      repeats=3, warmup=1, number=2)
    # warm-up a, b; then rounds a a b b | b b a a | a a b b
    assert calls == ["a", "b"] + ["a"] * 2 + ["b"] * 2 + ["b"] * 2 + ["a"] * 2 + ["a"] * 2 + ["b"] * 2
    assert list(timings) == ["a", "b"]
    assert all(len(t.seconds) == 3 and t.median >= 0 for t in timings.values())
    with pytest.raises(ValueError):
        common.time_interleaved({"a": lambda: None}, repeats=0)


def test_speedup_and_round_ratios_use_medians_and_rounds() -> None:
    t = {"fast": common.Timing("fast", [1.0, 2.0, 1.0]), "slow": common.Timing("slow", [4.0, 4.0, 5.0])}
    assert common.speedup(t, "fast", "slow") == pytest.approx(4.0)  # 4 / 1
    assert common.round_ratios(t, "fast", "slow") == pytest.approx([4.0, 2.0, 5.0])
    assert t["fast"].rate(10) == pytest.approx(10.0)
    assert math.isnan(common.Timing("empty").median)


def test_markdown_table_and_number_format() -> None:
    table = common.markdown_table(["name", "value"], [["x", 1234.5678], ["y", None], ["z", 0.0123456]])
    lines = table.splitlines()
    assert lines[0].startswith("| name") and set(lines[1]) <= {"|", "-"}
    assert "1,235" in table and "0.0123" in table and "| -" in table
    assert common.fmt(True) == "yes" and common.fmt(float("nan")) == "nan"
    # A '|' inside a cell must not split it.
    assert common.markdown_table(["a"], [["max |diff|"]]).splitlines()[2] == "| max \\|diff\\| |"


def test_report_writes_schema_with_machine_info(tmp_path: Path) -> None:
    report = common.BenchReport("demo", "A demo", quick=True, out_dir=tmp_path, params={"n": 3})
    report.add_headline("speed", 2.5, "x", ">= 2x", True, "detail")
    report.add_table("t", ["a", "b"], [[1, float("nan")]], echo=False)
    report.results["raw"] = {"inf": float("inf")}
    report.note("a note", echo=False)
    path = report.write()
    data = json.loads(path.read_text())  # strict JSON: NaN/inf were turned into null
    assert path == tmp_path / "demo.json"
    assert data["name"] == "demo" and data["quick"] is True and data["params"] == {"n": 3}
    assert data["tables"][0]["rows"] == [[1, None]] and data["results"]["raw"]["inf"] is None
    for key in ("cpu", "cpu_count", "usable_cores", "torch", "torch_threads", "load_avg_start"):
        assert key in data["machine"]


def test_summary_covers_every_json_including_foreign_ones(tmp_path: Path) -> None:
    report = common.BenchReport("decode", "Decoding", quick=False, out_dir=tmp_path)
    report.add_headline("decord vs opencv", 3.0, "x", ">= 2x", True)
    report.add_table("per video", ["video", "ms"], [["a.mp4", 12.5]], echo=False)
    report.write()
    # A JSON written without bench/common.py (e.g. by another script) is listed flat.
    (tmp_path / "other.json").write_text(json.dumps({"speedup": 21.0, "nested": {"gb": 1.5}}))
    path = write_summary(tmp_path, {"decode": {"status": "ok", "seconds": 1.0}}, total_s=1.0)
    text = path.read_text()
    assert path == tmp_path / "README.md"
    assert "## Headline numbers" in text and "decord vs opencv" in text and ">= 2x" in text
    assert "## decode: Decoding" in text and "a.mp4" in text
    assert "## other" in text and "nested.gb" in text and "21.0" in text


def test_available_benchmarks_lists_the_suite_in_order() -> None:
    names = available_benchmarks(ROOT / "bench")
    assert names == available_benchmarks()
    assert "common" not in names and "__init__" not in names and "suite" not in names
    mine = [n for n in ("reproduce", "decode", "dataloader", "train_step") if n in BENCHMARKS]
    assert [n for n in names if n in mine] == mine


def test_unknown_benchmark_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(XPoolError, match="unknown benchmark"):
        run_benchmarks(quick=True, only=["no_such_bench"], out_dir=tmp_path)


def _xpool_bench(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "XPOOL_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "xpool.cli", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_xpool_bench_runs_the_suite_and_passes_its_options_and_exit_code() -> None:
    res = _xpool_bench("--quick", "--only", "no_such_bench")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "unknown benchmark(s) ['no_such_bench']" in res.stderr and "Traceback" not in res.stderr


def test_xpool_bench_without_the_bench_folder_is_a_clear_error(tmp_path: Path) -> None:
    res = _xpool_bench("--quick", root=tmp_path)  # an installed package: no bench/ at its root
    assert res.returncode == 2
    assert "no benchmark suite at" in res.stderr and "source checkout" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_run_benchmarks_runs_a_script_in_a_subprocess(tmp_path: Path) -> None:
    """`reproduce --quick` only reads a record (never reruns the study): cheap but real."""
    rc = run_benchmarks(quick=True, only=["reproduce"], out_dir=tmp_path, timeout_s=240)
    assert rc == 0
    data = json.loads((tmp_path / "reproduce.json").read_text())
    assert data["name"] == "reproduce" and data["quick"] is True
    summary = (tmp_path / "README.md").read_text()
    assert "reproduce" in summary and "| ok" in summary


def test_frames_to_decode_counts_seek_loop_and_forward_pass() -> None:
    # Keyframes at 0 and 10; targets 2, 5, 12. Seek loop: 0..2, 0..5, 10..12 = 3 + 6 + 3.
    # Forward: 0..2, 3..5, then jump to keyframe 10: 10..12 = 3 + 3 + 3.
    assert frames_to_decode([0, 10], [2, 5, 12]) == {"seek_loop": 12, "forward": 9}
    # One keyframe: forward decodes straight through to the last target.
    assert frames_to_decode([0], [2, 5, 12]) == {"seek_loop": 3 + 6 + 13, "forward": 13}


def test_reproduce_bench_reads_first_and_cached_runs(tmp_path: Path) -> None:
    def entry(kind: str, wall: float, status: str = "ok") -> dict:
        return {"kind": kind, "wall_time_s": wall, "status": status, "finished_at": "t",
                "runs_before": 0, "runs_after": 5, "notebook_seconds": {"01_msrvtt_9k": wall / 2}}

    record = {"history": [entry("first", 600.0), entry("cached", 30.0), entry("first", 1.0, "failed")]}
    assert {k: e["wall_time_s"] for k, e in latest_runs(record).items()} == {"first": 600.0, "cached": 30.0}
    path = tmp_path / "reproduce_record.json"
    path.write_text(json.dumps(record))
    assert reproduce_main(["--record", str(path), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    first, cached = data["headline"]
    assert first["value"] == 600.0 and first["target"] == "<= 5 min" and first["met"] is False
    assert cached["value"] == 30.0 and data["results"]["first_over_cached"] == 20.0


def test_exact_conv_bench_times_every_tiny_clip_convolution(tmp_path: Path) -> None:
    from bench import exact_conv

    assert exact_conv.main(["--quick", "--out", str(tmp_path), "--repeats", "1"]) == 0
    data = json.loads((tmp_path / "exact_conv.json").read_text())
    rows = data["tables"][0]["rows"]
    # The tower's 19 convolutions (3 in the stem, 4 bottlenecks of 3 plus a downsample), a total.
    assert len(rows) == 20 and rows[0][0] == "conv1" and rows[-1][0] == "all layers"
    assert all(h["value"] > 0 for h in data["headline"])


def test_pretrain_budget_bench_pretrains_each_variant_and_the_half_resolution_tower(
        tmp_path: Path) -> None:
    """`pretrain_budget --quick`: both quick variants pretrain (4 steps) and are scored; the
    32-px variant really builds a 32-px image tower."""
    from bench import pretrain_budget
    from xpool.model.backbone import build_backbone

    assert pretrain_budget.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "pretrain_budget.json").read_text())
    rows = data["tables"][0]["rows"]
    assert [r[0] for r in rows] == list(pretrain_budget.QUICK_VARIANTS)
    for name in pretrain_budget.QUICK_VARIANTS:
        r = data["results"][name]
        assert r["pretrain_s"] > 0 and 0 <= r["mean_pool_t2v_R1"] <= 100
        assert 0 <= r["i2t_R1"] <= 100 and 0 <= r["t2i_R1"] <= 100
    assert build_backbone("xpool-tiny-32px", pretrained=None).image_size == 32
    with pytest.raises(SystemExit):
        pretrain_budget.main(["--quick", "--out", str(tmp_path), "--variants", "nope"])
