"""The pool's scheduling, batching, cancellation and retries, over in-process runtimes.

The same behaviours as tests/test_executor.py, test_control.py and test_hardening.py check
on real kernels, in seconds: the runtimes are dlexec's real worker in threads of this process
(see inprocess.py). Tasks are functions of this module, so they share its globals with the
test: ``EVENTS`` and ``RAN`` steer them and count what ran where.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest

from dlexec import DatalayerExecutor, InitializerFailed, WorkerLostError
from dlexec.errors import RuntimeStartError

from .inprocess import Runtimes, current_runtime, die_here

pytestmark = pytest.mark.timeout(30)

WAIT = 10  # seconds any wait of a test may take at most
EVENTS: dict[str, threading.Event] = collections.defaultdict(threading.Event)
RAN: collections.Counter = collections.Counter()
_ran_lock = threading.Lock()


@pytest.fixture(autouse=True)
def _fresh_state():
    EVENTS.clear()
    RAN.clear()
    yield
    for event in list(EVENTS.values()):  # no task waits on after its test
        event.set()


# -- tasks ------------------------------------------------------------------------------------


def square(x):
    return x * x


def count(key):
    with _ran_lock:
        RAN[key] += 1
    return key


def where(_=None):
    return current_runtime().id


def hold(name, result=None):
    """Runs until the test sets EVENTS[name] (in short waits, so that it can be stopped)."""
    EVENTS["started:" + name].set()
    deadline = time.monotonic() + WAIT
    while not EVENTS[name].wait(0.005):
        if time.monotonic() > deadline:
            return "never released"
    return result


def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)
    return "finished"


def stubborn(name):
    """Ignores KeyboardInterrupt: only a restart of its kernel stops it."""
    EVENTS["started:" + name].set()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            time.sleep(0.005)
        except KeyboardInterrupt:
            with _ran_lock:
                RAN["ignored"] += 1
    return "never stopped"


def concurrent(seconds):
    with _ran_lock:
        RAN["now"] += 1
        RAN["peak"] = max(RAN["peak"], RAN["now"])
    try:
        time.sleep(seconds)
    finally:
        with _ran_lock:
            RAN["now"] -= 1
    return current_runtime().id


def dies_the_first_time(key):
    """The first run waits (the test kills its runtime meanwhile); the second returns."""
    with _ran_lock:
        RAN[key] += 1
        run = RAN[key]
    if run == 1:
        return hold(key, "the first run was not stopped")
    return run


def poison_if(x, marker):
    if x == marker:
        die_here("the poison task killed it")
    return x * x


def size_of(obj, seconds=0.0):
    time.sleep(seconds)
    return len(obj)


def chatty(n):
    import sys

    for i in range(n):
        print(f"out {i}")
    print("err", file=sys.stderr)
    return n


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


def fail_with(exc):
    raise exc


def init_fails():
    raise ValueError("bad initializer")


def init_counts():
    count("init")


def _wait(name):
    assert EVENTS["started:" + name].wait(WAIT), f"task {name!r} did not start"


def _eventually(condition) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def _all_stopped(runtimes) -> bool:
    return _eventually(lambda: not any(r.is_alive() for r in runtimes.made))


# -- results, batching, chunks ---------------------------------------------------------------------


def test_map_of_many_tiny_tasks_gives_results_in_order_in_batches(runtimes):
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        assert list(ex.map(square, range(2000), timeout=WAIT)) == [x * x for x in range(2000)]
    sizes = [n for runtime in runtimes.made for n in runtime.tasks_per_request()]
    assert sum(sizes) == 2000
    first = min(runtimes.requests(), key=lambda request: request["at"])
    assert len(first["tasks"]) == 1  # one task until durations are known
    assert max(sizes) > 10  # then batches of many
    assert len(sizes) < 500


def test_map_with_chunksize_sends_chunks(runtimes):
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        assert list(ex.map(square, range(95), chunksize=10, timeout=WAIT)) == [x * x for x in range(95)]
    assert sum(len(r["tasks"]) for r in runtimes.requests()) == 10  # ten calls of ten items (the last five)


def test_submit_from_several_threads(runtimes):
    with DatalayerExecutor(3, runtime_factory=runtimes) as ex:
        results = {}

        def submitter(base):
            futures = [ex.submit(square, base + i) for i in range(100)]
            results[base] = [f.result(timeout=WAIT) for f in futures]

        threads = [threading.Thread(target=submitter, args=(base,)) for base in (0, 1000, 2000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert results == {base: [(base + i) ** 2 for i in range(100)] for base in (0, 1000, 2000)}


# -- runtimes: how many, when ---------------------------------------------------------------------


def test_max_workers_is_respected(runtimes):
    with DatalayerExecutor(3, runtime_factory=runtimes) as ex:
        used = {f.result(timeout=WAIT) for f in [ex.submit(concurrent, 0.03) for _ in range(15)]}
    assert len(runtimes.made) == 3
    assert len(used) == 3
    assert RAN["peak"] == 3


def test_runtimes_start_lazily(runtimes):
    with DatalayerExecutor(4, runtime_factory=runtimes) as ex:
        assert runtimes.made == []
        assert ex.submit(square, 3).result(timeout=WAIT) == 9
        assert len(runtimes.made) == 1  # one task needed one runtime
        assert ex.stats().runtimes[0].tasks == 1


def test_runtimes_start_in_parallel():
    runtimes = Runtimes(start_delay=0.3)
    started = time.monotonic()
    try:
        with DatalayerExecutor(3, runtime_factory=runtimes) as ex:
            futures = [ex.submit(hold, "all") for _ in range(3)]
            time.sleep(0.05)
            EVENTS["all"].set()
            assert [f.result(timeout=WAIT) for f in futures] == [None] * 3
        assert len(runtimes.made) == 3
        assert time.monotonic() - started < 0.8  # not three starts one after the other (0.9 s)
    finally:
        for runtime in runtimes.made:
            runtime.terminate()


def test_a_runtime_that_cannot_start_breaks_the_pool():
    runtimes = Runtimes(start_error="no capacity left")
    try:
        with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
            future = ex.submit(square, 2)
            with pytest.raises(WorkerLostError, match="could not be started.*no capacity left"):
                future.result(timeout=WAIT)
            with pytest.raises(BrokenProcessPool):
                ex.submit(square, 2)
    finally:
        for runtime in runtimes.made:
            runtime.terminate()


def test_worker_installed_by_an_execute_request():
    runtimes = Runtimes(install_at_start=False)
    try:
        with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
            assert list(ex.map(square, range(50), timeout=WAIT)) == [x * x for x in range(50)]
    finally:
        for runtime in runtimes.made:
            runtime.terminate()


def test_max_tasks_per_child_replaces_runtimes(runtimes):
    with DatalayerExecutor(1, max_tasks_per_child=2, runtime_factory=runtimes) as ex:
        ids = [f.result(timeout=WAIT) for f in [ex.submit(where) for _ in range(7)]]
    assert len(runtimes.made) == 4
    assert sorted(collections.Counter(ids).values()) == [1, 2, 2, 2]
    assert ids == sorted(ids, key=[r.id for r in runtimes.made].index)  # one runtime after the other
    assert all(len(r["tasks"]) <= 2 for r in runtimes.requests())
    assert _all_stopped(runtimes)


# -- cancel, shutdown, interrupt, timeout --------------------------------------------------------------


def test_cancel_of_queued_futures(runtimes):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        blocker = ex.submit(hold, "blocker", "done")
        _wait("blocker")
        queued = [ex.submit(count, i) for i in range(5)]
        assert queued[2].cancel() is True
        assert blocker.cancel() is False  # running: cancel() keeps its standard meaning
        EVENTS["blocker"].set()
        assert blocker.result(timeout=WAIT) == "done"
        assert [f.result(timeout=WAIT) for i, f in enumerate(queued) if i != 2] == [0, 1, 3, 4]
        assert queued[2].cancelled()
    assert 2 not in RAN and all(RAN[i] == 1 for i in (0, 1, 3, 4))


def test_shutdown_with_cancel_futures(runtimes):
    ex = DatalayerExecutor(1, runtime_factory=runtimes)
    blocker = ex.submit(hold, "blocker", "done")
    _wait("blocker")
    queued = [ex.submit(count, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    assert all(f.cancelled() for f in queued)
    EVENTS["blocker"].set()
    assert blocker.result(timeout=WAIT) == "done"  # the running task finishes
    ex.shutdown(wait=True)
    assert not RAN
    assert not any(r.is_alive() for r in runtimes.made)  # shutdown(wait=True) stopped them


def test_interrupt_stops_a_running_task_and_keeps_the_runtime(runtimes):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        looping = ex.submit(hold, "loop")
        _wait("loop")
        queued = ex.submit(square, 5)
        started = time.monotonic()
        assert looping.interrupt() is True
        with pytest.raises(CancelledError):
            looping.result(timeout=WAIT)
        assert time.monotonic() - started < 2
        assert looping.cancelled()
        assert looping.interrupt() is False  # already over
        assert queued.result(timeout=WAIT) == 25
        assert ex.submit(square, 6).result(timeout=WAIT) == 36
        assert ex.stats().cancelled == 1
    assert len(runtimes.made) == 1 and runtimes.made[0].restarts == 0


def test_interrupt_of_a_queued_task_cancels_it(runtimes):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        blocker = ex.submit(hold, "blocker", "done")
        _wait("blocker")
        queued = ex.submit(count, "queued")
        assert queued.interrupt() is True
        assert queued.cancelled()
        EVENTS["blocker"].set()
        assert blocker.result(timeout=WAIT) == "done"
    assert "queued" not in RAN


def test_a_task_that_ignores_interrupts_gets_its_runtime_restarted(runtimes):
    with DatalayerExecutor(1, interrupt_grace=0.3, runtime_factory=runtimes) as ex:
        deaf = ex.submit(stubborn, "deaf")
        _wait("deaf")
        started = time.monotonic()
        deaf.interrupt()
        with pytest.raises(CancelledError):
            deaf.result(timeout=WAIT)
        assert 0.3 <= time.monotonic() - started < 3  # the grace, then a restart
        assert RAN["ignored"] >= 1
        assert _eventually(lambda: runtimes.made[0].restarts == 1)  # the future is cancelled as it begins
        assert list(ex.map(square, range(10), timeout=WAIT)) == [x * x for x in range(10)]
    assert len(runtimes.made) == 1


def test_per_task_timeout(runtimes):
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        slow = ex.options(timeout=0.2).submit(spin, WAIT)
        neighbour = ex.submit(spin, 0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout of 0.2 s"):
            slow.result(timeout=WAIT)
        assert time.monotonic() - started < 2
        assert neighbour.result(timeout=WAIT) == "finished"
        assert ex.options(timeout=5).submit(spin, 0.01).result(timeout=WAIT) == "finished"
        assert ex.stats().failed == 1
    assert all(r.restarts == 0 for r in runtimes.made)  # stopped in the kernel, no restart


def test_executor_task_timeout_default(runtimes):
    with DatalayerExecutor(1, task_timeout=0.2, runtime_factory=runtimes) as ex:
        with pytest.raises(TimeoutError):
            ex.submit(spin, WAIT).result(timeout=WAIT)
        assert ex.options(timeout=5).submit(spin, 0.3).result(timeout=WAIT) == "finished"


# -- dying runtimes ------------------------------------------------------------------------------------


def test_a_dead_runtime_breaks_the_pool_without_retries(runtimes):
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        victim = ex.submit(hold, "victim")
        _wait("victim")
        runtimes.by_id(victim.runtime_id).die("killed by the test")
        with pytest.raises(WorkerLostError, match="killed by the test") as info:
            victim.result(timeout=WAIT)
        assert isinstance(info.value, BrokenProcessPool) and isinstance(info.value, BrokenExecutor)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 1)
    assert _all_stopped(runtimes)


def test_a_dead_runtime_with_retries_runs_the_task_elsewhere(runtimes):
    with DatalayerExecutor(1, max_retries=1, runtime_factory=runtimes) as ex:
        future = ex.submit(dies_the_first_time, "retried")
        _wait("retried")
        first = future.runtime_id
        runtimes.by_id(first).die("killed by the test")
        assert future.result(timeout=WAIT) == 2
        assert future.runtime_id != first
        assert ex.submit(square, 4).result(timeout=WAIT) == 16  # not broken
    assert len(runtimes.made) == 2 and RAN["retried"] == 2


def test_a_task_that_kills_every_runtime_fails_after_its_retries(runtimes):
    with DatalayerExecutor(2, max_retries=1, runtime_factory=runtimes) as ex:
        futures = [ex.submit(poison_if, x, 5) for x in range(12)]
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=WAIT))
            except WorkerLostError as exc:
                results.append(exc)
        poison = results[5]
        assert isinstance(poison, WorkerLostError)
        assert "running on 2 runtimes that died" in str(poison) and "likely cause" in str(poison)
        assert "the poison task killed it" in str(poison)
        assert [r for i, r in enumerate(results) if i != 5] == [x * x for x in range(12) if x != 5]
        assert ex.submit(square, 3).result(timeout=WAIT) == 9  # the pool is not broken
    assert sum(1 for r in runtimes.made if r.exit_reason) == 2


# -- initializer, shared objects, errors, output, stats ------------------------------------------------


def test_an_initializer_that_fails_breaks_the_pool(runtimes):
    with DatalayerExecutor(2, initializer=init_fails, runtime_factory=runtimes) as ex:
        future = ex.submit(square, 2)
        with pytest.raises(InitializerFailed, match="bad initializer") as info:
            future.result(timeout=WAIT)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2)
    assert _all_stopped(runtimes)


def test_the_initializer_runs_once_per_runtime(runtimes):
    with DatalayerExecutor(2, initializer=init_counts, runtime_factory=runtimes) as ex:
        assert list(ex.map(concurrent, [0.02] * 8, timeout=WAIT))
    assert RAN["init"] == len(runtimes.made) == 2


def test_shared_objects_travel_once_per_runtime(runtimes):
    size = 1_000_000
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        big = ex.share(bytes(size))
        futures = [ex.submit(size_of, big, 0.02) for _ in range(20)]  # long enough to need both runtimes
        assert [f.result(timeout=WAIT) for f in futures] == [size] * 20
        key = big.blob.key
        used = [r for r in runtimes.made if r.tasks_per_request()]
        assert len(used) == 2
        for runtime in used:
            assert sum(request["blobs"].count(key) for request in runtime.requests) == 1
        assert sum(r["nbytes"] for r in runtimes.requests()) < 2.5 * size
        before = sum(r["nbytes"] for r in runtimes.requests())
        assert [f.result(timeout=WAIT) for f in [ex.submit(size_of, bytes(size)) for _ in range(4)]] == [size] * 4
        assert sum(r["nbytes"] for r in runtimes.requests()) - before >= 4 * size  # not shared: every time


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("key"), ZeroDivisionError("zero"),
                                   CustomError("custom", 7)], ids=lambda e: type(e).__name__)
def test_exceptions_keep_their_types(runtimes, error):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex, pytest.raises(type(error)) as info:
        ex.submit(fail_with, error).result(timeout=WAIT)
    assert type(info.value) is type(error) and info.value.args == error.args
    if isinstance(error, CustomError):
        assert info.value.code == 7
    assert "fail_with" in "".join(traceback.format_exception(info.value))  # the remote frame


def test_task_output_reaches_the_future_and_this_process(runtimes, capsys):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        future = ex.submit(chatty, 2)
        assert future.result(timeout=WAIT) == 2
        assert future.stdout == "out 0\nout 1\n" and future.stderr == "err\n"
        quiet = ex.submit(square, 2)
        assert quiet.result(timeout=WAIT) == 4 and quiet.stdout == ""
    captured = capsys.readouterr()
    assert "out 0\nout 1\n" in captured.out and "err\n" in captured.err


def test_stats_count_every_outcome(runtimes):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        blocker = ex.submit(hold, "blocker", "done")
        _wait("blocker")
        ok = [ex.submit(square, i) for i in range(5)]
        failed = [ex.submit(fail_with, ValueError(i)) for i in range(2)]
        cancelled = ex.submit(square, 99)
        assert cancelled.cancel()
        EVENTS["blocker"].set()
        for future in [blocker, *ok, *failed]:
            future.exception(timeout=WAIT)
        stats = ex.stats()
    assert (stats.submitted, stats.pending, stats.running) == (9, 0, 0)
    assert (stats.done, stats.failed, stats.cancelled) == (6, 2, 1)
    assert sum(r.tasks for r in stats.runtimes) == 8
    assert [r.id for r in stats.runtimes] == [runtimes.made[0].id]


# -- idle runtimes, resizing, terminate_workers ---------------------------------------------------------


def test_idle_timeout_stops_an_idle_runtime_and_new_work_starts_another(runtimes):
    with DatalayerExecutor(2, idle_timeout=0.2, runtime_factory=runtimes) as ex:
        first = ex.submit(where).result(timeout=WAIT)
        assert len(runtimes.made) == 1
        assert _eventually(lambda: not runtimes.made[0].is_alive())  # nothing to do for 0.2 s: stopped
        assert runtimes.made[0].exit_reason is None  # stopped by the pool, not dead
        second = ex.submit(where).result(timeout=WAIT)
        assert second != first and len(runtimes.made) == 2
        assert runtimes.made[1].is_alive()
        assert ex.submit(square, 7).result(timeout=WAIT) == 49  # the pool is not broken


def test_resize_down_stops_the_surplus_runtimes(runtimes):
    with DatalayerExecutor(3, runtime_factory=runtimes) as ex:
        assert len({f.result(timeout=WAIT) for f in [ex.submit(concurrent, 0.05) for _ in range(6)]}) == 3
        assert RAN["peak"] == 3
        ex._resize(1)
        assert _eventually(lambda: sum(r.is_alive() for r in runtimes.made) == 1)
        RAN.clear()
        used = {f.result(timeout=WAIT) for f in [ex.submit(concurrent, 0.02) for _ in range(6)]}
        assert len(used) == 1 and RAN["peak"] == 1
        assert len(runtimes.made) == 3  # no new runtime: the one left does the work
        assert used == {r.id for r in runtimes.made if r.is_alive()}


def test_terminate_workers_fails_running_cancels_queued_and_stops_every_runtime(runtimes):
    ex = DatalayerExecutor(2, runtime_factory=runtimes)
    running = [ex.submit(hold, f"run{i}", "released") for i in range(2)]
    for i in range(2):
        _wait(f"run{i}")
    queued = [ex.submit(count, i) for i in range(3)]
    ex.terminate_workers()
    assert not any(r.is_alive() for r in runtimes.made)  # stopped before it returned
    assert len(runtimes.made) == 2
    for future in running:
        with pytest.raises(WorkerLostError):
            future.result(timeout=WAIT)
    assert all(f.cancelled() for f in queued)
    assert not RAN
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    ex.shutdown(wait=True)



def test_a_runtime_lost_while_a_plan_is_sent_breaks_the_pool_cleanly(runtimes):
    # Two batches planned at once; sending the first finds its runtime gone: the pool breaks
    # (the break fails every queued future), and the rest of the plan is not sent.
    with DatalayerExecutor(2, runtime_factory=runtimes) as ex:
        assert len({f.result(timeout=WAIT) for f in [ex.submit(concurrent, 0.05) for _ in range(6)]}) == 2
        for worker in ex._pool.workers:
            def lost(*args, _id=worker.runtime_id, **kwargs):
                raise WorkerLostError(f"The runtime {_id} terminated abruptly (a test)", _id, "a test")

            worker.session.request = lost
        with pytest.raises(WorkerLostError, match="a test"):
            list(ex.map(square, range(4), timeout=WAIT))


def _dies_unreported(ex):
    """The executor's only runtime is gone, its death not reported yet: sending to it fails."""
    worker = ex._pool.workers[0]
    runtime = worker.session.runtime

    def gone(*args, **kwargs):
        raise RuntimeStartError(f"kernel {runtime.id} is not running")

    worker.session.request = gone
    runtime.is_alive = lambda: False


def test_a_batch_sent_to_a_runtime_that_just_died_runs_elsewhere(runtimes):
    # The runtime is gone but its death has not been reported yet: sending finds it. The batch
    # never ran: it goes back to the queue (no retry spent), and the death is handled as one.
    with DatalayerExecutor(1, runtime_factory=runtimes, max_retries=1) as ex:
        assert ex.submit(square, 2).result(timeout=WAIT) == 4
        _dies_unreported(ex)
        assert ex.submit(square, 3).result(timeout=WAIT) == 9
        assert len(runtimes.made) == 2


def test_without_retries_a_batch_sent_to_a_dead_runtime_breaks_the_pool(runtimes):
    with DatalayerExecutor(1, runtime_factory=runtimes) as ex:
        assert ex.submit(square, 2).result(timeout=WAIT) == 4
        _dies_unreported(ex)
        with pytest.raises(WorkerLostError, match="not running"):
            ex.submit(square, 3).result(timeout=WAIT)
