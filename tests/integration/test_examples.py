"""Every example runs, as the README tells users to run it, and leaves no kernel behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(180)

#: Examples that need a Datalayer account run against the stand-in (tests/integration/test_sdk_compat.py).
DATALAYER_EXAMPLES = {"datalayer_sdk_code.py"}
EXAMPLES = sorted(path.name for path in (ROOT / "examples").glob("*.py") if path.name not in DATALAYER_EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DLEXEC_BACKEND", None)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                            timeout=170, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip(), "the example printed nothing"
