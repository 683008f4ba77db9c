"""Execute one notebook with papermill, in the `xpool` kernel: how long it took and what failed.

`xpool.reproduce` runs the study's notebooks through `run_notebook`, in its own process or in
worker processes (so the outcome is plain values: seconds and None, or a one-line error that
names the failing cell, or `INTERRUPTED` for a Ctrl-C, whichever way the kernel reports it).

`shared_kernel` starts one kernel for a sequence of notebooks. A kernel start and the study's
imports (torch, open_clip, pandas, matplotlib) take about 9 s, and the frozen heads' worker
processes, which live in the kernel, about as long again; a fresh kernel per notebook paid both
for each of the study's notebooks. Each notebook still starts from an empty namespace (the
previous notebook's names deleted, its figures closed), so a notebook that runs in the shared
kernel runs the same alone, as the test suite and JupyterLab run it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["INTERRUPTED", "SharedKernel", "kernel_failure", "run_notebook", "shared_kernel"]

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


def kernel_failure(error: Exception) -> str:
    """One line for a kernel that could not be started, with the command that registers ours."""
    hint = " (register the kernel with `make setup`)" if "No such kernel" in str(error) else ""
    return f"{type(error).__name__}: {error}{hint}"


def run_notebook(src: str, dst: str, params: dict[str, Any], kernel: str, cwd: str,
                 shared: SharedKernel | None = None) -> tuple[float, str | None]:
    """Execute one notebook with papermill: (seconds, None) or (seconds, what failed where).

    In the kernel of `shared` (from `shared_kernel`, started in `cwd` for `kernel`) or, by
    default, in a kernel of its own. Top-level and returning plain strings so it also runs in a
    worker process.
    """
    # papermill (nbformat, jsonschema, nbclient) and the kernel client (jupyter_client) take
    # seconds to import: only when a notebook runs, so that `import xpool.reproduce` stays instant.
    import papermill as pm

    t = time.time()
    try:
        with _quiet_kernel_shutdown():
            problem = shared.reset() if shared is not None else None
            if problem:
                return round(time.time() - t, 1), problem
            return _papermill(pm, src, dst, params, kernel, cwd, t, shared)
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
               t: float, shared: SharedKernel | None) -> tuple[float, str | None]:
    try:
        try:
            # Only what the notebook declares (papermill would inject the rest with a warning).
            declared = pm.inspect_notebook(src)
            params = {k: v for k, v in params.items() if k in declared}
        except ValueError:
            pass  # no kernelspec in the notebook's metadata: papermill cannot inspect it
        from xpool.kernel import EncryptedKernelManager  # jupyter_client: see run_notebook

        # Curve-encrypted kernel transport: no "running over TCP without encryption" warning.
        if shared is None:
            pm.execute_notebook(src, dst, parameters=params, kernel_name=kernel, cwd=cwd,
                                progress_bar=False, log_output=False,
                                kernel_manager_class=EncryptedKernelManager)
        else:
            # nbclient leaves a kernel it did not start running; its client is closed here.
            try:
                pm.execute_notebook(src, dst, parameters=params, kernel_name=kernel, cwd=cwd,
                                    progress_bar=False, log_output=False, km=shared.km)
            finally:
                shared.close_clients()
    except pm.PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt":
            return round(time.time() - t, 1), INTERRUPTED
        return round(time.time() - t, 1), f"failed in {_cell_of(e)}"
    except Exception as e:  # no kernel, unreadable notebook: still name the notebook
        if _interrupted(e):
            raise
        return round(time.time() - t, 1), f"could not run: {kernel_failure(e)}"
    return round(time.time() - t, 1), None


# Between two notebooks of a shared kernel: delete every name the last notebook defined (IPython's
# own `%reset` would also delete `__spec__`, which spawning worker processes needs; imported
# modules stay in sys.modules, so the next notebook's imports are instant) and close its figures.
_RESET = """\
_ip = get_ipython()
for _name in [n for n in _ip.user_ns if not n.startswith("_") and n not in _ip.user_ns_hidden]:
    del _ip.user_ns[_name]
import sys as _sys
if "matplotlib.pyplot" in _sys.modules:
    _sys.modules["matplotlib.pyplot"].close("all")
globals().pop("_name", None)
del _ip, _sys
"""


@dataclass
class SharedKernel:
    """A running kernel that `run_notebook` executes notebooks in, one after another."""

    km: Any  # EncryptedKernelManager with a started kernel
    _clients: list[Any]

    def reset(self) -> str | None:
        """Empty the kernel's namespace, so the next notebook starts as in a fresh kernel.
        Returns None, or why it could not (a kernel that died or stopped answering)."""
        from jupyter_core.utils import run_sync

        kc = self.km.client()
        kc.start_channels()
        try:
            run_sync(kc.wait_for_ready)(timeout=60)
            reply = run_sync(kc.execute_interactive)(_RESET, store_history=False,
                                                     output_hook=lambda msg: None, timeout=60)
        except (RuntimeError, TimeoutError) as e:
            return f"could not run: the shared kernel does not answer ({e})"
        finally:
            kc.stop_channels()
        if reply["content"].get("status") != "ok":
            return (f"could not run: resetting the shared kernel failed with "
                    f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        return None

    def close_clients(self) -> None:
        """Close the channels of the clients nbclient opened on this kernel."""
        for kc in self._clients:
            kc.stop_channels()
        self._clients.clear()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the kernel process and every process under it (the
        frozen heads' workers live as long as the kernel, so `getrusage` never counts them
        while it runs)."""
        import psutil

        pid = self.km.provisioner.process.pid if self.km.provisioner else None
        if pid is None:
            return 0.0
        total = 0.0
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for p in procs:
            try:
                c = p.cpu_times()
            except psutil.Error:
                continue
            total += c.user + c.system + c.children_user + c.children_system
        return total


@contextmanager
def shared_kernel(kernel: str, cwd: str) -> Iterator[SharedKernel]:
    """Start one `kernel` in `cwd` (Curve-encrypted, see `xpool.kernel`) for several notebooks;
    shut it down on leaving, also on an error or a Ctrl-C."""
    from jupyter_core.utils import run_sync

    from xpool.kernel import EncryptedKernelManager

    clients: list[Any] = []

    class _Manager(EncryptedKernelManager):
        def client(self, *args: Any, **kwargs: Any) -> Any:
            kc = super().client(*args, **kwargs)
            clients.append(kc)
            return kc

    km = _Manager(kernel_name=kernel)
    run_sync(km.start_kernel)(cwd=cwd)
    shared = SharedKernel(km, clients)
    try:
        yield shared
    finally:
        with _quiet_kernel_shutdown():
            shared.close_clients()
            run_sync(km.shutdown_kernel)(now=False)
