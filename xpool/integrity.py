"""sha256 digests of what decides the study's numbers: generated videos, the pretrained
checkpoint's tensors, cached feature files.

Each is recorded when the file is written, checked when it is reused, and compared against the
committed reference by the reproduction check (`xpool.reproduce`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xpool.io import read_json, write_json

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_of(items: Mapping[str, str]) -> str:
    """One sha256 over `name -> sha256` pairs (sorted by name): a corpus's fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(items):
        digest.update(f"{name} {items[name]}\n".encode())
    return digest.hexdigest()


def tensors_sha256(state: Mapping[str, Any]) -> str:
    """sha256 over a state dict's tensors (names, dtypes, shapes and raw bytes, in name order).

    Independent of how the archive was written, so it compares checkpoints by content.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={value!r}\n".encode())
            continue
        t = value.detach().cpu().contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


ARTIFACTS_FILE = "artifacts.json"


def record_artifact(profile_dir: str | Path, section: str, key: str, value: Any) -> None:
    """Merge `value` under `section`/`key` into `<profile_dir>/artifacts.json` (committed with
    the results; the reproduction check compares it with the committed one)."""
    path = Path(profile_dir) / ARTIFACTS_FILE
    data = read_json(path) if path.is_file() else {}
    if data.get(section, {}).get(key) == value:
        return
    data.setdefault(section, {})[key] = value
    write_json(path, data)
