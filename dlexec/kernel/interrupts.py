"""How a running task is stopped: on request (``dlexec_cancel``) or at its timeout.

A :class:`~dlexec.kernel.worker.Worker` takes the strategy as ``interrupts=``. The interface
(duck-typed; an in-process fake runtime passes its own, to stop tasks without signals):

``armed(worker)``
    A context manager around each batch: while it is active, :meth:`interrupt` and the
    timeouts act on the thread that runs the batch's tasks. ``worker.lock`` guards
    ``worker.current`` (the running task's id) and ``worker.stopping`` (the id a stop
    request is for).
``start_timeout(seconds)``
    Called in the task's thread just before it runs: raise :class:`TaskTimeout` in it
    after ``seconds`` unless :meth:`cancel_timeout` came first.
``cancel_timeout()``
    Called in the task's thread as soon as the task returns or raises.
``interrupt()``
    Called by the control channel's thread, ``worker.lock`` held, when ``worker.current``
    is to stop: make the task raise ``KeyboardInterrupt`` (waking it from sleeps and
    blocking calls if possible).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class TaskTimeout(BaseException):
    """Raised in a task that runs past its timeout (a BaseException: ``except Exception`` lets it through)."""


class SignalInterrupts:
    """A real kernel's way, in its main thread: SIGINT stops the running task (only if it
    was meant for it), SIGALRM (``setitimer``) is a timeout."""

    @contextlib.contextmanager
    def armed(self, worker) -> Iterator[None]:
        def on_sigint(signum, frame):
            if worker.stopping is not None and worker.stopping != worker.current:
                return  # a stop request for a task that has finished meanwhile
            raise KeyboardInterrupt

        def on_sigalrm(signum, frame):
            if worker.current is not None:
                raise TaskTimeout

        previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGALRM, on_sigalrm)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGALRM, previous[1])

    def start_timeout(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def cancel_timeout(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def interrupt(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # wakes sleeps and blocking calls too
