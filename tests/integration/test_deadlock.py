"""CPython's ``ExecutorDeadlockTest`` (Lib/test/test_concurrent_futures/test_deadlock.py),
run against ``DatalayerExecutor``.

Each case makes something go wrong at one step of a task's life (pickling the call here,
unpickling it in the worker, running it, pickling the result there, unpickling it here)
and checks that the future fails with the expected error instead of hanging, and that
shutdown returns.

Where a ProcessPoolExecutor worker dies, a kernel may legitimately survive: an exception
or a ``sys.exit`` while the kernel unpickles the call or pickles the result stays inside
the kernel, so the future gets that very error and the pool goes on (checked with a next
task), where CPython expects ``BrokenProcessPool``. A real crash (a segfault) still
breaks the pool, as in CPython. The cases are kept in CPython's order, with its names.
"""

from __future__ import annotations

import pickle
import sys
import time
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from dlexec import DatalayerExecutor

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60  # CPython's support.LONG_TIMEOUT is 5 minutes; a kernel recovers far sooner


def _crash(delay=None):
    """A segfault (faulthandler's own, as CPython's test)."""
    if delay:
        time.sleep(delay)
    import faulthandler

    faulthandler.disable()
    faulthandler._sigsegv()


def _crash_with_data(data):
    _crash()


def _exit():
    sys.exit(1)


def _raise_error(error_type):
    raise error_type()


def _raise_error_ignore_stderr(error_type):
    import io

    sys.stderr = io.StringIO()
    raise error_type()


def _return_instance(cls):
    return cls()


class CrashAtPickle:
    def __reduce__(self):
        _crash()


class CrashAtUnpickle:
    def __reduce__(self):
        return _crash, ()


class ExitAtPickle:
    def __reduce__(self):
        _exit()


class ExitAtUnpickle:
    def __reduce__(self):
        return _exit, ()


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("Error in pickle")


class ErrorAtUnpickle:
    def __reduce__(self):
        return _raise_error_ignore_stderr, (pickle.UnpicklingError,)


def _identity(x):
    return x


@pytest.fixture(scope="module")
def survivor():
    """The pool of the cases that a kernel survives: each checks it still works afterwards."""
    with DatalayerExecutor(2, backend="local") as executor:
        yield executor


def _check_survived(executor, error, fn, *args):
    future = executor.submit(fn, *args)
    with pytest.raises(error):
        future.result(timeout=TIMEOUT)
    assert executor.submit(_identity, 42).result(timeout=TIMEOUT) == 42


def _check_broken(error, fn, *args):
    started = time.monotonic()
    with DatalayerExecutor(2, backend="local") as executor:
        future = executor.submit(fn, *args)
        with pytest.raises(error):
            future.result(timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT  # shutdown returned too


def test_error_at_task_pickle(survivor):
    _check_survived(survivor, pickle.PicklingError, id, ErrorAtPickle())


def test_exit_at_task_unpickle(survivor):
    _check_survived(survivor, SystemExit, id, ExitAtUnpickle())  # CPython: BrokenProcessPool


def test_error_at_task_unpickle(survivor):
    _check_survived(survivor, pickle.UnpicklingError, id, ErrorAtUnpickle())  # CPython: BrokenProcessPool


def test_crash_at_task_unpickle():
    _check_broken(BrokenProcessPool, id, CrashAtUnpickle())


def test_crash_during_func_exec_on_worker():
    _check_broken(BrokenProcessPool, _crash)


def test_exit_during_func_exec_on_worker(survivor):
    _check_survived(survivor, SystemExit, _exit)


def test_error_during_func_exec_on_worker(survivor):
    _check_survived(survivor, RuntimeError, _raise_error, RuntimeError)


def test_crash_during_result_pickle_on_worker():
    _check_broken(BrokenProcessPool, _return_instance, CrashAtPickle)


def test_exit_during_result_pickle_on_worker(survivor):
    _check_survived(survivor, SystemExit, _return_instance, ExitAtPickle)


def test_error_during_result_pickle_on_worker(survivor):
    _check_survived(survivor, pickle.PicklingError, _return_instance, ErrorAtPickle)


def test_error_during_result_unpickle_in_result_handler(survivor, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the unpickling replaces it here
    # CPython: BrokenProcessPool. Here the unpickling error itself, and the pool goes on.
    _check_survived(survivor, pickle.UnpicklingError, _return_instance, ErrorAtUnpickle)


def test_exit_during_result_unpickle_in_result_handler(survivor):
    _check_survived(survivor, SystemExit, _return_instance, ExitAtUnpickle)  # CPython: BrokenProcessPool


def test_shutdown_deadlock():
    with DatalayerExecutor(2, backend="local") as executor:
        future = executor.submit(_crash, delay=0.1)
        executor.shutdown(wait=True)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=TIMEOUT)


def test_shutdown_deadlock_pickle():
    with DatalayerExecutor(2, backend="local") as executor:
        executor.submit(id, 42).result(timeout=TIMEOUT)
        future = executor.submit(id, ErrorAtPickle())
        executor.shutdown(wait=False)
        with pytest.raises(pickle.PicklingError):
            future.result(timeout=TIMEOUT)


def test_crash_big_data():
    data = "a" * (1 << 20)  # more than a pipe holds, as CPython's PIPE_MAX_SIZE
    with DatalayerExecutor(2, backend="local") as executor:
        with pytest.raises(BrokenExecutor):
            list(executor.map(_crash_with_data, [data] * 10, timeout=TIMEOUT))
