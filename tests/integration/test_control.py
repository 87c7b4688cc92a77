"""Stopping running tasks, per-task timeouts, task output, and a pool that heals itself.

Runs on local kernels and on a Jupyter Server (the ``backend`` fixture).
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import CancelledError

import pytest

from dlexec import DatalayerExecutor, WorkerLostError

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("backend")]


def busy(seconds):
    """A busy loop (no sleep): only an interrupt stops it."""
    end = time.time() + seconds
    while time.time() < end:
        pass
    return "finished"


def stubborn(seconds):
    """Ignores SIGINT, so an interrupt cannot stop it: its kernel must be restarted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return busy(seconds)


def pid(delay=0.0):
    time.sleep(delay)
    return os.getpid()


def chatty(n):
    for i in range(n):
        print(f"out {i}")
    import sys

    print("err", file=sys.stderr)
    return n


def die_if(x, marker):
    if x == marker:
        os._exit(7)
    time.sleep(0.05)
    return x * x


@pytest.fixture(scope="module")
def executor(backend):
    with DatalayerExecutor(2, interrupt_grace=3) as ex:
        yield ex


def _wait_running(future, timeout=60):
    deadline = time.monotonic() + timeout
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # it has reached its kernel
    assert future.running()


def test_interrupt_stops_a_running_task_and_keeps_the_kernel(executor):
    looping = executor.submit(busy, 60)
    _wait_running(looping)
    kernel = looping.runtime_id
    neighbour = executor.submit(busy, 1)
    assert looping.cancel() is False  # cancel() keeps its standard meaning
    started = time.monotonic()
    assert looping.interrupt() is True
    with pytest.raises(CancelledError):
        looping.result(timeout=30)
    assert time.monotonic() - started < 10
    assert looping.cancelled()
    assert neighbour.result(timeout=30) == "finished"
    # the interrupted kernel goes on with other work
    again = executor.submit(busy, 0.1)
    assert again.result(timeout=30) == "finished"
    assert looping.interrupt() is False  # already over
    assert kernel in {f.runtime_id for f in [executor.submit(pid, 0.5) for _ in range(4)]}


def test_interrupt_of_a_queued_task_cancels_it(executor):
    blockers = [executor.submit(busy, 2) for _ in range(2)]
    queued = executor.submit(pid)
    assert queued.interrupt() is True
    assert queued.cancelled()
    assert [b.result(timeout=30) for b in blockers] == ["finished"] * 2


def test_per_call_timeout_stops_the_task_others_go_on(executor):
    slow = executor.options(timeout=1).submit(busy, 60)
    neighbour = executor.submit(busy, 2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout of 1 s"):
        slow.result(timeout=30)
    assert time.monotonic() - started < 10
    assert neighbour.result(timeout=30) == "finished"
    assert list(executor.options(timeout=30).map(pid, [0.1] * 4)) != []


def test_a_task_that_ignores_interrupts_gets_its_kernel_restarted(executor, backend):
    deaf = executor.submit(stubborn, 120)
    _wait_running(deaf)
    assert executor.submit(pid).result(timeout=30)  # the other kernel is not disturbed
    started = time.monotonic()
    deaf.interrupt()
    with pytest.raises(CancelledError):
        deaf.result(timeout=60)
    assert 2 < time.monotonic() - started < 30  # the grace period (3 s), then a restart
    # the pool goes on, on every kernel
    results = [executor.submit(busy, 0.2) for _ in range(6)]
    assert [f.result(timeout=60) for f in results] == ["finished"] * 6


def test_timeout_of_a_task_that_ignores_interrupts(backend):
    with DatalayerExecutor(1, task_timeout=1, interrupt_grace=2) as ex:
        future = ex.submit(stubborn, 120)
        with pytest.raises(TimeoutError):
            future.result(timeout=60)
        assert ex.submit(busy, 0.1).result(timeout=60) == "finished"


def test_task_output_is_kept_on_the_future(executor):
    future = executor.submit(chatty, 3)
    assert future.result(timeout=30) == 3
    assert future.stdout == "out 0\nout 1\nout 2\n"
    assert future.stderr == "err\n"
    assert future.runtime_id and future.started_at <= future.finished_at


def test_a_killed_runtime_is_replaced_and_every_result_is_correct(backend):
    with DatalayerExecutor(2, max_retries=2) as ex:
        pids = {ex.submit(pid, 0.3).result() for _ in range(6)}
        futures = [ex.submit(die_if, x, -1) for x in range(60)]
        time.sleep(0.5)
        os.kill(sorted(pids)[0], signal.SIGKILL)  # one runtime dies mid-batch
        assert [f.result(timeout=90) for f in futures] == [x * x for x in range(60)]
        assert ex.submit(pid).result(timeout=60)


def test_a_poison_task_is_blamed_after_its_retries(backend):
    with DatalayerExecutor(2, max_retries=1) as ex:
        futures = [ex.submit(die_if, x, 5) for x in range(12)]
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=120))
            except WorkerLostError as exc:
                results.append(exc)
        poison = results[5]
        assert isinstance(poison, WorkerLostError)
        assert "running on 2 runtimes that died" in str(poison) and "likely cause" in str(poison)
        assert [r for i, r in enumerate(results) if i != 5] == [x * x for x in range(12) if x != 5]
        assert ex.submit(pid).result(timeout=60)  # the pool is not broken


def test_options_validation(executor):
    with pytest.raises(ValueError, match="timeout"):
        executor.options(timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        DatalayerExecutor(1, max_retries=-1)
    with pytest.raises(ValueError, match="max_retries"):
        executor.options(max_retries=-1)


def test_leaving_a_with_block_over_options_leaves_the_executor_running(executor):
    # options() is a view of the executor: the executor, not the view, owns the runtimes.
    with executor.options(timeout=30) as fast:
        assert fast.submit(pow, 2, 5).result(timeout=30) == 32
    assert executor.submit(pow, 2, 6).result(timeout=30) == 64
