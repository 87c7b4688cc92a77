"""CPython's ``concurrent.futures`` tests, ported to ``DatalayerExecutor``.

The checks come from CPython's ``Lib/test/test_concurrent_futures/`` (executor.py,
test_process_pool.py, test_shutdown.py, test_wait.py, test_as_completed.py,
test_future.py, test_init.py): whatever applies to a ``ProcessPoolExecutor`` should hold
for a drop-in replacement whose workers are Jupyter kernels.

Deliberate adaptations:

* Kernels are costly, so most tests share one warm two-kernel executor (``pool``); the
  ones that need special settings (initializer, shutdown, death) make their own, small.
* Instead of sleeping "long enough", tasks that must not finish yet wait for a *gate*
  file that the test creates when it is done looking (``blocker``); sleeps stay short.
* A remote exception is re-raised with its type and remote frames in its traceback
  (not with ProcessPoolExecutor's ``_RemoteTraceback`` cause): intentional in dlexec.
* An exception that cannot be rebuilt here may arrive as ``dlexec.RemoteError``.

Task functions are module-level: the kernels import this module by name.
"""

from __future__ import annotations

import builtins
import gc
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError, Executor, Future, ProcessPoolExecutor
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import dlexec
from dlexec import DatalayerExecutor

from ..conftest import pid_alive

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
PY311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11")
GATE_TIMEOUT = 30.0  # a blocker gives up (and returns "gate timeout") after this long


# --- task functions (run in the kernels) --------------------------------------------


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def noop():
    pass


def getpid(*_):
    return os.getpid()


def sleep_and_return(delay, value):
    time.sleep(delay)
    return value


def sleep_and_getpid(delay):
    time.sleep(delay)
    return os.getpid()


def sleep_and_raise(delay):
    time.sleep(delay)
    raise Exception("this is an exception")  # noqa: TRY002 - as CPython's test


def sleep_and_print(delay, msg):
    time.sleep(delay)
    print(msg)
    sys.stdout.flush()


def blocker(gate, marker=None):
    """Wait until the file ``gate`` exists; returns the kernel's pid (or a timeout note)."""
    if marker is not None:
        Path(marker).touch()
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            return "gate timeout"
        time.sleep(0.01)
    return os.getpid()


def block_or_return(value, gate):
    if value == "block":
        return blocker(gate)
    return value


def touch_and_mul(marker, x, y):
    Path(marker).touch()
    return x * y


def rendezvous(mine, other, gate):
    """Announce ``mine``, then wait for ``other`` (or the gate); returns (pid, met)."""
    Path(mine).touch()
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (os.path.exists(other) or os.path.exists(gate)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid(), os.path.exists(other)


class MyObject:
    def my_method(self):
        pass


class EventfulGCObj:
    """Touches ``path`` when it is collected in another process than its creator."""

    def __init__(self, path):
        self.path = str(path)
        self.creator = os.getpid()

    def __del__(self):
        if os.getpid() != self.creator:
            Path(self.path).touch()


def make_dummy_object(_):
    return MyObject()


def raise_runtime_error():
    raise RuntimeError(123) # some comment


class MyBaseException(BaseException):
    pass


def raise_base_exception(kind):
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("remote ctrl-c")
    raise MyBaseException("custom base exception")


class ErrorWithTwoArgs(Exception):
    """gh-81389: a custom ``__init__`` with two required arguments; ``args`` keeps only one,
    so ``pickle`` cannot rebuild it (which breaks a whole ProcessPoolExecutor)."""

    def __init__(self, first, second):
        super().__init__(f"{first}/{second}")
        self.first = first
        self.second = second


class ErrorWithTwoArgsPicklable(Exception):
    def __init__(self, first, second):
        super().__init__(first, second)
        self.first = first
        self.second = second


class ErrorWithUnpicklableState(Exception):
    pass


def raise_custom(kind):
    if kind == "two-args":
        raise ErrorWithTwoArgs("a", "b")
    if kind == "two-args-picklable":
        raise ErrorWithTwoArgsPicklable("a", "b")
    error = ErrorWithUnpicklableState("state")
    error.generator = (i for i in range(3))  # neither pickle nor dill can serialize a generator
    raise error


def raise_builtin(kind):
    """Raise a standard exception whose attributes a plain pickle round trip keeps."""
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "StopIteration":
        raise StopIteration(5)
    if kind == "SyntaxError":
        raise SyntaxError("bad", ("f.py", 3, 4, "x y", 3, 5))
    if kind == "UnicodeDecodeError":
        b"ab\xff".decode("utf-8")
    if kind == "CalledProcessError":
        raise subprocess.CalledProcessError(2, "cmd", "out")
    if kind == "FileNotFoundError":
        open("/nonexistent-dlexec-dir/x.txt")  # noqa: SIM115 - it raises
    if kind == "KeyError":
        {}["k"]
    if kind == "notes":
        error = ValueError("with a note")
        error.add_note("a note")
        raise error
    if kind == "ExceptionGroup":
        raise builtins.ExceptionGroup("group", [ValueError(1), KeyError(2)])
    raise AssertionError(kind)


BUILTIN_ATTRIBUTES = ("code", "value", "lineno", "offset", "filename", "msg", "text", "encoding", "object",
                      "start", "end", "reason", "returncode", "cmd", "output", "errno", "strerror",
                      "__notes__", "message")


def describe_exception(exc):
    info = {"type": type(exc).__name__, "str": str(exc), "args": repr(exc.args)}
    for name in BUILTIN_ATTRIBUTES:
        if hasattr(exc, name):
            info[name] = getattr(exc, name)
    if sys.version_info >= (3, 11) and isinstance(exc, builtins.BaseExceptionGroup):
        info["exceptions"] = [describe_exception(e) for e in exc.exceptions]
    return info


def big_bytes(size):
    return b"\x01" * size


def big_array(n):
    import numpy

    return numpy.arange(n, dtype=numpy.float64)


def length_and_checksum(data):
    return len(data), sum(data[:: 1 << 16])


INITIALIZER_STATUS = "uninitialized"
INITIALIZER_CALLS = 0


def init(x):
    global INITIALIZER_STATUS, INITIALIZER_CALLS
    INITIALIZER_STATUS = x
    INITIALIZER_CALLS += 1


def get_init_state(delay=0.0):
    time.sleep(delay)
    return os.getpid(), INITIALIZER_STATUS, INITIALIZER_CALLS


# --- helpers and fixtures -------------------------------------------------------------


def create_future(state=PENDING, exception=None, result=None):
    f = Future()
    f._state = state
    f._exception = exception
    f._result = result
    return f


PENDING_FUTURE = create_future(state=PENDING)
RUNNING_FUTURE = create_future(state=RUNNING)
CANCELLED_FUTURE = create_future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = create_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = create_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = create_future(state=FINISHED, result=42)


def wait_until(predicate, timeout=30.0, interval=0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def assert_gone(pids, timeout=30.0):
    pids = [pid for pid in pids if isinstance(pid, int)]
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout, 0.1), \
        f"kernel processes still alive: {[pid for pid in pids if pid_alive(pid)]}"


@pytest.fixture(scope="module")
def pool():
    """The shared executor: two kernels, both started before the first test uses it."""
    with DatalayerExecutor(max_workers=2) as ex:
        pids = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            fs = [ex.submit(sleep_and_getpid, 0.2) for _ in range(4)]
            pids.update(f.result() for f in fs)
        assert len(pids) == 2, "the shared executor did not start two kernels"
        yield ex


@pytest.fixture
def gate(tmp_path):
    """A file path that ``blocker`` tasks wait for; created at teardown at the latest."""
    path = tmp_path / "gate"
    yield path
    path.touch()


# --- import compatibility -------------------------------------------------------------


def test_is_an_executor_with_process_pool_signature():
    assert issubclass(DatalayerExecutor, Executor)
    for name in ("submit", "map", "shutdown", "__enter__", "__exit__"):
        assert callable(getattr(DatalayerExecutor, name))
    ppe = list(inspect.signature(ProcessPoolExecutor.__init__).parameters.values())
    ours = inspect.signature(DatalayerExecutor.__init__).parameters
    for param in ppe:
        assert param.name in ours, param.name
        assert ours[param.name].kind == param.kind, param.name
        assert ours[param.name].default == param.default, param.name
    # positional order as ProcessPoolExecutor's
    assert list(ours)[: 5] == ["self", "max_workers", "mp_context", "initializer", "initargs"]
    assert inspect.signature(DatalayerExecutor.shutdown).parameters["cancel_futures"].kind is \
        inspect.Parameter.KEYWORD_ONLY
    map_params = inspect.signature(DatalayerExecutor.map).parameters
    assert map_params["timeout"].default is None and map_params["chunksize"].default == 1


def test_errors_are_the_stdlib_ones():
    assert dlexec.BrokenProcessPool is BrokenProcessPool
    assert issubclass(dlexec.WorkerLostError, BrokenProcessPool)
    assert issubclass(dlexec.WorkerLostError, BrokenExecutor)
    assert issubclass(dlexec.InitializerFailed, BrokenProcessPool)


def test_max_workers_negative():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            DatalayerExecutor(max_workers=number)


def test_max_tasks_per_child_validation():
    for value in (0, -1):
        with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
            DatalayerExecutor(1, max_tasks_per_child=value)
    for value in ("3", 1.5):
        with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
            DatalayerExecutor(1, max_tasks_per_child=value)


def test_initializer_must_be_callable():
    with pytest.raises(TypeError, match="initializer must be a callable"):
        DatalayerExecutor(1, initializer=42)


def test_run_after_shutdown_never_started():
    ex = DatalayerExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.map(abs, [1, 2])
    ex.shutdown()  # twice is fine
    ex.shutdown(wait=False, cancel_futures=True)


# --- submit / map on the shared executor ----------------------------------------------


def test_submit_keyword(pool):
    assert pool.submit(mul, 2, y=8).result() == 16
    assert pool.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        pool.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        pool.submit(arg=1)


def test_task_returning_none(pool):
    future = pool.submit(noop)
    assert future.result() is None
    assert future.exception() is None


def test_map_keeps_order(pool):
    delays = [0.3 - 0.05 * i for i in range(6)]  # the later ones finish first
    assert list(pool.map(sleep_and_return, delays, range(6))) == list(range(6))
    assert list(pool.map(sleep_and_return, delays, range(6), chunksize=2)) == list(range(6))


def test_map_exception(pool):
    i = pool.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert i.__next__() == (0, 1)
    assert i.__next__() == (0, 1)
    with pytest.raises(ZeroDivisionError):
        i.__next__()


def test_map_exception_chunked(pool):
    i = pool.map(divmod, [1] * 6, [2, 3, 0, 5, 1, 1], chunksize=2)
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_chunksize(pool):
    ref = list(map(pow, range(40), range(40)))
    assert list(pool.map(pow, range(40), range(40), chunksize=6)) == ref
    assert list(pool.map(pow, range(40), range(40), chunksize=50)) == ref
    assert list(pool.map(pow, range(40), range(40), chunksize=40)) == ref
    with pytest.raises(ValueError):
        list(pool.map(pow, range(40), range(40), chunksize=-1))
    # ProcessPoolExecutor raises when map is called, before any iteration
    with pytest.raises(ValueError, match=re.escape("chunksize must be >= 1.")):
        pool.map(pow, range(4), range(4), chunksize=0)


def test_map_empty_and_unequal_iterables(pool):
    for chunksize in (1, 3):
        assert list(pool.map(pow, [], [], chunksize=chunksize)) == []
        assert list(pool.map(abs, (), chunksize=chunksize)) == []
        assert list(pool.map(noop, chunksize=chunksize)) == []  # no iterable at all: zip() is empty
        # as the builtin map: stops with the shortest iterable
        assert list(pool.map(pow, range(10), range(3), chunksize=chunksize)) == [1, 1, 4]
        assert list(pool.map(pow, range(2), range(7), chunksize=chunksize)) == [1, 1]


def test_map_consumes_iterables_eagerly(pool):
    # Python 3.11's Executor.map submits every call before returning.
    it = iter(range(5))
    results = pool.map(abs, it)
    assert next(it, None) is None
    assert list(results) == list(range(5))


def test_free_reference(pool):
    # Issue #14406: the result iterator should not keep a reference to the results.
    # As CPython's own test, it allows the thread that set the result a moment to let go.
    for obj in pool.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        deadline = time.monotonic() + 5
        while True:
            gc.collect()
            if wr() is None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert wr() is None


def test_no_stale_references(pool):
    # Issue #16284: the executor does not keep the submitted callable (and its object).
    my_object = MyObject()
    collected = threading.Event()
    my_object_callback = weakref.ref(my_object, lambda obj: collected.set())  # noqa: F841
    future = pool.submit(my_object.my_method)  # the future itself is kept: it is not the point
    del my_object
    assert collected.wait(timeout=30), "stale reference not collected"
    future.result()


def test_resources_gced_in_workers(pool, tmp_path):
    # The arguments of a call are collected in the kernel once the call is done.
    collected = tmp_path / "collected"
    obj = EventfulGCObj(collected)
    assert isinstance(pool.submit(id, obj).result(timeout=30), int)
    assert wait_until(collected.exists, 10), "the argument is still alive in the kernel"


def test_shutdown_race_issue12456(pool):
    # (The map's results are discarded; the pool must not hang on them.)
    pool.map(str, [2] * 3)
    assert pool.submit(mul, 2, 3).result() == 6


# --- exceptions ----------------------------------------------------------------------


def test_exception_type_and_traceback(pool, capsys):
    future = pool.submit(raise_runtime_error)
    with pytest.raises(RuntimeError) as info:
        future.result()
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    assert future.exception() is exc
    assert future.done() and not future.cancelled()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "raise RuntimeError(123) # some comment" in text
    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123) # some comment" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "MyBaseException"])
def test_base_exception_subclasses(pool, kind):
    expected = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                "MyBaseException": MyBaseException}[kind]
    pids = set(pool.map(getpid, range(4)))
    future = pool.submit(raise_base_exception, kind)
    with pytest.raises(expected) as info:
        future.result(timeout=30)
    assert type(info.value) is expected
    assert isinstance(future.exception(), expected)
    # the kernel did not exit: the pool is still usable, with the same kernels
    assert pool.submit(mul, 6, 7).result(timeout=30) == 42
    assert set(pool.map(getpid, range(4))) <= pids


@pytest.mark.parametrize("kind", ["two-args", "unpicklable-state"])
def test_exception_that_cannot_be_rebuilt(pool, kind):
    # gh-81389 breaks the whole ProcessPoolExecutor; here the future fails, the pool lives on.
    expected = {"two-args": ErrorWithTwoArgs, "unpicklable-state": ErrorWithUnpicklableState}[kind]
    future = pool.submit(raise_custom, kind)
    exc = future.exception(timeout=30)
    assert isinstance(exc, (expected, dlexec.RemoteError)), repr(exc)
    if isinstance(exc, dlexec.RemoteError):
        assert expected.__name__ in exc.type_name
        assert expected.__name__ in str(exc)
        assert "raise_custom" in exc.traceback_text
    with pytest.raises((expected, dlexec.RemoteError)):
        future.result()
    # the same through map, and the pool is still usable
    results = pool.map(raise_custom, [kind])
    with pytest.raises((expected, dlexec.RemoteError)):
        list(results)
    assert pool.submit(mul, 6, 7).result(timeout=30) == 42
    assert list(pool.map(mul, range(5), range(5))) == [0, 1, 4, 9, 16]


def test_exception_with_two_args_that_pickles(pool):
    exc = pool.submit(raise_custom, "two-args-picklable").exception(timeout=30)
    assert type(exc) is ErrorWithTwoArgsPicklable
    assert (exc.first, exc.second) == ("a", "b")


@pytest.mark.parametrize("kind", [
    "SystemExit",
    "StopIteration",
    "SyntaxError",
    "UnicodeDecodeError",
    "CalledProcessError",
    "FileNotFoundError",
    "KeyError",
    pytest.param("notes", marks=PY311),
    pytest.param("ExceptionGroup", marks=PY311),
])
def test_standard_exception_attributes_survive(pool, kind):
    # ProcessPoolExecutor pickles the exception: it comes back with its args and attributes.
    try:
        raise_builtin(kind)
    except BaseException as exc:  # noqa: BLE001
        expected = describe_exception(exc)
    future = pool.submit(raise_builtin, kind)
    remote = future.exception(timeout=30)
    assert describe_exception(remote) == expected


def test_large_values(pool):
    size = 32 * 2**20
    data = pool.submit(big_bytes, size).result(timeout=60)
    assert len(data) == size and data[:3] == b"\x01\x01\x01" and data[-1:] == b"\x01"
    array = pool.submit(big_array, 4 * 2**20).result(timeout=60)
    assert array.shape == (4 * 2**20,) and array[-1] == 4 * 2**20 - 1
    assert float(array.sum()) == float(sum(range(4 * 2**20)))
    payload = bytes(range(256)) * (2**16)  # 16 MiB argument
    assert pool.submit(length_and_checksum, payload).result(timeout=60) == \
        length_and_checksum(payload)


# --- future states, callbacks, cancel ------------------------------------------------------


def test_future_states_and_callbacks(pool, gate):
    called = []
    done_event = threading.Event()

    def callback(f):
        called.append(f)
        done_event.set()

    future = pool.submit(blocker, gate)
    future.add_done_callback(callback)
    assert wait_until(future.running, 30), future
    assert not future.done() and not future.cancelled()
    assert re.search(r"state=running", repr(future)), repr(future)
    with pytest.raises(futures.TimeoutError):
        future.result(timeout=0)
    with pytest.raises(futures.TimeoutError):
        future.exception(timeout=0)
    assert not future.cancel()  # running: cannot be cancelled
    assert called == []
    gate.touch()
    assert isinstance(future.result(timeout=30), int)
    assert done_event.wait(10) and called == [future]
    assert future.done() and not future.running() and not future.cancelled()
    assert not future.cancel()
    assert re.search(r"state=finished returned int", repr(future)), repr(future)
    # a callback added to a finished future runs at once
    later = []
    future.add_done_callback(later.append)
    assert later == [future]

    failed = pool.submit(divmod, 1, 0)
    seen = []
    failed.add_done_callback(lambda f: seen.append(type(f.exception())))
    assert isinstance(failed.exception(timeout=30), ZeroDivisionError)
    assert wait_until(lambda: seen == [ZeroDivisionError], 10)
    assert re.search(r"state=finished raised ZeroDivisionError", repr(failed)), repr(failed)


def test_cancel_pending_future_while_busy(pool, gate, tmp_path):
    blockers = [pool.submit(blocker, gate) for _ in range(2)]
    markers = [tmp_path / f"marker-{i}" for i in range(8)]
    others = [pool.submit(touch_and_mul, str(m), i, 2) for i, m in enumerate(markers)]
    try:
        assert wait_until(lambda: all(b.running() for b in blockers), 30)
        # ProcessPoolExecutor keeps at most max_workers + 1 calls queued: the rest is pending.
        pending = [f for f in others if not f.running() and not f.done()]
        assert pending, "every future is already running"
        last = pending[-1]
        assert last is others[-1]
        assert last.cancel()
        assert last.cancelled() and last.done() and not last.running()
        assert last.cancel()  # cancelling twice is fine
        with pytest.raises(CancelledError):
            last.result(timeout=0)
        with pytest.raises(CancelledError):
            last.exception(timeout=0)
        called = []
        last.add_done_callback(called.append)
        assert called == [last]
        assert not blockers[0].cancel() and blockers[0].running()
    finally:
        gate.touch()
    assert all(isinstance(b.result(timeout=30), int) for b in blockers)
    for i, f in enumerate(others[:-1]):
        assert f.result(timeout=30) == 2 * i
    futures.wait(others)
    assert not markers[-1].exists(), "the cancelled call ran anyway"


# --- wait / as_completed (test_wait.py, test_as_completed.py) --------------------------------


def test_wait_20369(pool):
    future = pool.submit(time.sleep, 0.3)
    done, not_done = futures.wait([future, future], return_when=futures.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_wait_first_completed(pool, gate):
    future1 = pool.submit(mul, 21, 2)
    future2 = pool.submit(blocker, gate)
    done, not_done = futures.wait([CANCELLED_FUTURE, future1, future2], timeout=30,
                                  return_when=futures.FIRST_COMPLETED)
    assert done == {future1}
    assert not_done == {CANCELLED_FUTURE, future2}
    gate.touch()
    future2.result(timeout=30)


def test_wait_first_completed_some_already_completed(pool, gate):
    future1 = pool.submit(blocker, gate)
    finished, pending = futures.wait([CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, future1],
                                     return_when=futures.FIRST_COMPLETED)
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future1}
    gate.touch()
    future1.result(timeout=30)


def test_wait_first_exception(pool, gate):
    future1 = pool.submit(mul, 2, 21)
    future2 = pool.submit(sleep_and_raise, 0.3)
    future3 = pool.submit(blocker, gate)
    finished, pending = futures.wait([future1, future2, future3], timeout=30,
                                     return_when=futures.FIRST_EXCEPTION)
    assert finished == {future1, future2}
    assert pending == {future3}
    gate.touch()
    future3.result(timeout=30)


def test_wait_first_exception_some_already_complete(pool, gate):
    future1 = pool.submit(divmod, 21, 0)
    future2 = pool.submit(blocker, gate)
    finished, pending = futures.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1, future2],
        timeout=30, return_when=futures.FIRST_EXCEPTION)
    assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1}
    assert pending == {CANCELLED_FUTURE, future2}
    gate.touch()
    future2.result(timeout=30)


def test_wait_first_exception_one_already_failed(pool, gate):
    future1 = pool.submit(blocker, gate)
    finished, pending = futures.wait([EXCEPTION_FUTURE, future1], return_when=futures.FIRST_EXCEPTION)
    assert finished == {EXCEPTION_FUTURE}
    assert pending == {future1}
    gate.touch()
    future1.result(timeout=30)


def test_wait_all_completed(pool):
    future1 = pool.submit(divmod, 2, 0)
    future2 = pool.submit(mul, 2, 21)
    finished, pending = futures.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, future1, future2],
        return_when=futures.ALL_COMPLETED)
    assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, future1, future2}
    assert pending == set()


def test_wait_timeout(pool, gate):
    future = pool.submit(blocker, gate)
    finished, pending = futures.wait(
        [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future],
        timeout=0.05, return_when=futures.ALL_COMPLETED)
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future}
    gate.touch()
    future.result(timeout=30)


def test_as_completed_no_timeout(pool):
    future1 = pool.submit(mul, 2, 21)
    future2 = pool.submit(mul, 7, 6)
    completed = set(futures.as_completed(
        [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future1, future2]))
    assert completed == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future1, future2}
    assert future1.result() == future2.result() == 42


def test_as_completed_times_out(pool, gate):
    already_completed = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    for timeout in (0, 0.1):
        completed = set()
        future = pool.submit(blocker, gate)
        with pytest.raises(futures.TimeoutError):
            for f in futures.as_completed(already_completed | {future}, timeout):
                completed.add(f)
        assert completed == already_completed
    gate.touch()


def test_as_completed_duplicate_futures(pool):
    future1 = pool.submit(time.sleep, 0.3)
    completed = list(futures.as_completed([future1] * 3))
    assert completed == [future1]


def test_map_timeout(pool, gate):
    results = []
    start = time.monotonic()
    with pytest.raises(futures.TimeoutError):
        for value in pool.map(block_or_return, [None, None, "block"], [str(gate)] * 3, timeout=3):
            results.append(value)  # noqa: PERF402 - collect until the timeout
    assert results == [None, None]
    assert time.monotonic() - start < 25  # it did not wait for the blocked call
    gate.touch()


# --- initializer (test_init.py) --------------------------------------------------------


def test_initializer():
    # positional arguments as ProcessPoolExecutor's: max_workers, mp_context, initializer, initargs
    with DatalayerExecutor(2, None, init, ("initialized",)) as ex:
        first = [ex.submit(get_init_state, 0.2) for _ in range(6)]
        results = [f.result(timeout=60) for f in first]
        results += list(ex.map(get_init_state, [0.05] * 6))
    assert INITIALIZER_STATUS == "uninitialized"  # it ran in the kernels, not here
    assert {status for _, status, _ in results} == {"initialized"}
    assert {calls for _, _, calls in results} == {1}  # once per kernel, not per task
    assert os.getpid() not in {pid for pid, _, _ in results}


# --- shutdown (test_shutdown.py) -------------------------------------------------------


def test_context_manager_shutdown():
    with DatalayerExecutor(max_workers=2) as e:
        executor = e
        assert isinstance(e, DatalayerExecutor)
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        pids = set(e.map(sleep_and_getpid, [0.1] * 8))
        # issue12364: shutdown with many pending calls does not hang, and waits for them
        fs = [e.submit(sleep_and_return, 0.02, i) for i in range(30)]
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(30))
    assert_gone(pids, timeout=15)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(abs, [1])
    executor.shutdown()  # shutdown twice
    executor.shutdown(wait=False)


def test_shutdown_no_wait(gate):
    executor = DatalayerExecutor(max_workers=1)
    try:
        pid = executor.submit(os.getpid).result(timeout=60)
        res = executor.map(abs, range(-5, 5))
        blocked = executor.submit(blocker, gate)
        executor.shutdown(wait=False)  # returns although `blocked` cannot finish yet
        assert not blocked.done()
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            executor.submit(pow, 2, 5)
        gate.touch()
        assert blocked.result(timeout=30) == pid  # pending work still completes
        assert list(res) == [abs(v) for v in range(-5, 5)]
        assert_gone([pid])  # and then the kernel is stopped
    finally:
        gate.touch()
        executor.shutdown()


def test_del_shutdown():
    executor = DatalayerExecutor(max_workers=1)
    pid = executor.submit(os.getpid).result(timeout=60)
    res = executor.map(abs, range(-5, 5))
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None
    # the results were computed although the executor was collected, then the kernel stopped
    assert list(res) == [abs(v) for v in range(-5, 5)]
    assert_gone([pid])


def test_cancel_futures_while_starting():
    # gh-94440 (a future cancelled right before shutdown) on an executor whose kernel is
    # still starting: shutdown(cancel_futures=True) must not hang. Unlike ProcessPoolExecutor,
    # whose call queue marks a few calls running before any process exists, nothing has
    # started running here, so everything may be cancelled.
    with DatalayerExecutor(max_workers=1) as executor:
        first = executor.submit(int)
        assert first.cancel()
        fs = [executor.submit(time.sleep, 0.1) for _ in range(20)]
        executor.shutdown(wait=True, cancel_futures=True)
    assert first.cancelled()
    for f in fs:
        assert f.cancelled() or (f.done() and f.exception() is None), f


def test_max_tasks_early_shutdown():
    # (Reuse, then replacement, of a kernel: test_executor.py, test_max_tasks_per_child_replaces_the_kernel.)
    executor = DatalayerExecutor(1, max_tasks_per_child=2)
    try:
        original_pid = executor.submit(os.getpid).result(timeout=60)
        executor.submit(os.getpid).result(timeout=60)
        # the kernel is replaced; an early shutdown still runs everything
        f3 = executor.submit(os.getpid)
        fs = [executor.submit(mul, i, i) for i in range(4)]
        executor.shutdown()
        assert f3.result() != original_pid
        assert [f.result() for f in fs] == [0, 1, 4, 9]
    finally:
        executor.shutdown()


def test_idle_process_reuse_one():
    # Sequential calls reuse the idle kernel instead of starting new ones.
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with DatalayerExecutor(max_workers=2) as executor:
        assert executor.submit(mul, 21, 2).result(timeout=60) == 42
        pids = {executor.submit(getpid).result(timeout=60) for _ in range(3)}
        started = {p.pid for p in me.children(recursive=True)} - before
    assert len(pids) == 1
    assert started == pids, f"kernels started: {sorted(started)}, used: {sorted(pids)}"


# --- broken pools ----------------------------------------------------------------------


def test_killed_kernel(gate, tmp_path):
    # test_killed_child: a worker terminated from outside breaks the pool.
    with DatalayerExecutor(max_workers=1) as executor:
        pid = executor.submit(os.getpid).result(timeout=60)
        marker = tmp_path / "started"
        future = executor.submit(blocker, gate, str(marker))
        assert wait_until(marker.exists, 30)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            executor.submit(pow, 2, 8)


# --- concurrency ---------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_calls_submitted_together_run_in_parallel(tmp_path):
    # ProcessPoolExecutor starts a new worker for a call when no worker is idle and fewer
    # than max_workers exist (test_saturation): two calls submitted together to a
    # two-worker pool run at the same time. These two can only finish by meeting.
    gate = tmp_path / "gate"
    a, b = tmp_path / "a", tmp_path / "b"
    with DatalayerExecutor(max_workers=2) as executor:
        fa = executor.submit(rendezvous, str(a), str(b), str(gate))
        fb = executor.submit(rendezvous, str(b), str(a), str(gate))
        try:
            def settled():
                if fa.done() and fb.done():
                    return True
                # queued behind one another on one kernel: they can never meet, stop waiting
                return bool(fa.runtime_id) and fa.runtime_id == fb.runtime_id and not fa.done()

            wait_until(settled, 75)
        finally:
            gate.touch()
        (pid_a, met_a), (pid_b, met_b) = fa.result(timeout=60), fb.result(timeout=60)
    assert met_a and met_b, f"the two calls did not run in parallel ({fa.runtime_id}, {fb.runtime_id})"
    assert pid_a != pid_b


# --- interpreter exit -----------------------------------------------------------------


@pytest.mark.parametrize("shutdown_first", [False, True], ids=["no-shutdown", "shutdown-no-wait"])
def test_interpreter_shutdown(tmp_path, shutdown_first):
    # test_interpreter_shutdown + test_submit_after_interpreter_shutdown (and, with
    # shutdown(wait=False) first, test_hang_gh83386): the pending work finishes at exit, and a
    # submit from an atexit callback raises RuntimeError.
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, os, sys, time
        from dlexec import DatalayerExecutor

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg)
            sys.stdout.flush()

        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        if __name__ == "__main__":
            t = DatalayerExecutor(2)
            print("PID", t.submit(os.getpid).result(), flush=True)
            t.submit(sleep_and_print, 1.0, "apple")
            if {shutdown_first!r}:
                t.shutdown(wait=False)
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=50,
                          env=env, cwd=tmp_path)
    lines = proc.stdout.split()
    assert proc.returncode == 0, proc.stderr
    assert "apple" in lines, (proc.stdout, proc.stderr)
    assert lines[-1] == "runtime-error" and lines.index("apple") < lines.index("runtime-error")
    assert "RuntimeError: cannot schedule new futures" in proc.stderr
    # nothing else on stderr than the atexit callback's error
    assert "Traceback" not in proc.stderr.replace("Traceback (most recent call last)", "", 1), proc.stderr
    pid = int(proc.stdout.split("PID", 1)[1].split()[0])
    assert_gone([pid])
