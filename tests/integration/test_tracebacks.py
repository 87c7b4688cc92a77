"""A remote traceback reads as the same error raised locally would (README: Errors look local).

In a terminal: the same frames, lines and ``^^^`` markers (Python >= 3.11) as the local
error, whether Python prints it (the C printer of an uncaught error) or the ``traceback``
module does. In IPython and Jupyter: the arrow and the numbered context on the failing
line, for functions defined in notebook cells and in files.
"""

from __future__ import annotations

import json
import re
import sys
import traceback

import pytest

from dlexec import serialization
from dlexec.tracebacks import rebuild_exception

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(300)

HELPERS = '''\
import functools


def tagged(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper


class Box:
    def __init__(self, items):
        self.items = items

    def ratio(self, i):
        return self.items[i] / (self.items[i] -
                                self.items[i])


@tagged
def decorated(d):
    total = 0
    for key in d:
        total += d[key]["value"]
    return total


def parse(text):
    try:
        return int(text)
    except ValueError as exc:
        raise RuntimeError(f"cannot parse {text!r}") from exc
'''

SCRIPT = '''\
import sys
import traceback

from dlexec import DatalayerExecutor
from helpers import Box, decorated, parse


def inner(d, k):
    return d["a"] + d[k] * 2


def outer(d):
    x = 1
    return x + inner(d,
                     "missing")


def nested(n):
    squares = [(lambda v: v * v if v < n else v / 0)(v) for v in range(n + 1)]
    return squares


CASES = [
    (outer, ({"a": 1},)),
    (nested, (3,)),
    (Box([1, 2]).ratio, (0,)),
    (decorated, ({"a": {"value": 1}, "b": {}},)),
    (parse, ("x",)),
]


def run(where, ex=None):
    for fn, args in CASES:
        try:
            if where == "local":
                fn(*args)
            else:
                ex.submit(fn, *args).result()
        except Exception as exc:
            print("=== traceback module", file=sys.stderr)
            traceback.print_exception(exc)
            print("=== C printer", file=sys.stderr)
            sys.__excepthook__(type(exc), exc, exc.__traceback__)
        else:
            raise AssertionError(f"{fn} did not raise")


if sys.argv[1] == "local":
    run("local")
else:
    with DatalayerExecutor(1) as ex:
        run("remote", ex)
'''


def user_frames(text: str) -> str:
    """The traceback text without the frames that differ between a local call and a remote
    one: the script's own (``run`` and the top level), and ``Future.result()``'s (``TaskFuture``'s too)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("  File "):
            skipping = line.endswith(("in <module>", "in run")) or any(
                future in line for future in ("concurrent/futures/_base.py", "dlexec/futures.py"))
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def test_a_remote_traceback_prints_as_the_local_one_in_a_terminal(backend, tmp_path):
    (tmp_path / "helpers.py").write_text(HELPERS)
    script = tmp_path / "script.py"
    results = {}
    for where in ("local", "remote"):
        script.write_text(SCRIPT)
        results[where] = _run(script, where, tmp_path)
    local, remote = (user_frames(results[where]) for where in ("local", "remote"))
    assert local.count("=== C printer") == 5 and "^^^" in local and "~^^^" in local
    assert remote == local


def _run(script, where, tmp_path) -> str:
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, str(script), where], capture_output=True, text=True, timeout=120,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


# -- IPython and Jupyter ---------------------------------------------------------------------

CELL_FUNCTION = '''\
import math


def f(x):
    y = x + 1
    return math.sqrt(-y)

def g(values):
    return f(values[0]) + 1
'''

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _frame_blocks(traceback_lines: list[str], start: str) -> list[str]:
    """The frame blocks of an IPython traceback (ANSI codes removed) whose header starts with
    ``start``, in order, each as its text (the first block of an exception follows the
    exception's header lines)."""
    text = ANSI.sub("", "\n".join(traceback_lines))
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").splitlines()
        for index, line in enumerate(lines):
            if line.startswith(start):
                blocks.append("\n".join(lines[index:]))
                break
    return blocks


def test_a_remote_traceback_points_at_the_failing_line_in_a_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    (tmp_path / "helpers.py").write_text(HELPERS)
    cells = [
        "from dlexec import DatalayerExecutor\nex = DatalayerExecutor(1)",
        CELL_FUNCTION,                                   # In[2]: the error is on its line 6
        "import helpers",
        "ex.submit(g, [1]).result()",                    # remote, then the same locally
        "g([1])",
        "ex.submit(helpers.Box([1, 2]).ratio, 0).result()",
        "helpers.Box([1, 2]).ratio(0)",
        "ex.submit(helpers.parse, 'x').result()",
        "ex.shutdown()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = nbclient.NotebookClient(nb, timeout=180, allow_errors=True, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = []
    for cell in nb.cells[3:7]:
        (error,) = [out for out in cell.outputs if out.output_type == "error"]
        errors.append(error.traceback)
    (chained,) = [out.traceback for out in nb.cells[7].outputs if out.output_type == "error"]
    assert not [out for out in nb.cells[8].outputs if out.output_type == "error"]
    remote_cell, local_cell, remote_file, local_file = errors

    local = _frame_blocks(local_cell, "Cell In[2]")
    assert [block.splitlines()[0] for block in local] == ["Cell In[2], line 9, in g(values)",
                                                          "Cell In[2], line 6, in f(x)"]
    assert re.search(r"\n----> 6 +return math.sqrt\(-y\)$", local[1])
    assert _frame_blocks(remote_cell, "Cell In[2]") == local, json.dumps(
        [ANSI.sub("", line) for line in remote_cell], indent=1)

    local = _frame_blocks(local_file, "File " + str(tmp_path))
    assert local and re.search(r"\n---> 16 +return self.items\[i\] / \(self.items\[i\] -\n", local[-1])
    assert _frame_blocks(remote_file, "File " + str(tmp_path)) == local, json.dumps(
        [ANSI.sub("", line) for line in remote_file], indent=1)

    # A cause's frames point where it was raised (IPython shows a local cause at the line its
    # frame reached last, the `raise ... from`; remote frames are the cause's own).
    cause, error = _frame_blocks(chained, "File " + str(tmp_path))
    assert cause.splitlines()[0].endswith("helpers.py:30, in parse(text)")
    assert re.search(r"\n---> 30 +return int\(text\)(\n|$)", cause)
    assert error.splitlines()[0].endswith("helpers.py:32, in parse(text)")
    assert re.search(r"\n---> 32 +raise RuntimeError\(", error)


# -- the rebuilt frames themselves (no kernel: the client's half of the round trip) -----------


def _round_trip(exc: BaseException) -> BaseException:
    info, frames = serialization.dump_exception(exc)
    return rebuild_exception(json.loads(json.dumps(info)), frames)


def _raise_binary():
    values = {"a": 1}
    return values["a"] + values["b"] * 2


def _raise_multiline():
    return sum([1,
                2], start="x")


def test_rebuilt_frames_have_the_lines_and_positions_of_the_originals():
    for fn in (_raise_binary, _raise_multiline):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            original = exc
        rebuilt = _round_trip(original)
        expected = traceback.extract_tb(original.__traceback__)
        got = traceback.extract_tb(rebuilt.__traceback__)
        assert [(f.filename, f.lineno, f.name, f.line) for f in got] == [
            (f.filename, f.lineno, f.name, f.line) for f in expected]
        if sys.version_info >= (3, 11):
            assert [(f.end_lineno, f.colno, f.end_colno) for f in got] == [
                (f.end_lineno, f.colno, f.end_colno) for f in expected]
        assert traceback.format_exception(rebuilt) == traceback.format_exception(original)
        code = rebuilt.__traceback__.tb_next.tb_frame.f_code
        assert code.co_firstlineno == original.__traceback__.tb_next.tb_frame.f_code.co_firstlineno


def test_a_remote_error_that_cannot_be_rebuilt_has_the_same_frames_too():
    try:
        _raise_binary()
    except Exception as exc:  # noqa: BLE001
        original = exc
    info, _ = serialization.dump_exception(original)
    error = rebuild_exception(json.loads(json.dumps(info)), [])  # as when its class is missing here
    assert type(error).__name__ == "RemoteError"
    expected = traceback.format_tb(original.__traceback__)
    assert traceback.format_tb(error.__traceback__) == expected

