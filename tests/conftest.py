"""Fixtures: real local kernels, started few and shared, and process checks for leak tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dlexec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def executor():
    """One two-kernel executor shared by a test module (kernels are costly to start)."""
    with dlexec.DatalayerExecutor(max_workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def runtime():
    """One RuntimeService shared by a test module."""
    with dlexec.RuntimeService("test-runtime") as rt:
        yield rt


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def wait_gone(pids, timeout: float = 10.0) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive:
            time.sleep(0.1)
    return alive


def run_script(code: str, tmp_path: Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` as a script in a fresh interpreter, with dlexec importable."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path, **kwargs)


def kernel_pids(text: str) -> list[int]:
    """Pids printed by a script as lines ``PID <n>``."""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("PID ")]
