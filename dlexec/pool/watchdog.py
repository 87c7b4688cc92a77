"""The watchdog: one thread per pool, running only while something needs watching.

Something does while a task has a timeout or a stop request (a runtime whose task will not
stop is restarted after ``interrupt_grace``), a runtime has a reservation (it is retired
before it expires), or ``idle_timeout`` is set (idle runtimes are stopped). Each look takes
the pool's lock and dispatches, which retires what must be.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .. import _threads
from ..errors import WorkerLostError
from .handle import State

if TYPE_CHECKING:
    from .supervisor import Supervisor

_log = logging.getLogger("dlexec")
#: Seconds between two looks.
WATCH_INTERVAL = 0.2


class Watchdog:
    """Restarts runtimes that ignore a stop or a timeout; keeps dispatching while it watches."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self._thread: threading.Thread | None = None  # guarded by the pool's lock

    def watch(self) -> None:
        """Start the thread if it is not running (pool's lock held)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._watch_loop, name="dlexec-watchdog", daemon=True)
            _threads.start(self._thread)

    def _watch_loop(self) -> None:
        """Restart kernels that ignore a stop or a timeout; retire runtimes about to expire or idle.

        If it fails, the pool breaks with the reason: timeouts it no longer enforces would
        otherwise let futures wait forever."""
        pool = self.supervisor.pool
        try:
            while True:
                time.sleep(WATCH_INTERVAL)
                with pool.locked():
                    if not self._watch_step():
                        self._thread = None
                        return
        except BaseException as exc:  # noqa: BLE001
            _log.error("dlexec: the executor's watchdog failed", exc_info=True)
            with pool.locked():
                self._thread = None
                pool.break_(WorkerLostError(f"dlexec's watchdog thread failed: {exc!r}"))

    def _watch_step(self) -> bool:
        """One look (pool's lock held); False when nothing is left to watch."""
        pool = self.supervisor.pool
        if pool.broken or (pool.shutting_down and not any(w.inflight for w in pool.workers)):
            return False
        now = time.monotonic()
        grace = self.supervisor.interrupt_grace
        for worker in pool.workers:
            stuck = any(
                (item.stop_requested is not None and now > item.stop_requested + grace)
                or (item.timeout is not None and item.sent_at is not None and now > item.sent_at + item.timeout + grace)
                for item in worker.items())
            if stuck and worker.state in (State.READY, State.RETIRING):
                worker.state = State.RESTARTING
                _threads.start(threading.Thread(target=self.supervisor.restart, args=(worker,), daemon=True))
        pool.dispatch()  # also retires runtimes about to expire, or idle
        watching = any(item.timeout is not None or item.stop_requested is not None
                       for w in pool.workers for item in w.items())
        expiring = any(w.expires_at is not None for w in pool.workers)
        idling = self.supervisor.idle_timeout is not None and any(w.state is State.READY for w in pool.workers)
        return watching or expiring or idling
