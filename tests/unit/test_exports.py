"""The names users need come from ``dlexec`` itself, and importing dlexec stays lazy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Public name -> the module that defines it.
PUBLIC = {
    "Runtime": "dlexec.runtimes.base",
    "DatalayerClient": "dlexec.datalayer.client",
    "NotFoundError": "dlexec.errors",
    "UnknownNameError": "dlexec.errors",
    "TerminatedBySignal": "dlexec.errors",
    "progress": "dlexec._progress",
}


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_imports_from_dlexec(name):
    import importlib

    import dlexec

    value = getattr(dlexec, name)
    assert value is getattr(importlib.import_module(PUBLIC[name]), name)
    assert name in dlexec.__all__
    namespace: dict = {}
    exec(f"from dlexec import {name}", namespace)  # noqa: S102 - the import statement users write
    assert namespace[name] is value


def test_progress_is_the_function_not_a_module():
    out = _python("""
        import dlexec, dlexec._progress, types
        print(callable(dlexec.progress), isinstance(dlexec.progress, types.ModuleType))
        """)
    assert out.split() == ["True", "False"]


def test_import_dlexec_stays_lazy():
    out = _python("""
        import sys
        import dlexec
        print(sorted(m for m in ("jupyter_client", "joblib", "requests", "zmq", "websockets") if m in sys.modules))
        """)
    assert out.strip() == "[]"


def test_exceptions_keep_their_bases():
    from dlexec import NotFoundError, TerminatedBySignal, UnknownNameError

    assert issubclass(UnknownNameError, NotFoundError) and issubclass(UnknownNameError, ValueError)
    assert issubclass(TerminatedBySignal, SystemExit)
