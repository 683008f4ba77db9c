"""Execute one notebook with papermill, in the `xpool` kernel: how long it took and what failed.

`xpool.reproduce` runs the study's notebooks through `run_notebook`, in its own process or in
worker processes (so the outcome is plain values: seconds and None, or a one-line error that
names the failing cell, or `INTERRUPTED` for a Ctrl-C, whichever way the kernel reports it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["INTERRUPTED", "run_notebook"]

# The error of a notebook stopped by Ctrl-C (`reproduce` stops the study quietly on it).
INTERRUPTED = "interrupted"


def _cell_of(error: Exception) -> str:
    index = getattr(error, "cell_index", None)
    count = getattr(error, "exec_count", None)
    where = f"cell {index}" if index is not None else "an unknown cell"
    if count is not None:
        where += f" (execution count {count})"
    ename = getattr(error, "ename", type(error).__name__)
    evalue = getattr(error, "evalue", str(error))
    return f"{where}: {ename}: {evalue}"


def run_notebook(src: str, dst: str, params: dict[str, Any], kernel: str,
                 cwd: str) -> tuple[float, str | None]:
    """Execute one notebook with papermill: (seconds, None) or (seconds, what failed where).

    Top-level and returning plain strings so it also runs in a worker process.
    """
    # papermill (nbformat, jsonschema, nbclient) and the kernel client (jupyter_client) take
    # seconds to import: only when a notebook runs, so that `import xpool.reproduce` stays instant.
    import papermill as pm

    t = time.time()
    try:
        with _quiet_kernel_shutdown():
            return _papermill(pm, src, dst, params, kernel, cwd, t)
    except KeyboardInterrupt:
        return round(time.time() - t, 1), INTERRUPTED
    except Exception as e:
        if _interrupted(e):  # the kernel's channels failing while a Ctrl-C shuts it down
            return round(time.time() - t, 1), INTERRUPTED
        raise


def _interrupted(error: BaseException | None) -> bool:
    """Whether `error` was raised while handling a KeyboardInterrupt (anywhere in its chain)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__context__ or error.__cause__, seen + 1
    return False


@contextmanager
def _quiet_kernel_shutdown() -> Iterator[None]:
    """Keep a Ctrl-C from printing the kernel client's teardown tracebacks (ZMQError from its
    closed sockets): the interrupt itself is reported in one line by `xpool reproduce`."""
    names = ("traitlets", "asyncio", "papermill", "nbclient", "jupyter_client")
    try:
        yield
    except KeyboardInterrupt:
        # The process is stopping: the teardown noise of the kernel's sockets is not news.
        for n in names:
            logging.getLogger(n).setLevel(logging.CRITICAL + 1)
        raise


def _papermill(pm: Any, src: str, dst: str, params: dict[str, Any], kernel: str, cwd: str,
               t: float) -> tuple[float, str | None]:
    try:
        try:
            # Only what the notebook declares (papermill would inject the rest with a warning).
            declared = pm.inspect_notebook(src)
            params = {k: v for k, v in params.items() if k in declared}
        except ValueError:
            pass  # no kernelspec in the notebook's metadata: papermill cannot inspect it
        from xpool.kernel import EncryptedKernelManager  # jupyter_client: see run_notebook

        # Curve-encrypted kernel transport: no "running over TCP without encryption" warning.
        pm.execute_notebook(src, dst, parameters=params, kernel_name=kernel, cwd=cwd,
                            progress_bar=False, log_output=False,
                            kernel_manager_class=EncryptedKernelManager)
    except pm.PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt":
            return round(time.time() - t, 1), INTERRUPTED
        return round(time.time() - t, 1), f"failed in {_cell_of(e)}"
    except Exception as e:  # no kernel, unreadable notebook: still name the notebook
        if _interrupted(e):
            raise
        hint = " (register the kernel with `make setup`)" if "No such kernel" in str(e) else ""
        return round(time.time() - t, 1), f"could not run: {type(e).__name__}: {e}{hint}"
    return round(time.time() - t, 1), None
