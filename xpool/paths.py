"""Where relative project paths (`results/`, `data/`, `cache/`) point.

A Jupyter kernel starts in the notebook's folder (`notebooks/`), the command line in whatever
folder the user is in; both must find the same `results/<profile>`. So a relative path is taken
against the project root, not the current directory:

1. `$XPOOL_ROOT` when set (tests and unusual layouts point it elsewhere);
2. else the checkout that holds the imported `xpool` package (a folder with `pyproject.toml`
   and `xpool/`, which is what `make setup`'s editable install gives);
3. else (a non-editable install in site-packages) the current directory.

Absolute paths are returned unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from xpool.errors import ConfigError

ROOT_ENV = "XPOOL_ROOT"
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The folder relative project paths resolve against (absolute)."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise ConfigError(f"environment variable {ROOT_ENV}={env!r} is not a folder: point it "
                              f"at the project root (the folder with results/, data/, cache/) or "
                              f"unset it")
        return root.resolve()
    if (_PACKAGE_PARENT / "pyproject.toml").is_file() and (_PACKAGE_PARENT / "xpool").is_dir():
        return _PACKAGE_PARENT
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike[str]) -> Path:
    """`path` against the project root when relative; unchanged when absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def shown(path: str | os.PathLike[str]) -> str:
    """`path` as printed in notebooks and logs: relative to the project root when inside it (so
    executed notebooks read the same in every clone), else absolute."""
    p = resolve(path)
    try:
        return str(p.relative_to(project_root()))
    except ValueError:
        return str(p)
