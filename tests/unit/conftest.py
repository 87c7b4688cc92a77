"""Fixtures of the unit tests: in-process runtimes, and no thread left behind by a test."""

from __future__ import annotations

import threading
import time

import pytest

from .inprocess import Runtimes

#: Seconds a test's threads (kernel threads, the pool's starters, watchdog, terminators) get to end.
THREADS_GRACE = 5.0


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every thread a test started has ended shortly after it (bounded wait), else it fails."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREADS_GRACE
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"threads left behind: {sorted(t.name for t in left)}"


@pytest.fixture
def runtimes():
    """A runtime_factory of in-process runtimes that keeps what it made (``runtimes.made``);
    every runtime is terminated at the end of the test, whatever happened."""
    factory = Runtimes()
    yield factory
    for runtime in factory.made:
        runtime.terminate()
