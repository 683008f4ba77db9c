"""xpool.malloc: glibc keeps freed memory for the commands that compute (bits: test_exact_gemm)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xpool import cli
from xpool.malloc import ENV

PROBE = r"""
import ctypes, json, os, sys
from xpool.malloc import keep_freed_memory
ok = keep_freed_memory()
# mallinfo2's hblks: blocks glibc currently holds as separate mmaps.
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
big = ctypes.create_string_buffer(64 << 20)
print(json.dumps({"ok": ok, "new_mmaps": libc.mallinfo2().hblks - before,
                  "env": {k: os.environ.get(k) for k in sys.argv[1:]}}))
"""


def _probe(**env: str) -> dict:
    import json

    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE, *ENV], capture_output=True, text=True,
                          env=full, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_blocks_come_from_the_heap_and_children_inherit_the_settings() -> None:
    got = _probe()
    assert got["ok"] is True
    assert got["new_mmaps"] == 0  # the 64 MB buffer is not an mmap of its own
    assert got["env"] == ENV
    # Without the settings glibc maps a 64 MB block by itself: the probe can tell the difference.
    control = subprocess.run(
        [sys.executable, "-c", PROBE.replace("ok = keep_freed_memory()", "ok = None")],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    assert '"new_mmaps": 1' in control.stdout


def test_a_users_own_setting_is_kept() -> None:
    assert _probe(MALLOC_TRIM_THRESHOLD_="4096")["env"]["MALLOC_TRIM_THRESHOLD_"] == "4096"


def test_only_computing_commands_apply_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    assert cli.main(["config", "smoke"]) == 0
    assert calls == []
    assert cli.main(["train", "no-such-profile"]) == 2
    assert calls == ["kept"]
