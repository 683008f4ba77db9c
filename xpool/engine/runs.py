"""Run records: one directory per training run under `results/<profile>/runs/<run-id>/`.

A run directory holds the resolved config, the environment, a per-step CSV log, one JSON per
evaluation, and when the run finished, `metrics.json`. Checkpoints live in `checkpoints/` (git
ignored). The run id is derived from the config, so rerunning the same config finds its record:
that is how `make reproduce` caches finished runs.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from xpool.config import Config, config_from_dict, save_config
from xpool.determinism import cpu_state
from xpool.errors import RunLockedError, XPoolError
from xpool.io import atomic_write, read_csv_rows, read_json, read_yaml, write_json


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
    def lock_path(self) -> Path:
        # In the git-ignored checkpoints folder, so committed run records never carry it.
        return self.checkpoint_dir / ".lock"

    def _remedy(self) -> str:
        return (f"delete the run folder {self.run_dir} (or just this file) and train the run "
                f"again (`xpool train ... --fresh`)")

    @property
    def local_marker(self) -> Path:
        return self.run_dir / LOCAL_MARKER

    @property
    def trained_here(self) -> bool:
        """Finished, and trained in this checkout (not a committed record from elsewhere)."""
        return self.finished and self.local_marker.is_file()

    def mark_trained_here(self) -> None:
        """Mark a run as trained in this checkout (the marker is git-ignored)."""
        write_json(self.local_marker, {"host": platform.node(), "cpu": cpu_model(),
                                       "finished_at": datetime.now(UTC).isoformat(
                                           timespec="seconds")})

    def metrics(self) -> dict[str, Any]:
        """The final metrics of a finished run."""
        return read_json(self.metrics_path, self._remedy())

    def config(self) -> Config:
        """The resolved config this run was made with."""
        raw = read_yaml(self.config_path, self._remedy())
        if not isinstance(raw, dict):
            raise XPoolError(f"{self.config_path} is not a mapping of config sections; "
                             f"{self._remedy()}")
        return config_from_dict(raw, str(self.config_path))

    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation made during training, in order."""
        return [read_json(p, self._remedy()) for p in sorted(self.evals_dir.glob("eval_*.json"))]

    def train_log(self) -> list[dict[str, str]]:
        """The per-step training log as rows of strings."""
        if not self.log_path.is_file():
            return []
        return read_csv_rows(self.log_path, ("step",), self._remedy())

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete `.*.tmp` files that killed atomic writes left behind (only call it while
        holding the run's lock: a live writer's temporary file must not vanish)."""
        removed = []
        if self.run_dir.is_dir():
            for p in self.run_dir.rglob(".*.tmp"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def start(self, cfg: Config) -> None:
        """Create the directory and record the resolved config and the environment."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path)
        write_json(self.run_dir / "environment.json", environment_info())


class RunLock:
    """An exclusive `flock` on `<run>/.lock`, holding the owner's PID.

    The kernel drops a `flock` when its process dies (even by kill -9), so a lock file left by a
    killed run never blocks: only a live process holds the lock.
    """

    def __init__(self, record: RunRecord):
        self.record = record
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        path = self.record.lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(
                f"run {self.record.run_dir.name} ({self.record.run_dir}) is in use by another "
                f"process (PID {holder.split()[0]}); wait for it to finish or stop it, then rerun"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def environment_info() -> dict[str, Any]:
    """Versions and hardware, recorded with every run and benchmark: with the CPU's flags, the
    instruction-set caps and the capability torch's kernels use (see xpool.determinism)."""
    # Here, not at the top: reading run records (reproduce, figures) must not load torch.
    import torch

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
        rows = read_csv_rows(self.path, ("step",))
        self._write([r for r in rows if int(r["step"]) <= step])

    def reset(self) -> None:
        self._write([])

    def _write(self, rows: list[dict]) -> None:
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
