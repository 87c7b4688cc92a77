"""RuntimeService (the seed API) on a real local kernel."""

from __future__ import annotations

import os
import stat
import time

import nbformat
import numpy as np
import pytest

from dlexec import ExecutionError, ExecutionResponse, RuntimeService, RuntimeSnapshotModel

from ..conftest import wait_gone

pytestmark = pytest.mark.timeout(90)


def test_execute_code_collects_outputs(runtime):
    response = runtime.execute_code("print('hello')\nimport sys; print('oops', file=sys.stderr)\n6 * 7")
    assert isinstance(response, ExecutionResponse)
    assert response.success and response.message == "Code executed successfully"
    assert response.stdout == "hello\n"
    assert response.stderr == "oops\n"
    assert response.result == {"text/plain": "42"}
    assert [o["output_type"] for o in response.execute_response] == ["stream", "stream", "execute_result"]


def test_a_kernel_error_makes_success_false_and_is_visible(runtime):
    response = runtime.execute_code("1 / 0")
    assert not response.success
    assert response.message == "ZeroDivisionError: division by zero"
    assert response.error["ename"] == "ZeroDivisionError"
    assert "ZeroDivisionError" in response.stderr and "\x1b[" not in response.stderr
    # and the kernel goes on
    assert runtime.execute_code("1 + 1").success


def test_variables_in_and_output_out(runtime):
    array = np.arange(10.0)
    value = runtime.execute_code("total = float((a * factor).sum())", variables={"a": array, "factor": 2},
                                 output="total")
    assert value == 90.0
    runtime.set_variable("fn", lambda x: x + 1)
    assert runtime.execute_code("y = fn(41)", output="y") == 42
    np.testing.assert_array_equal(runtime.get_variable("a"), array)


def test_missing_variable_is_none_and_bad_names_are_refused(runtime):
    assert runtime.get_variable("never_defined_anywhere") is None
    with pytest.raises(ValueError, match="identifiers"):
        runtime.set_variables({"not a name": 1})


def test_output_of_failed_code_raises_with_the_response(runtime):
    with pytest.raises(ExecutionError, match="NameError") as info:
        runtime.execute_code("z = undefined_name", output="z")
    assert info.value.response.success is False


def test_timeout_interrupts_the_kernel(runtime):
    started = time.monotonic()
    response = runtime.execute_code("import time\nfor _ in range(300): time.sleep(0.1)", timeout=1.0)
    assert not response.success and "timed out after 1 s" in response.message
    assert "KeyboardInterrupt" in response.stderr
    # the loop was stopped: the kernel answers at once
    assert runtime.execute_code("'free'", timeout=5).result == {"text/plain": "'free'"}
    assert time.monotonic() - started < 15


def test_execute_file_runs_python_files(runtime, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("print('from file')\nfile_value = 5\n")
    response = runtime.execute_file(script)
    assert response.success and response.stdout == "from file\n"
    assert runtime.execute(str(script), output="file_value") == 5


def test_execute_file_runs_notebooks_cell_by_cell_and_stops_at_an_error(runtime, tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("cells = ['one']\nprint('cell 1')"),
        nbformat.v4.new_code_cell("cells.append('two')\nprint('cell 2')"),
        nbformat.v4.new_code_cell("raise RuntimeError('cell 3 fails')"),
        nbformat.v4.new_code_cell("cells.append('four')"),
    ]
    path = tmp_path / "steps.ipynb"
    nbformat.write(notebook, path)
    response = runtime.execute_file(path)
    assert not response.success and "cell 3 fails" in response.message
    assert response.stdout == "cell 1\ncell 2\n"
    assert runtime.get_variable("cells") == ["one", "two"]


def test_execute_file_of_a_missing_file_says_so(runtime, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        runtime.execute_file(tmp_path / "nope.py")


def test_execute_treats_text_as_code(runtime):
    assert runtime.execute("'just code'").success


def test_snapshot_then_start_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DLEXEC_SNAPSHOT_DIR", str(tmp_path))
    with RuntimeService("snap-source") as source:
        source.execute_code("import os\nkept = {'k': [1, 2]}\nsquare = lambda x: x * x\ngen = (i for i in [])")
        snapshot = source.create_snapshot(name="mine", description="test", stop=True)
        assert not source.is_alive()
    assert isinstance(snapshot, RuntimeSnapshotModel) and snapshot.name == "mine"
    assert set(snapshot.metadata["variables"]) == {"kept", "square"}
    assert "gen" in snapshot.metadata["skipped"]
    with RuntimeService("snap-target", snapshot="mine") as target:
        assert target.get_variable("kept") == {"k": [1, 2]}
        assert target.execute_code("r = square(9)", output="r") == 81


def test_lifecycle_properties_and_cleanup():
    service = RuntimeService("lifecycle")
    assert service.name == "lifecycle" and service.environment == "python-cpu-env"
    assert not service.is_started and service.terminate() is False
    with service:
        assert service.is_alive() and service.uid
        runtime = service.channel.runtime
        pid = runtime.pid
        # local kernels use Unix sockets in a private directory, with signed messages
        assert runtime._km.transport == "ipc"
        assert runtime._km.session.key
        directory = runtime.describe()["directory"]
        assert stat.S_IMODE(os.stat(directory).st_mode) & 0o777 == 0o700
    assert not service.is_alive()
    assert wait_gone([pid], timeout=5) == []
    assert not os.path.exists(directory)


def test_garbage_collected_service_stops_its_kernel():
    service = RuntimeService("collected").start()
    pid = service.channel.runtime.pid
    del service
    import gc

    gc.collect()
    assert wait_gone([pid], timeout=5) == []
