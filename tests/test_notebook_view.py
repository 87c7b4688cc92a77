"""Executors in notebooks, executed for real with nbclient: progress bars and the live view.

Each notebook runs once per module (a kernel that starts an executor's kernels costs a few
seconds), with and without ipywidgets (hidden from the notebook's kernel through
``sys.modules``, as if it were not installed); the tests read its outputs and the messages
the kernel sent while it ran.
"""

from __future__ import annotations

import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(180)

HIDE_WIDGETS = 'import sys\nsys.modules["ipywidgets"] = None  # as if ipywidgets were not installed'

SETUP = """
import dlexec

def square(x):
    return x * x

ex = dlexec.DatalayerExecutor(2)
"""

PROGRESS = "print(sum(ex.map(square, range(10), progress=True)))"


class RecordingClient(NotebookClient):
    """A NotebookClient that keeps every IOPub message it processes, per cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages: list[tuple[int, dict]] = []

    def process_message(self, msg, cell, cell_index):
        self.messages.append((cell_index, msg))
        return super().process_message(msg, cell, cell_index)


def run_notebook(cells: list[str], path, *, widgets: bool) -> RecordingClient:
    """Execute ``cells`` in a fresh kernel of this Python; errors are kept as outputs."""
    sources = ([] if widgets else [HIDE_WIDGETS]) + [textwrap.dedent(c).strip() for c in cells]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = RecordingClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                             resources={"metadata": {"path": str(path)}})
    client.execute()
    client.offset = 0 if widgets else 1  # index of the first of ``cells`` in the notebook
    return client


def outputs(client: RecordingClient, index: int) -> list[dict]:
    """The outputs of ``cells[index]``."""
    return client.nb.cells[client.offset + index].outputs


def text_of(outs: list[dict]) -> str:
    """Everything a list of outputs shows as text: streams, plain text, tracebacks."""
    parts = []
    for out in outs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def assert_no_error(client: RecordingClient) -> None:
    for cell in client.nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {cell.source!r} failed:\n{text_of(errors)}"


@pytest.fixture(scope="module")
def without_widgets(tmp_path_factory):
    return run_notebook([SETUP, PROGRESS, "ex.shutdown()"], tmp_path_factory.mktemp("nb-plain"), widgets=False)


@pytest.fixture(scope="module")
def with_widgets(tmp_path_factory):
    pytest.importorskip("ipywidgets", reason="ipywidgets is in the test extra")
    return run_notebook([SETUP, PROGRESS, "ex.shutdown()"], tmp_path_factory.mktemp("nb-widgets"), widgets=True)


# -- progress=True ----------------------------------------------------------------------------------


def test_progress_without_ipywidgets_is_a_text_bar_and_no_warning(without_widgets):
    assert_no_error(without_widgets)
    shown = text_of(outputs(without_widgets, 1))
    assert "TqdmWarning" not in shown and "IProgress" not in shown, shown
    assert "10/10" in shown and "285" in shown  # the text bar, then the result
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs(without_widgets, 1))


def test_progress_with_ipywidgets_is_a_widget(with_widgets):
    assert_no_error(with_widgets)
    outs = outputs(with_widgets, 1)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)
    shown = text_of(outs)
    assert "TqdmWarning" not in shown and "285" in shown
