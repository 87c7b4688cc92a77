"""Every Python snippet in the README runs as written, in a fresh process, and stops its kernels.

A snippet that cannot run here says so in an HTML comment on the line before it
(``<!-- README test: not run, <why> -->``); one that is meant to fail names its error
(``<!-- README test: raises RuntimeError -->``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(180)

BLOCK = re.compile(r"(?:<!-- README test: (?P<marker>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def snippets() -> list:
    text = (ROOT / "README.md").read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        found.append(pytest.param(match["code"], match["marker"] or "", id=f"line{line}"))
    return found


ALL = snippets()
SNIPPETS = [param for param in ALL if not param.values[1].startswith("not run, ")]


def test_the_readme_runs_its_snippets_but_those_that_need_a_server_or_an_account():
    assert len(SNIPPETS) >= 8
    for param in ALL:
        marker = param.values[1]
        assert marker == "" or marker.startswith(("raises ", "not run, ")), marker
    not_run = [param.values[1] for param in ALL if param not in SNIPPETS]
    assert all("needs a Jupyter Server" in marker or "needs a Datalayer account" in marker for marker in not_run)
    assert len(not_run) == 2, not_run  # the README says "except the two marked"


@pytest.mark.parametrize("code,marker", SNIPPETS)
def test_snippet_runs_as_written(code, marker, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DLEXEC_SNAPSHOT_DIR=str(tmp_path / "snapshots"))
    env.pop("DLEXEC_BACKEND", None)
    (tmp_path / "snippet.py").write_text(code)
    result = subprocess.run([sys.executable, "snippet.py"], capture_output=True, text=True, timeout=170,
                            cwd=tmp_path, env=env)
    output = result.stdout[-2000:] + result.stderr[-4000:]
    if marker.startswith("raises "):
        error = marker.split()[1]
        assert result.returncode == 1, output
        assert result.stderr.strip().splitlines()[-1].startswith(f"{error}:"), output
    else:
        assert result.returncode == 0, output
    assert "Traceback" not in result.stderr or marker.startswith("raises "), output
