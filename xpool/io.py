"""File IO with one failure mode: atomic writes, and reads that fail with an `XPoolError` naming
the path, what is wrong and what to do (never a bare traceback, never code run from a file)."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xpool.errors import DiskFullError, FileReadError, UnsafeFileError, XPoolError

# What to do about an unreadable file when the caller has nothing more specific to say.
DEFAULT_REMEDY = "delete it (or restore it) and rerun the command that writes it"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and then rename the temporary file onto `path`.

    The temporary file lives in the same directory so the final `os.replace` is atomic: a reader
    sees either the old file or the complete new one, never a partial write. A full disk raises
    `DiskFullError` ("no space left writing PATH"); the previous file stays intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _raise_write_error(path, e)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        _raise_write_error(path, e)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _raise_write_error(path: Path, e: OSError) -> None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            f"no space left writing {path}; free some disk space (or point output.results_dir / "
            f"the cache elsewhere) and rerun; the previous version of the file is intact"
        ) from e
    raise XPoolError(f"cannot write {path}: {e.strerror or e}; check the folder's permissions "
                     f"and free space") from e


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_text(path: str | Path, remedy: str = DEFAULT_REMEDY) -> str:
    """The UTF-8 text of a file, or a `FileReadError` (missing, unreadable, not UTF-8)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FileReadError(f"{path} does not exist; {remedy}") from e
    except UnicodeDecodeError as e:
        raise FileReadError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8`) or {remedy}") from e
    except OSError as e:
        raise FileReadError(f"cannot read {path}: {e.strerror or e}; {remedy}") from e


def read_json(path: str | Path, remedy: str = DEFAULT_REMEDY) -> Any:
    """Read a JSON file; a corrupt or missing file is a `FileReadError` naming it."""
    text = read_text(path, remedy)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileReadError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                            f"{e.msg}); {remedy}") from e


def read_yaml(path: str | Path, remedy: str = DEFAULT_REMEDY) -> Any:
    """Read a YAML file (safe loader); a corrupt file is a `FileReadError` naming it."""
    import yaml

    text = read_text(path, remedy)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FileReadError(f"{path} is not valid YAML ({e}); {remedy}") from e


def read_csv_rows(path: str | Path, required: tuple[str, ...] = (),
                  remedy: str = DEFAULT_REMEDY) -> list[dict[str, str]]:
    """Rows of a CSV file with a header; missing columns or ragged rows are a `FileReadError`."""
    path = Path(path)
    rows = list(csv.DictReader(read_text(path, remedy).splitlines()))
    header = set(rows[0]) if rows else set()
    absent = [c for c in required if rows and c not in header]
    if absent:
        raise FileReadError(f"{path} lacks the columns {absent}; {remedy}")
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise FileReadError(f"{path}:{i}: the row does not have as many fields as the header "
                                f"(the file is truncated or corrupt); {remedy}")
    return rows


def torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` atomically (write to a temporary file, then rename), with the same bytes
    for the same tensors.

    Written through a Python file object: a full disk then surfaces as ENOSPC (torch's own file
    writer reports it as an opaque `iostream error`), and torch names the records inside the
    zip archive `archive/...` instead of after the (random) temporary file's name.
    """
    import torch

    def write(p: Path) -> None:
        with p.open("wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def torch_load(path: str | Path, what: str = "file", remedy: str = DEFAULT_REMEDY) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with errors that name the file.

    Only tensors and plain containers are ever unpickled: a file that holds other Python objects
    (which could run code) is refused with `UnsafeFileError` and nothing in it runs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{what} {path} does not exist; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        if culprit:
            raise UnsafeFileError(
                f"refused to load {what} {path}: it holds a Python object ({culprit.group(1)}) "
                f"that could run code when unpickled; nothing from it was executed. Do not load "
                f"it unless you wrote it yourself; {remedy}") from None
        cause = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        raise FileReadError(f"{what} {path} is corrupt (not a torch file"
                            f"{': ' + cause.group(1).strip() if cause else ''}); {remedy}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as e:
        first = re.split(r"(?<=\.)\s", str(e).strip(), maxsplit=1)[0][:160] or type(e).__name__
        raise FileReadError(f"{what} {path} is truncated or corrupt ({first}); {remedy}") from None
