"""Stopping a training run cleanly: SIGINT/SIGTERM stop it at the next step boundary, after
`last.pt` is saved, with the command that resumes it."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from xpool.config import Config, load_config

__all__ = ["StopRequest", "TrainingInterrupted", "resume_command"]


def resume_command(cfg: Config) -> str:
    """The exact `xpool train ... --resume` command that continues the run of `cfg`: the profile
    plus an override for every key whose value differs from the profile's."""
    base, cur = load_config(cfg.profile).to_dict(), cfg.to_dict()
    overrides = []
    for section, values in cur.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if base[section].get(key) != value:
                text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                text = text.removesuffix("...").strip()
                overrides.append(shlex.quote(f"{section}.{key}={text}"))
    return " ".join(["xpool", "train", shlex.quote(cfg.profile), *overrides, "--resume"])


class StopRequest:
    """SIGINT/SIGTERM handler that asks the training loop to stop at the next step boundary
    (where it saves `last.pt`); a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}

        def handler(signum: int, frame: Any) -> None:
            if self.signum is not None:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
            self.signum = signum
            print(f"\n[xpool] {signal.Signals(signum).name}: saving a checkpoint after this "
                  f"step (send it again to stop at once)", file=sys.stderr, flush=True)

        for s in self.SIGNALS:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving `last.pt`; the message holds the command
    that resumes it."""
