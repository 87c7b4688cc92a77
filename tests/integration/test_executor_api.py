"""Python 3.14's executor surface, progress bars, the reusable executor and usage stats."""

from __future__ import annotations

import io
import itertools
import os
import time
from concurrent.futures import BrokenExecutor, CancelledError

import pytest

import dlexec
from dlexec import DatalayerExecutor, get_reusable_executor, progress

from ..conftest import wait_gone

pytestmark = pytest.mark.timeout(120)


def square(x):
    return x * x


def pid_after(delay):
    time.sleep(delay)
    return os.getpid()


def fail_if_odd(x):
    if x % 2:
        raise ValueError(x)
    return x


@pytest.fixture(scope="module")
def executor():
    with DatalayerExecutor(2) as ex:
        yield ex


# -- map(buffersize=) ---------------------------------------------------------------------------


def test_buffersize_bounds_the_work_submitted_ahead_of_the_consumer(executor):
    before = executor.stats().submitted
    results = executor.map(square, itertools.count(), buffersize=5)
    assert executor.stats().submitted - before == 5
    taken = list(itertools.islice(results, 20))
    assert taken == [x * x for x in range(20)]
    assert executor.stats().submitted - before <= 20 + 5
    del results


def test_buffersize_with_chunks_and_several_iterables(executor):
    results = executor.map(pow, range(50), itertools.repeat(2), chunksize=7, buffersize=2)
    assert list(results) == [x**2 for x in range(50)]


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "buffersize must be None or > 0"),
    (-1, ValueError, "buffersize must be None or > 0"),
    (2.5, TypeError, "buffersize must be an integer or None"),
])
def test_buffersize_is_validated_as_in_python_3_14(executor, value, error, message):
    with pytest.raises(error, match=message):
        executor.map(square, [1], buffersize=value)


# -- terminate_workers() / kill_workers() --------------------------------------------------------


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_everything_now(method):
    ex = DatalayerExecutor(2)
    pids = {f.result() for f in [ex.submit(pid_after, 0.3) for _ in range(4)]}
    running = [ex.submit(time.sleep, 60) for _ in range(2)]
    queued = [ex.submit(square, x) for x in range(5)]
    time.sleep(1)
    started = time.monotonic()
    getattr(ex, method)()
    assert time.monotonic() - started < 20
    for future in running:
        with pytest.raises(BrokenExecutor):
            future.result(timeout=10)
    for future in queued:
        with pytest.raises((CancelledError, BrokenExecutor)):
            future.result(timeout=10)
    assert wait_gone(pids) == []
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    ex.shutdown()  # still allowed, and a no-op


# -- progress ------------------------------------------------------------------------------------


def test_progress_over_futures_counts_done_and_failed(executor):
    futures = [executor.submit(fail_if_odd, x) for x in range(6)]
    out = io.StringIO()
    seen = list(progress(futures, desc="work", disable=False, file=out))
    assert sorted(seen, key=id) == sorted(futures, key=id)
    text = out.getvalue()
    assert "work" in text and "6/6" in text and "failed=3" in text


def test_map_progress_shows_a_bar_only_when_asked_or_interactive(executor, capsys):
    assert list(executor.map(square, range(5), progress=True)) == [0, 1, 4, 9, 16]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # not a terminal: nothing
    out = io.StringIO()
    results = executor.map(square, range(40), chunksize=8, progress={"disable": False, "file": out})
    assert list(results) == [x * x for x in range(40)]
    assert "40/40" in out.getvalue()


def test_progress_over_a_failing_map_reraises_and_says_so(executor):
    out = io.StringIO()
    with pytest.raises(ValueError):
        list(progress(executor.map(fail_if_odd, range(4)), disable=False, file=out))
    assert "failed=1" in out.getvalue()


# -- get_reusable_executor ------------------------------------------------------------------------


def test_reusable_executor_is_warm_and_replaced_when_arguments_change():
    first = get_reusable_executor(1, timeout=None)
    pid = first.submit(os.getpid).result()
    again = get_reusable_executor(1, timeout=None)
    assert again is first and again.submit(os.getpid).result() == pid
    other = get_reusable_executor(1, timeout=None, task_timeout=30)
    assert other is not first
    with pytest.raises(RuntimeError, match="after shutdown"):
        first.submit(square, 2)
    assert wait_gone([pid]) == []
    other.shutdown()
    fresh = get_reusable_executor(1, timeout=None, task_timeout=30)
    assert fresh is not other and fresh.submit(square, 3).result() == 9
    fresh.shutdown()


def test_reusable_executor_resizes_and_stops_idle_runtimes():
    ex = get_reusable_executor(1, timeout=1.5)
    pid = ex.submit(os.getpid).result()
    assert get_reusable_executor(2, timeout=1.5) is ex and ex.max_workers == 2
    assert wait_gone([pid], timeout=15) == []  # idle for longer than the timeout: stopped
    assert ex.stats().runtimes[0].state == "stopped"
    assert ex.submit(square, 4).result() == 16  # and started again on demand
    ex.shutdown()


# -- stats, repr, notebook view -------------------------------------------------------------------


def test_stats_count_tasks_and_runtime_time():
    with DatalayerExecutor(1) as ex:
        ok = [ex.submit(pid_after, 0.2) for _ in range(3)]
        bad = ex.submit(fail_if_odd, 1)
        blocker = ex.submit(time.sleep, 1)
        cancelled = ex.submit(square, 1)
        assert cancelled.cancel()
        for future in ok:
            future.result()
        blocker.result()
        with pytest.raises(ValueError):
            bad.result()
    stats = ex.stats()
    assert (stats.submitted, stats.done, stats.failed, stats.cancelled) == (6, 4, 1, 1)
    assert stats.pending == stats.running == 0
    (runtime,) = stats.runtimes
    assert runtime.tasks == 5 and runtime.state == "stopped"
    assert 1.5 <= runtime.busy_seconds <= runtime.runtime_seconds
    assert runtime.credits is None and stats.credits is None  # local kernels are free
    assert 0 < stats.utilization <= 1
    assert "6 submitted" in stats.summary()


def test_repr_and_html_show_state_and_counts(executor):
    executor.submit(square, 2).result()
    text = repr(executor)
    assert text.startswith("<DatalayerExecutor local running:") and "done" in text
    page = executor._repr_html_()
    assert "<table>" in page and "runtime" in page and "submitted" in page


def test_package_exports_the_new_api():
    for name in ("get_reusable_executor", "progress", "Shared", "ExecutorStats", "RuntimeStats"):
        assert name in dlexec.__all__ and hasattr(dlexec, name)
