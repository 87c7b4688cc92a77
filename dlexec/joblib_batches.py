"""Batches of the ``datalayer`` joblib backend: how many tasks each carries, and how one travels.

With ``Parallel(batch_size="auto")`` (the default) joblib asks the backend how many tasks to
put in each batch. joblib's own answer starts at one and doubles as batches come back, which
at a kernel's round trip (a few ms, ten times a loky worker's) costs more than thousands of
tiny tasks themselves. Here (:func:`batch_size_for`) a call's first batches hold one task;
from the first answer on, each holds about ``BATCH_ROUND_TRIPS`` round trips of work, by the
time the kernels measured for the call's tasks and for the trips (at least
``MIN_BATCH_SECONDS``, at most ``MAX_BATCH_SECONDS`` of work, ``MAX_BATCH_SIZE`` tasks): tiny
tasks go by thousands, tasks longer than half that one by one (on local kernels, from about
30 ms). joblib keeps as many batches in
flight as it pre-dispatches tasks, 2 x ``n_jobs`` by default, and splits the end of its input
into 10 x ``n_jobs`` batches; so a ``Parallel`` whose ``pre_dispatch`` is left at joblib's
default pre-dispatches ``PRE_DISPATCH`` (8 x ``n_jobs``) tasks with this backend.

A batch travels as one task of the executor (:func:`submit_batch`), each of its functions
sent once per runtime, and runs in the kernel as :func:`run_batch`, which times the calls.
"""

from __future__ import annotations

import collections
import threading
import time

#: A batch of tasks carries this many round trips' worth of work, as the kernels measure it:
#: each batch costs a round trip of messages (a few ms, partly spent in the kernel), so that
#: cost stays around 5% of the batch.
BATCH_ROUND_TRIPS = 20
#: Bounds on that work (seconds), and on the tasks in one batch.
MIN_BATCH_SECONDS = 0.05
MAX_BATCH_SECONDS = 0.5
MAX_BATCH_SIZE = 5000
#: The round trip is the smallest of this many recent ones (the others waited behind a batch).
_TRIP_SAMPLES = 16
#: joblib keeps in flight as many batches as it pre-dispatches (``Parallel(pre_dispatch=...)``,
#: in tasks: 2 x n_jobs by default), and splits the end of its input into 10 x n_jobs batches:
#: at a kernel's round trip (about ten times a loky worker's), that end alone took five round
#: trips. Left at joblib's default, pre_dispatch becomes this for the datalayer backend.
PRE_DISPATCH = "8 * n_jobs"
_JOBLIB_PRE_DISPATCH = "2 * n_jobs"


def batch_size_for(task_seconds: float | None, round_trip: float | None) -> int:
    """How many tasks a joblib batch carries: one until a batch of the ``Parallel`` call has come
    back; then enough for ``BATCH_ROUND_TRIPS`` round trips of work (between ``MIN_BATCH_SECONDS``
    and ``MAX_BATCH_SECONDS``, at most ``MAX_BATCH_SIZE`` tasks), so that thousands of tiny
    tasks travel in a few messages and a task as long as that travels alone.

    ``task_seconds``: the call's tasks' average duration in the kernels; ``round_trip``: the
    time a batch spends travelling (its time from sent to answered, less its run time).
    Unlike joblib's auto-batching, no ramp: the size jumps to its value at the first answer.
    """
    if task_seconds is None:
        return 1
    target = min(MAX_BATCH_SECONDS, max(MIN_BATCH_SECONDS, BATCH_ROUND_TRIPS * (round_trip or 0.0)))
    if task_seconds * MAX_BATCH_SIZE <= target:
        return MAX_BATCH_SIZE
    return max(1, int(target / task_seconds * (1 + 1e-9)))  # (not one less for a rounding error)


class _BatchStats:
    """What the kernels measured: the current call's task durations, recent round trips."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seconds = 0.0  # run time of this call's tasks measured so far
        self._tasks = 0
        self._trips: collections.deque = collections.deque(maxlen=_TRIP_SAMPLES)

    def new_call(self) -> None:
        """A new ``Parallel`` call (its tasks may take another time); the round trips stay."""
        with self._lock:
            self._seconds, self._tasks = 0.0, 0

    def record(self, future, tasks: int) -> None:
        """A batch of ``tasks`` came back (done callback of its :class:`~dlexec.TaskFuture`).

        The tasks' duration is the one :func:`run_batch` measured around the calls; the round
        trip, what the executor measured: from sent to answered, less the run in the kernel."""
        run, sent, answered = future.run_seconds, future.started_at, future.finished_at
        if future.cancelled() or run is None or sent is None or answered is None:
            return
        calls = run
        if getattr(future, "_dlexec_timed", False) and future.exception() is None:
            calls = future.result()[1]
        with self._lock:
            self._seconds += calls
            self._tasks += tasks
            self._trips.append(max(0.0, answered - sent - run))

    def batch_size(self) -> int:
        with self._lock:
            task_seconds = self._seconds / self._tasks if self._tasks else None
            round_trip = min(self._trips) if self._trips else None
        return batch_size_for(task_seconds, round_trip)


def batch_length(batch) -> int:
    try:
        return max(1, len(batch))
    except TypeError:  # not a BatchedCalls: one task
        return 1


def submit_batch(executor, batch):
    """Submit a joblib ``BatchedCalls``, its functions sent once per runtime.

    Pickled whole, a batch carries its functions by value (those from ``__main__`` or a
    notebook) every time; here each function travels as a cached blob, as with ``map``.
    """
    from joblib.parallel import BatchedCalls

    from .serialization import Shared

    if type(batch) is not BatchedCalls:
        return executor.submit(batch)
    handles: dict[int, Shared] = {}
    items = []
    for func, args, kwargs in batch.items:
        handle = handles.get(id(func))
        if handle is None:
            blob = executor._pool.callable_blob(func)
            handle = handles[id(func)] = Shared.of_blob(blob, getattr(func, "__name__", type(func).__name__))
        items.append((handle, args, kwargs))
    future = executor.submit(run_batch, items, batch._backend, batch._n_jobs)
    future._dlexec_timed = True  # its result is (results, seconds)
    return future


def run_batch(items, backend, n_jobs):
    """In a runtime: what ``BatchedCalls.__call__`` does; returns the results and the time the
    calls took (without this batch's own costs, which the round trip counts)."""
    from joblib import parallel_config

    with parallel_config(backend=backend, n_jobs=n_jobs):
        start = time.perf_counter()
        results = [func(*args, **kwargs) for func, args, kwargs in items]
        return results, time.perf_counter() - start

