"""Executors in notebooks, executed for real with nbclient: progress bars and the live view.

Each notebook runs once per module (a kernel that starts an executor's kernels costs a few
seconds), with and without ipywidgets (hidden from the notebook's kernel through
``sys.modules``, as if it were not installed); the tests read its outputs and the messages
the kernel sent while it ran. Then the view's parts in this process: the maps' counts, paid
runtimes (credits, no token), a failing view, an executor that is garbage-collected.
"""

from __future__ import annotations

import gc
import itertools
import logging
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

from dlexec import DatalayerExecutor, view

pytestmark = pytest.mark.timeout(180)

HIDE_WIDGETS = 'import sys\nsys.modules["ipywidgets"] = None  # as if ipywidgets were not installed'

SETUP = """
import os, time
import dlexec
from dlexec import view

RELEASE = os.path.abspath("release")  # the held tasks wait for this file

def square(x):
    return x * x

def held(x):
    deadline = time.monotonic() + 60
    while x and not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x

ex = dlexec.DatalayerExecutor(2)
"""

VIEW = "ex"  # the last expression of a cell: the live view

PROGRESS = "print(sum(ex.map(square, range(10), progress=True)))"

# The first task returns, the others wait: the cell waits (bounded) until the view has been
# updated with that state, then releases them. (With a timeout, tasks go one at a time: not
# batched together, as tasks known to be short would be.)
LIVE = """
results = ex.options(timeout=120).map(held, range(6))
assert next(results) == 0
monitor = view.monitor_of(ex)
deadline = time.monotonic() + 60
while "1/6 tasks" not in (monitor.html or "") and time.monotonic() < deadline:
    time.sleep(0.05)
open(RELEASE, "w").close()
print(sum(results), monitor.updates > 0)
"""

SHUTDOWN = """
ex.shutdown()
print("monitor stopped:", view.monitor_of(ex).join(60))
"""

CELLS = [SETUP, VIEW, PROGRESS, LIVE, SHUTDOWN]


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


def cell_index(client: RecordingClient, source: str) -> int:
    """The index in the notebook of the cell ``source`` of ``CELLS``."""
    return client.offset + CELLS.index(source)


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
    return run_notebook(CELLS, tmp_path_factory.mktemp("nb-plain"), widgets=False)


@pytest.fixture(scope="module")
def with_widgets(tmp_path_factory):
    return run_notebook(CELLS, tmp_path_factory.mktemp("nb-widgets"), widgets=True)


# -- progress=True ----------------------------------------------------------------------------------


def test_progress_without_ipywidgets_is_a_text_bar_and_no_warning(without_widgets):
    assert_no_error(without_widgets)
    shown = text_of(outputs(without_widgets, CELLS.index(PROGRESS)))
    assert "TqdmWarning" not in shown and "IProgress" not in shown, shown
    assert "10/10" in shown and "285" in shown  # the text bar, then the result
    outs = outputs(without_widgets, CELLS.index(PROGRESS))
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)


def test_progress_with_ipywidgets_is_a_widget(with_widgets):
    assert_no_error(with_widgets)
    outs = outputs(with_widgets, CELLS.index(PROGRESS))
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outs)
    shown = text_of(outs)
    assert "TqdmWarning" not in shown and "285" in shown


# -- the live view ----------------------------------------------------------------------------------


def test_view_without_ipywidgets_is_html_updated_in_place_while_a_map_runs(without_widgets):
    client = without_widgets
    assert_no_error(client)
    (shown,) = outputs(client, CELLS.index(VIEW))
    assert shown.output_type == "display_data" and "application/vnd.jupyter.widget-view+json" not in shown.data
    (display_id,) = [msg["content"].get("transient", {}).get("display_id") for cell, msg in client.messages
                     if cell == cell_index(client, VIEW) and msg["msg_type"] == "display_data"]
    assert display_id, "the view is shown with a display id, to be updated in place"
    updates = [(cell, msg["content"]["data"]["text/html"]) for cell, msg in client.messages
               if msg["msg_type"] == "update_display_data"
               and msg["content"].get("transient", {}).get("display_id") == display_id]
    live = cell_index(client, LIVE)
    # While the map ran (its cell executing): one task done, the others running.
    assert any(cell == live and "1/6 tasks" in page and ": running" in page for cell, page in updates), updates
    # nbclient applied the updates to the output in place: it shows the end, not the start.
    final = shown.data["text/html"]
    assert "shut down" in final and "6/6 tasks" in final and "10/10 tasks" in final
    assert "shut down" in shown.data["text/plain"]
    assert "monitor stopped: True" in text_of(outputs(client, CELLS.index(SHUTDOWN)))
    assert "True" in text_of(outputs(client, CELLS.index(LIVE)))


def test_view_with_ipywidgets_is_a_widget_updated_while_a_map_runs(with_widgets):
    client = with_widgets
    assert_no_error(client)
    (shown,) = outputs(client, CELLS.index(VIEW))
    model_id = shown.data["application/vnd.jupyter.widget-view+json"]["model_id"]
    values = []  # (cell, the view's HTML) from the widget's state messages, in order
    for cell, msg in client.messages:
        content = msg["content"]
        if msg["msg_type"] in ("comm_open", "comm_msg") and content.get("comm_id") == model_id:
            state = content.get("data", {}).get("state", {})
            if "value" in state:
                values.append((cell, state["value"]))
    assert values and "dlexec-view" in values[0][1]
    live = cell_index(client, LIVE)
    assert any(cell == live and "1/6 tasks" in page and ": running" in page for cell, page in values), values
    final = values[-1][1]
    assert "shut down" in final and "6/6 tasks" in final and "10/10 tasks" in final
    # The widget's last state, as nbclient stores it with the notebook.
    state = client.nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"][model_id]
    assert state["state"]["value"] == final
    assert "monitor stopped: True" in text_of(outputs(client, CELLS.index(SHUTDOWN)))


# -- in this process: the maps' progress, paid runtimes, failures ----------------------------------


def square(x):
    return x * x


def fail_if_odd(x):
    if x % 2:
        raise ValueError(x)
    return x


class Recorder(view._View):
    """A view that keeps every page the monitor sends it."""

    def __init__(self, fail: BaseException | None = None):
        self.pages: list[str] = []
        self.fail = fail

    def update(self, html: str, text: str) -> None:
        self.pages.append(html)
        if self.fail is not None:
            raise self.fail


def watch(ex) -> tuple[Recorder, view._Monitor]:
    recorder = Recorder()
    monitor = view._monitor(ex._pool)
    monitor.add(ex._pool, recorder, view.render(ex._pool))
    return recorder, monitor


def last_map(ex):
    return view.maps_of(ex._pool)[-1]


def wait_finished(record, timeout: float = 30):
    import time

    deadline = time.monotonic() + timeout
    while not record.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    return record


def test_a_failing_map_counts_done_failed_and_cancelled(executor):
    with pytest.raises(ValueError):
        list(executor.map(fail_if_odd, range(4)))
    record = wait_finished(last_map(executor))  # the tasks after the failure: cancelled, or run
    assert record.finished and record.total == 4 and record.failed >= 1
    assert record.done + record.failed + record.cancelled == 4
    assert "map(fail_if_odd)" in executor._repr_html_() and "failed" in executor._repr_html_()


def test_a_chunked_map_counts_its_chunks(executor):
    assert list(executor.map(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    record = wait_finished(last_map(executor))
    assert (record.total, record.done, record.chunksize) == (4, 4, 3)
    assert "4/4 tasks (chunks of 3)" in executor._repr_html_()


def test_a_map_of_unknown_length_ends_when_its_results_are_closed(executor):
    results = executor.map(square, itertools.count(), buffersize=3)
    assert next(results) == 0
    record = last_map(executor)
    assert record.total is None and not record.finished
    results.close()
    wait_finished(record)
    assert record.finished and record.total == record.submitted >= 3


def test_a_map_refused_at_submit_is_not_shown():
    ex = DatalayerExecutor(1)  # kernels start on demand: none here
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(square, range(3))
    assert view.maps_of(ex._pool) == ()


def test_view_of_paid_runtimes_shows_credits_and_no_token(standin, monkeypatch):
    for key, value in standin.env_vars().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DLEXEC_BACKEND", "datalayer")
    with DatalayerExecutor(1) as ex:
        recorder, monitor = watch(ex)
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
        tokens = [standin.token] + [r["token"] for r in standin.live_runtimes()]
        pages = [ex._repr_html_(), repr(ex), view.render_text(ex._pool)]
    assert monitor.join(60)
    pages += recorder.pages
    for page in pages:
        for token in tokens:
            assert token not in page
    credits = ex.stats().credits
    assert credits is not None and credits > 0
    final = recorder.pages[-1]
    assert "shut down" in final and f"{credits:.2f} credits" in final and "4/4 tasks" in final
    assert len(tokens) == 2 and all(len(token) >= 8 for token in tokens)


def test_a_failing_view_breaks_nothing_and_stops_at_shutdown(monkeypatch, caplog):
    monkeypatch.setattr(view, "IDLE_SECONDS", 0.2)
    with DatalayerExecutor(1) as ex:
        broken = Recorder(fail=KeyboardInterrupt())  # even that: caught in the view's thread
        monitor = view._monitor(ex._pool)
        with caplog.at_level(logging.WARNING, logger="dlexec.view"):
            monitor.add(ex._pool, broken, view.render(ex._pool))
            good, _ = watch(ex)
            assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
    assert monitor.join(60) and broken.pages and monitor.failures >= 1
    assert len([r for r in caplog.records if r.name == "dlexec.view"]) == 1  # said once
    assert "shut down" in good.pages[-1]  # the other view was updated all along


def test_a_collected_executor_stops_its_view():
    ex = DatalayerExecutor(1)
    assert ex.submit(square, 3).result() == 9
    recorder, monitor = watch(ex)
    del ex
    gc.collect()  # the executor's finalizer shuts it down; the view's thread does not keep it alive
    assert monitor.join(60)
    assert "shut down" in recorder.pages[-1]
