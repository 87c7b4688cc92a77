"""DatalayerExecutor on real local kernels: what travels, errors, crashes, output, options."""

from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

import dlexec
from dlexec import DatalayerExecutor, InitializerFailed, RemoteError, TaskFuture, WorkerLostError

from ..conftest import run_script

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("backend")]


@pytest.fixture(scope="module")
def executor(backend):
    """The module's shared executor, on the backend of this run of the module."""
    with DatalayerExecutor(max_workers=2) as ex:
        yield ex


def square(x):
    return x * x


def pid_after(delay=0.0):
    time.sleep(delay)
    return os.getpid()


def add(a, b=0, *, c=0):
    return a + b + c


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def raise_chained(message):
    try:
        {}["missing"]
    except KeyError as exc:
        raise ValueError(message) from exc


def return_generator():
    return (i for i in range(3))


class _GeneratorError(Exception):
    def __init__(self):
        super().__init__("carries a generator")
        self.generator = (i for i in range(3))


def raise_unpicklable():
    raise _GeneratorError()


def segfault():
    import ctypes

    ctypes.string_at(0)


def hard_exit(code):
    os._exit(code)


def print_lines(n):
    for i in range(n):
        print(f"line {i} from the kernel", flush=True)
    import sys

    print("to stderr", file=sys.stderr, flush=True)
    return n


def failing_initializer():
    raise ValueError("bad initializer")


class Counter:
    def __init__(self, start):
        self.start = start

    def bump(self, n):
        return self.start + n


# -- basics ------------------------------------------------------------------------------


def test_submit_returns_a_task_future_with_its_result(executor):
    future = executor.submit(add, 1, 2, c=3)
    assert isinstance(future, TaskFuture)
    assert future.result(timeout=30) == 6
    assert future.runtime_id and future.started_at <= future.finished_at


def test_tasks_run_in_kernels_not_here(executor):
    assert executor.submit(pid_after).result() != os.getpid()


def test_map_preserves_order_with_several_iterables(executor):
    assert list(executor.map(add, range(20), range(20, 40))) == [a + b for a, b in zip(range(20), range(20, 40))]


def test_map_with_chunksize_runs_each_chunk_as_one_call(executor):
    pids = list(executor.map(pid_after, [0.0] * 12, chunksize=4))
    chunks = [pids[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(chunk)) == 1 for chunk in chunks)
    assert list(executor.map(square, range(1000), chunksize=100)) == [x * x for x in range(1000)]


def test_lambdas_closures_bound_methods_and_local_classes_travel(executor):
    factor = 3

    def scale(x):
        return x * factor

    class Local:
        def __init__(self, v):
            self.v = v

        def twice(self):
            return Local(self.v * 2)

    assert executor.submit(lambda x: x + 1, 1).result() == 2
    assert executor.submit(scale, 2).result() == 6
    assert executor.submit(Counter(10).bump, 5).result() == 15
    result = executor.submit(Local(4).twice).result()
    assert type(result).__name__ == "Local" and result.v == 8


def test_functions_and_classes_from_main_travel_by_value(tmp_path):
    result = run_script(
        """
        import dataclasses
        from dlexec import DatalayerExecutor

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        def norm2(p):
            return Point(p.x * p.x, p.y * p.y)

        if __name__ == "__main__":
            with DatalayerExecutor(1) as ex:
                print(ex.submit(norm2, Point(2, 3)).result())
                print(list(ex.map(lambda p: p.x + p.y, [Point(1, 2), Point(3, 4)])))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Point(x=4, y=9)" in result.stdout and "[3, 7]" in result.stdout


def test_numpy_arrays_round_trip(executor):
    array = np.random.default_rng(0).random((256, 1024))
    back = executor.submit(np.multiply, array, 2.0).result()
    np.testing.assert_array_equal(back, array * 2.0)


# -- errors --------------------------------------------------------------------------------


def test_remote_exception_keeps_type_args_cause_and_remote_frames(executor):
    future = executor.submit(raise_chained, "bad value")
    with pytest.raises(ValueError, match="bad value") as info:
        future.result()
    exc = info.value
    assert exc.args == ("bad value",)
    assert isinstance(exc.__cause__, KeyError)
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames[-1].name == "raise_chained"
    assert frames[-1].line == "raise ValueError(message) from exc"
    assert frames[-1].filename == __file__
    assert isinstance(future.exception(), ValueError)
    # the pool is still usable
    assert executor.submit(square, 3).result() == 9


def test_result_that_cannot_be_serialized_fails_only_its_future(executor):
    with pytest.raises(TypeError, match="cannot pickle 'generator'") as info:  # the error itself, as PPE
        executor.submit(return_generator).result()
    assert "could not be pickled in the kernel" in info.value.__notes__[-1]
    assert executor.submit(square, 4).result() == 16


def test_exception_that_cannot_travel_becomes_remote_error(executor):
    with pytest.raises(RemoteError) as info:
        executor.submit(raise_unpicklable).result()
    error = info.value
    assert error.type_name.endswith("_GeneratorError")
    assert "carries a generator" in str(error)
    assert "raise _GeneratorError()" in error.traceback_text
    assert traceback.extract_tb(error.__traceback__)[-1].name == "raise_unpicklable"
    assert executor.submit(square, 5).result() == 25


def test_unpicklable_callable_fails_its_future_not_the_pool(executor):
    generator = (i for i in range(3))
    future = executor.submit(list, generator)
    with pytest.raises(Exception, match="generator"):
        future.result()
    assert executor.submit(square, 6).result() == 36


def test_missing_module_error_names_the_module(executor):
    future = executor.submit(__import__, "a_module_that_does_not_exist")
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        future.result()


@pytest.mark.parametrize(
    ("task", "expected"),
    [(segfault, "SIGSEGV"), (lambda: hard_exit(3), "exited with code 3")],
    ids=["segfault", "os._exit"],
)
def test_a_dying_kernel_breaks_the_pool_with_a_clear_error(task, expected, backend):
    if backend == "jupyter":  # the server only says that its kernel died
        expected = "died"
    with DatalayerExecutor(1) as ex:
        assert ex.submit(square, 2).result() == 4
        doomed = ex.submit(task)
        queued = ex.submit(sleep_and_return, 0, "never")
        for future in (doomed, queued):
            with pytest.raises(WorkerLostError, match=expected) as info:
                future.result(timeout=30)
            assert isinstance(info.value, BrokenProcessPool) and isinstance(info.value, BrokenExecutor)
            assert info.value.runtime_id and expected in info.value.reason
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 1)
        with pytest.raises(BrokenProcessPool):
            ex.map(square, [1])
    if expected == "SIGSEGV" and backend == "local":  # faulthandler's report names the user's frame
        assert "Fatal Python error" in info.value.reason and "segfault" in info.value.reason


# -- initializer, max_tasks_per_child -----------------------------------------------------------


def test_failing_initializer_breaks_the_pool():
    with DatalayerExecutor(1, initializer=failing_initializer) as ex:
        future = ex.submit(square, 2)
        with pytest.raises(InitializerFailed, match="bad initializer") as info:
            future.result(timeout=60)
        assert isinstance(info.value, BrokenProcessPool)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 3)
        with pytest.raises(BrokenProcessPool):
            ex.map(square, [3])


def test_unserializable_initializer_is_refused_at_once():
    generator = (i for i in range(2))
    with pytest.raises(TypeError, match="initializer"):
        DatalayerExecutor(1, initializer=next, initargs=(generator,))


def test_max_tasks_per_child_replaces_the_kernel():
    with DatalayerExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid_after).result() for _ in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert len(set(pids)) == 3


# -- waiting, cancelling, shutdown -----------------------------------------------------------------


def test_shutdown_cancel_futures_cancels_what_has_not_started():
    ex = DatalayerExecutor(1)
    running = ex.submit(sleep_and_return, 1.0, "done")
    queued = [ex.submit(square, i) for i in range(30)]
    while not running.running():
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() == "done"
    cancelled = [f for f in queued if f.cancelled()]
    assert cancelled, "nothing was cancelled"
    for future in cancelled:
        with pytest.raises(CancelledError):
            future.result()
    assert all(f.done() for f in queued)


def test_kernels_start_lazily_and_are_reused():
    with DatalayerExecutor(4) as ex:
        assert ex._pool.workers == []
        first = ex.submit(pid_after).result()
        assert len(ex._pool.workers) == 1
        assert {ex.submit(pid_after).result() for _ in range(5)} == {first}


# -- output, transport -------------------------------------------------------------------------


def test_task_output_reaches_the_callers_stdout_and_stderr(executor, capsys):
    assert executor.submit(print_lines, 3).result() == 3
    deadline = time.monotonic() + 5
    out = err = ""
    while time.monotonic() < deadline:
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        if "line 2 from the kernel" in out and "to stderr" in err:
            break
        time.sleep(0.05)
    assert "line 0 from the kernel\nline 1 from the kernel\nline 2 from the kernel\n" in out
    assert "to stderr" in err


def test_mp_context_is_accepted_and_ignored():
    import multiprocessing

    with DatalayerExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert ex.submit(square, 7).result() == 7 * 7


def test_default_max_workers_is_the_cpu_count():
    from loky import cpu_count

    ex = DatalayerExecutor()
    assert ex.max_workers == cpu_count()
    ex.shutdown()


def test_repr_says_what_the_pool_does(executor):
    executor.submit(square, 1).result()
    assert "runtimes ready" in repr(executor) and "DatalayerExecutor" in repr(executor)


def test_a_reply_that_cannot_be_handled_fails_its_futures_instead_of_hanging(executor, monkeypatch):
    def broken_outcome(*args):
        raise ValueError("simulated client bug")

    monkeypatch.setattr("dlexec.pool.results._outcome", broken_outcome)
    with pytest.raises(RuntimeError, match="could not handle the reply") as info:
        executor.submit(square, 2).result(timeout=30)
    assert isinstance(info.value.__cause__, ValueError)
    monkeypatch.undo()
    assert executor.submit(square, 3).result(timeout=30) == 9
