"""Nothing waits forever: failures in the threads that carry messages, bad options, errors
that keep their types.

Each test reproduces a failure that once hung a future, a ``shutdown`` or the interpreter
at exit; it must now fail the future concerned, with the original error type, and leave
the pool usable.
"""

from __future__ import annotations

import pickle
import sys
import time
from decimal import Decimal

import pytest

import dlexec
from dlexec import DatalayerExecutor, WorkerLostError

from ..conftest import run_script

pytestmark = pytest.mark.timeout(120)


def square(x):
    return x * x


def _exit_at_unpickle():
    return sys.exit, (3,)


class ExitAtUnpickle:
    """Unpickling it calls ``sys.exit(3)``: a ``SystemExit`` in whoever loads it."""

    def __reduce__(self):
        return _exit_at_unpickle()


def return_exit_at_unpickle():
    return ExitAtUnpickle()


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("this object refuses to be pickled")


def return_error_at_pickle():
    return ErrorAtPickle()


# -- errors while a reply is handled or a message is sent ---------------------------------


@pytest.fixture(scope="module")
def ex(backend):
    """Two runtimes on local kernels, then on a real Jupyter Server (``backend``)."""
    with DatalayerExecutor(2) as ex:
        yield ex


class TestOnEveryBackend:

    def test_a_result_whose_unpickling_exits_fails_only_its_future(self, ex):
        future = ex.submit(return_exit_at_unpickle)
        with pytest.raises(SystemExit) as info:
            future.result(timeout=30)
        assert info.value.code == 3
        assert any("could not be unpickled" in note for note in getattr(info.value, "__notes__", []))
        assert ex.submit(square, 7).result(timeout=30) == 49  # the same runtimes go on

    def test_a_result_that_cannot_be_pickled_raises_the_pickling_error(self, ex):
        with pytest.raises(pickle.PicklingError, match="refuses to be pickled") as info:
            ex.submit(return_error_at_pickle).result(timeout=30)
        assert any("could not be pickled" in note for note in getattr(info.value, "__notes__", []))
        assert ex.submit(square, 3).result(timeout=30) == 9

    def test_a_decimal_timeout_is_a_float(self, ex):
        assert ex.options(timeout=Decimal("5")).submit(square, 4).result(timeout=30) == 16

    def test_a_message_that_cannot_be_sent_fails_only_its_future(self, ex, monkeypatch):
        pool = ex._pool.dispatcher
        original = pool._send

        def send_unsendable(worker, items):
            for item in items:
                item.timeout = object()  # not JSON: the message cannot be built
            return original(worker, items)

        monkeypatch.setattr(pool, "_send", send_unsendable)
        future = ex.submit(square, 5)
        with pytest.raises(ValueError, match="JSON"):  # what the message's encoding raised
            future.result(timeout=30)
        monkeypatch.undo()
        assert ex.submit(square, 6).result(timeout=30) == 36


def test_the_process_exits_after_a_result_whose_unpickling_exits(tmp_path):
    result = run_script(
        """
        import sys
        from dlexec import DatalayerExecutor

        class ExitAtUnpickle:
            def __reduce__(self):
                return sys.exit, (3,)

        def make():
            return ExitAtUnpickle()

        def square(x):
            return x * x

        ex = DatalayerExecutor(1)
        try:
            ex.submit(make).result(timeout=30)
        except SystemExit as exc:
            print("future raised SystemExit", exc.code, flush=True)
        print("next", ex.submit(square, 3).result(timeout=30), flush=True)
        # no shutdown: interpreter exit must stop the kernel and end
        """,
        tmp_path,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "future raised SystemExit 3" in result.stdout
    assert "next 9" in result.stdout


def test_an_io_thread_that_fails_fails_its_futures_and_shutdown_ends(monkeypatch):
    from dlexec.runtimes import local_io

    def broken_drain(self, sock, channel):
        raise SystemExit("simulated failure in the I/O thread")

    with DatalayerExecutor(1, backend="local") as ex:
        assert ex.submit(square, 2).result(timeout=60) == 4
        monkeypatch.setattr(local_io.KernelIO, "_drain", broken_drain)
        future = ex.submit(time.sleep, 0.5)
        with pytest.raises(WorkerLostError, match="simulated failure in the I/O thread"):
            future.result(timeout=30)
    # leaving the block returned: nothing waits for the dead runtime


def test_a_runtime_that_cannot_be_built_fails_the_futures_waiting_for_it(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("simulated: the runtime cannot be built")

    with DatalayerExecutor(1, backend="local") as ex:
        monkeypatch.setattr(ex._pool.supervisor, "runtime_factory", refuse)
        future = ex.submit(square, 2)
        with pytest.raises(WorkerLostError, match="cannot be built"):
            future.result(timeout=30)


# -- options are checked when the executor is built ----------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "x"}, TypeError, "name"),
        ({"run_url": 5}, TypeError, "run_url"),
        ({"bogus_option": 1}, TypeError, "bogus_option"),
        ({"start_timeout": -1}, ValueError, "start_timeout"),
        ({"interrupt_grace": -1}, ValueError, "interrupt_grace"),
        ({"task_timeout": "5"}, TypeError, "task_timeout"),
        ({"idle_timeout": 0}, ValueError, "idle_timeout"),
        ({"expiry_margin": float("nan")}, ValueError, "expiry_margin"),
        ({"max_retries": 1.5}, ValueError, "max_retries"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs, error, match):
    started = time.monotonic()
    with pytest.raises(error, match=match):
        DatalayerExecutor(1, backend="local", **kwargs)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("max_workers", ["2", 2.5, True])
def test_max_workers_must_be_an_integer(max_workers):
    with pytest.raises(TypeError, match="max_workers"):
        DatalayerExecutor(max_workers, backend="local")


def test_run_url_none_means_the_default():
    with DatalayerExecutor(1, backend="local", run_url=None) as ex:  # a local kernel: the URL is not used
        assert ex.submit(square, 3).result(timeout=60) == 9


def test_option_timeouts_are_checked_and_coerced():
    ex = DatalayerExecutor(1, backend="local")
    try:
        with pytest.raises(TypeError, match="timeout"):
            ex.options(timeout="soon")
        with pytest.raises(ValueError, match="timeout"):
            ex.options(timeout=-1)
        assert ex.options(timeout=Decimal("2.5"))._task_settings[0] == 2.5
        assert type(ex.options(timeout=Decimal("2.5"))._task_settings[0]) is float
    finally:
        ex.shutdown()
