"""How the "datalayer" joblib backend sizes its batches, and what it changes in a ``Parallel`` call.

The policy is a pure function of what the kernels measured (:func:`batch_size_for`): these
tests pin its choices; no timing is asserted.
"""

from __future__ import annotations

import time
import types

import pytest
from joblib import Parallel, delayed, parallel_config

from dlexec import serialization
from dlexec.joblib_backend import (
    BATCH_ROUND_TRIPS,
    MAX_BATCH_SECONDS,
    MAX_BATCH_SIZE,
    MIN_BATCH_SECONDS,
    PRE_DISPATCH,
    _BatchStats,
    batch_size_for,
    register_joblib,
)

pytestmark = pytest.mark.timeout(60)

DatalayerBackend = register_joblib()
TRIP = 0.003  # a local kernel's round trip, about


# -- the policy ---------------------------------------------------------------------------------


def test_one_task_per_batch_until_something_is_measured():
    assert batch_size_for(None, None) == 1
    assert batch_size_for(None, TRIP) == 1


def test_tiny_tasks_go_by_thousands_at_once():
    assert batch_size_for(1e-6, TRIP) == MAX_BATCH_SIZE  # no doubling ramp: the size at once
    assert batch_size_for(0.0, TRIP) == MAX_BATCH_SIZE
    assert batch_size_for(20e-6, TRIP) == 3000  # 0.06 s of work


def test_long_tasks_go_one_by_one():
    assert batch_size_for(0.1, TRIP) == 1
    assert batch_size_for(2.0, TRIP) == 1
    assert batch_size_for(3600.0, 0.05) == 1


def test_medium_tasks_fill_about_twenty_round_trips():
    target = BATCH_ROUND_TRIPS * TRIP  # 0.06 s
    assert batch_size_for(0.005, TRIP) == int(target / 0.005) == 12
    assert batch_size_for(0.025, TRIP) == 2  # 40 calls of 25 ms: two at a time


def test_the_work_per_batch_is_bounded():
    # an unknown or tiny round trip: at least MIN_BATCH_SECONDS of work
    assert batch_size_for(0.001, None) == int(MIN_BATCH_SECONDS / 0.001)
    assert batch_size_for(0.001, 0.0) == int(MIN_BATCH_SECONDS / 0.001)
    # a slow link (a remote runtime): at most MAX_BATCH_SECONDS of work, whatever the trip
    assert batch_size_for(0.01, 1.0) == int(MAX_BATCH_SECONDS / 0.01)
    for task in (1e-7, 1e-4, 0.01, 0.3, 10.0):
        for trip in (None, 1e-4, TRIP, 0.05, 2.0):
            size = batch_size_for(task, trip)
            assert 1 <= size <= MAX_BATCH_SIZE
            assert size == 1 or size * task <= MAX_BATCH_SECONDS * (1 + 1e-9)


def _future(run, sent, answered, result=None, timed=True, cancelled=False):
    future = types.SimpleNamespace(run_seconds=run, started_at=sent, finished_at=answered,
                                   cancelled=lambda: cancelled, exception=lambda: None,
                                   result=lambda: result)
    if timed:
        future._dlexec_timed = True
    return future


def test_the_statistics_use_the_calls_own_time_and_the_fastest_recent_trip():
    stats = _BatchStats()
    assert stats.batch_size() == 1
    # one task: 100 us in the kernel, of which 2 us in the call itself; 10 ms from sent to answered
    stats.record(_future(100e-6, 0.0, 0.010, ([4], 2e-6)), tasks=1)
    assert stats.batch_size() == MAX_BATCH_SIZE  # sized on the call (2 us), not the batch's costs
    stats.record(_future(0.001, 1.0, 1.003, ([1] * 10, 0.5)), tasks=10)  # 50 ms calls now
    assert stats.batch_size() == batch_size_for((2e-6 + 0.5) / 11, 0.002)
    stats.record(_future(None, 1.0, 1.5), tasks=3)  # cancelled or never sent: ignored
    stats.record(_future(0.1, 2.0, 2.2, cancelled=True), tasks=3)
    assert stats.batch_size() == batch_size_for((2e-6 + 0.5) / 11, 0.002)
    stats.new_call()  # another Parallel call: its tasks may be another function
    assert stats.batch_size() == 1


# -- in a Parallel call -------------------------------------------------------------------------


def double(x):
    return 2 * x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_a_call_gets_more_batches_in_flight_and_the_parallel_object_is_left_as_it_was():
    with parallel_config(backend="datalayer", n_jobs=2):
        parallel = Parallel()
        assert parallel.pre_dispatch == "2 * n_jobs"
        assert parallel(delayed(double)(i) for i in range(500)) == [2 * i for i in range(500)]
        assert parallel._pre_dispatch_amount == eval(PRE_DISPATCH.replace("n_jobs", "2"))  # 16
        assert parallel.pre_dispatch == "2 * n_jobs"
        # an explicit choice is the caller's
        mine = Parallel(pre_dispatch="3 * n_jobs")
        assert mine(delayed(double)(i) for i in range(50)) == [2 * i for i in range(50)]
        assert mine._pre_dispatch_amount == 6 and mine.pre_dispatch == "3 * n_jobs"
        assert Parallel()(delayed(nap)(0.2) for _ in range(4)) == [0.2] * 4


def test_a_shared_handle_travels_through_the_c_pickler():
    """joblib batches carry their functions as Shared handles: no dill for the batch itself."""
    blob = serialization.Blob.of(double)
    handle = serialization.Shared.of_blob(blob, "double")
    shared: list = []
    frames = serialization.dumps(([(handle, (1,), {})], None, 2), shared=shared)
    assert bytes(frames[0][:1]) == serialization._PLAIN
    assert shared == [blob]
    serialization.load_blob(blob.key, blob.frames)  # as the kernel does with the blobs it receives
    try:
        items, _, n_jobs = serialization.loads(frames)
    finally:
        serialization.BLOBS.pop(blob.key, None)
    assert items[0][0](21) == 42 and items[0][1:] == ((1,), {}) and n_jobs == 2
