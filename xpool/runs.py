"""Run records: one directory per training run under `results/<profile>/runs/<run-id>/`.

A run directory holds the resolved config, the environment, a per-step CSV log, one JSON per
evaluation, and when the run finished, `metrics.json`. Checkpoints live in `checkpoints/` (git
ignored). The run id is derived from the config, so rerunning the same config finds its record:
that is how `make reproduce` caches finished runs.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpool.config import Config, config_from_dict, save_config
from xpool.io import read_json, write_json


def run_id(cfg: Config) -> str:
    """`<pooling>-seed<seed>-<hash>`, or `output.run_name` when set."""
    if cfg.output.run_name:
        return cfg.output.run_name
    return f"{cfg.model.pooling}-seed{cfg.train.seed}-{cfg.fingerprint()}"


# Written into a run's folder when this checkout trains it; git-ignored, so a fresh clone has
# none and `make reproduce` trains every run there instead of reusing the committed records.
LOCAL_MARKER = "trained_here.json"


@dataclass
class RunRecord:
    """Paths and contents of one run directory."""

    run_dir: Path

    @classmethod
    def for_config(cls, cfg: Config) -> RunRecord:
        return cls(cfg.profile_dir / "runs" / run_id(cfg))

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "train_log.csv"

    @property
    def evals_dir(self) -> Path:
        return self.run_dir / "evals"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    @property
    def local_marker(self) -> Path:
        return self.run_dir / LOCAL_MARKER

    @property
    def trained_here(self) -> bool:
        """Finished, and trained in this checkout (not a committed record from elsewhere)."""
        return self.finished and self.local_marker.is_file()

    def mark_trained_here(self) -> None:
        """Mark a run as trained in this checkout (the marker is git-ignored)."""
        from datetime import UTC, datetime

        write_json(self.local_marker, {"host": platform.node(), "cpu": cpu_model(),
                                       "finished_at": datetime.now(UTC).isoformat(
                                           timespec="seconds")})

    def metrics(self) -> dict[str, Any]:
        """The final metrics of a finished run."""
        return read_json(self.metrics_path)

    def config(self) -> Config:
        """The resolved config this run was made with."""
        import yaml

        return config_from_dict(yaml.safe_load(self.config_path.read_text()), str(self.config_path))

    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation made during training, in order."""
        return [read_json(p) for p in sorted(self.evals_dir.glob("eval_*.json"))]

    def train_log(self) -> list[dict[str, str]]:
        """The per-step training log as rows of strings."""
        if not self.log_path.is_file():
            return []
        with self.log_path.open() as f:
            return list(csv.DictReader(f))

    def start(self, cfg: Config) -> None:
        """Create the directory and record the resolved config and the environment."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path)
        write_json(self.run_dir / "environment.json", environment_info())


def environment_info() -> dict[str, Any]:
    """Versions and hardware, recorded with every run and benchmark: with the CPU's flags, the
    instruction-set caps and the capability torch's kernels use (see xpool.determinism)."""
    import torch

    from xpool.determinism import cpu_state

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        **cpu_state(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("open_clip", "numpy", "decord", "av"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # a missing optional package is recorded, not fatal
            info[name] = None
    return info


def cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class CsvLog:
    """Append-only CSV log that survives resume (truncated back to the resumed step)."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they are recomputed when a run resumes)."""
        if not self.path.is_file():
            return
        with self.path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._write(rows)

    def reset(self) -> None:
        self._write([])

    def _write(self, rows: list[dict]) -> None:
        from xpool.io import atomic_write

        def write(p: Path) -> None:
            with p.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow(row)
