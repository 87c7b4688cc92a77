"""``TaskFuture``: a ``concurrent.futures.Future`` that can stop its task and knows where it ran."""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED

#: The longest a wait in ``result()``/``exception()`` sleeps before Python looks at its signals:
#: a Ctrl-C that another thread of the program received is acted on within this time.
_WAKE = 0.25


class TaskFuture(Future):
    """The future of one task submitted to a :class:`dlexec.DatalayerExecutor`.

    Besides the standard ``Future`` API:

    - :meth:`interrupt` stops the task even once it runs (``cancel`` keeps its standard
      meaning and returns False then); ``result()`` then raises ``CancelledError``;
    - ``stdout`` and ``stderr``: what the task printed (once done);
    - ``runtime_id``: the runtime that ran it; ``started_at``/``finished_at``:
      ``time.time()`` here when it was sent and when its outcome arrived;
      ``run_seconds``: how long it ran in the kernel (the rest of that span is the trip).
    """

    def __init__(self) -> None:
        super().__init__()
        self.runtime_id: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.run_seconds: float | None = None
        self.stdout: str = ""
        self.stderr: str = ""
        self._interrupt = None  # set by the executor: a callable that stops this task

    def interrupt(self) -> bool:
        """Stop the task: cancel it if it has not started, interrupt its kernel if it runs.

        Returns False if the task had already finished. The kernel survives and goes on
        with other work; if the task ignores the interrupt, its kernel is restarted after
        the executor's ``interrupt_grace`` seconds (other tasks are not lost).
        """
        if self.done():
            return False
        if self.cancel():
            return True
        return self._interrupt() if self._interrupt is not None else False

    def result(self, timeout: float | None = None):
        self._wait(timeout)
        return super().result(timeout=0)  # done, cancelled, or the standard TimeoutError

    def exception(self, timeout: float | None = None):
        self._wait(timeout)
        return super().exception(timeout=0)

    result.__doc__, exception.__doc__ = Future.result.__doc__, Future.exception.__doc__

    def _wait(self, timeout: float | None) -> None:
        """Wait until done or ``timeout``, in slices: a signal that another thread received
        (Python runs handlers in the main thread only, and only once it wakes) is handled
        within ``_WAKE`` seconds, so Ctrl-C always interrupts ``result()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._state not in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                left = _WAKE if deadline is None else min(_WAKE, deadline - time.monotonic())
                if left <= 0:
                    return
                self._condition.wait(left)

    def _set_cancelled(self) -> bool:
        """Move a running future to cancelled (``cancel()`` refuses running ones)."""
        with self._condition:
            if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
                return False
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True

    def __repr__(self) -> str:
        text = super().__repr__()
        return text[:-1] + f" on {self.runtime_id}>" if self.runtime_id else text
