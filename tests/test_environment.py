"""The project's own plumbing: dependency lists agree, the CLI answers, imports stay offline."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def test_pyproject_lock_and_environment_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    in_env = {_name(r) for r in pip_section if not r.startswith("-")}
    assert in_env == declared, f"only in environment.yml: {in_env - declared}; only in pyproject: {declared - in_env}"

    lock_lines = [
        line for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pinned = {}
    for line in lock_lines:
        assert "==" in line, f"requirements.lock line not pinned exactly: {line}"
        pinned[_name(line)] = line.split("==")[1]
    missing = declared - set(pinned)
    assert not missing, f"packages named in pyproject.toml but not pinned in requirements.lock: {missing}"
    assert pinned["torch"] == "2.14.1" and pinned["torchvision"] == "0.29.1"


def test_cli_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "xpool.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ["synth", "download", "prepare", "extract-features", "train", "eval", "reproduce", "bench"]:
        assert cmd in out
        sub = subprocess.run(
            [sys.executable, "-m", "xpool.cli", cmd, "--help"], capture_output=True, text=True
        )
        assert sub.returncode == 0, sub.stderr
        assert "usage: xpool" in sub.stdout


def test_cli_reports_config_errors_without_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "xpool.cli", "train", "smoke", "train.lr_new=-1"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2
    assert "train.lr_new" in res.stderr and "Traceback" not in res.stderr


_PROBE = r"""
import socket, sys, pkgutil, importlib
attempts = []
real = socket.socket.connect
def spy(self, address):
    attempts.append(address)
    raise OSError("network disabled by test")
socket.socket.connect = spy
socket.create_connection = lambda *a, **k: (attempts.append(a), (_ for _ in ()).throw(OSError("no")))[1]
import xpool
for m in pkgutil.walk_packages(xpool.__path__, "xpool."):
    importlib.import_module(m.name)
print("ATTEMPTS", attempts)
"""


def test_importing_every_module_opens_no_socket():
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "ATTEMPTS []" in res.stdout, res.stdout
