"""``Pool``: the queue, the runtimes and the futures behind one executor.

Who owns what (CPython's ``process.py`` keeps the same kind of record):

* the pool's ``lock`` guards ``pending`` (the queue), ``workers`` (the runtimes in use; each
  :class:`~.handle.WorkerHandle`'s fields too), ``broken``, ``shutting_down`` and
  ``task_seconds``; the callers' threads (submit), the runtimes' I/O threads (replies,
  deaths), their start threads, the watchdog and the shutdown thread all take it;
* ``counts`` has its own small lock (futures' done-callbacks update it);
* a future is completed **outside** the lock, always: its callbacks may call back into the
  executor. Code under the lock that must complete one defers it (:meth:`Pool.later`);
  it runs when the outermost :meth:`Pool.locked` block ends.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import deque
from concurrent.futures import InvalidStateError
from contextlib import contextmanager
from typing import Callable

from .. import _threads, serialization
from ..errors import WorkerLostError
from ..futures import TaskFuture
from ..kernel.wire import CANCEL
from ..modules import user_modules
from ..serialization import Blob
from ..stats import ExecutorStats
from .dispatch import Dispatcher
from .handle import State, WorkerHandle
from .intake import Intake
from .supervisor import Supervisor
from .work import WorkItem

_log = logging.getLogger("dlexec")
#: Pools alive, for interpreter exit (see dlexec.executor).
live_pools: weakref.WeakSet = weakref.WeakSet()


class Pool:
    """The executor's queue, runtimes and futures; everything mutable is guarded by ``lock``."""

    def __init__(self, max_workers: int, runtime_factory: Callable, *, backend: str = "local",
                 initializer: tuple | None = None, max_tasks_per_child: int | None = None, start_timeout: float = 60.0,
                 ship_modules=True, task_timeout: float | None = None, max_retries: int = 0,
                 interrupt_grace: float = 5.0, expiry_margin: float = 60.0, idle_timeout: float | None = None):
        self.max_workers = max_workers
        self.backend = backend  # a label, for reprs and the notebook view
        self.task_timeout, self.max_retries = task_timeout, max_retries
        self.max_tasks_per_child = max_tasks_per_child
        self.start_timeout = start_timeout
        init = None
        if initializer is not None:
            modules: set = set()
            try:
                frames = serialization.dumps(initializer, modules=modules)
            except Exception as exc:
                raise TypeError(f"the initializer and its arguments cannot be serialized with dill: {exc}") from exc
            init = (frames, user_modules(modules))
        self.supervisor = Supervisor(self, runtime_factory, start_timeout=start_timeout, ship_modules=ship_modules,
                                     initializer=init, interrupt_grace=interrupt_grace, expiry_margin=expiry_margin,
                                     idle_timeout=idle_timeout)
        self.given_runtime = None  # a Datalayer runtime handed in: deleted at the end (a RuntimeService)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pending: deque[WorkItem] = deque()
        self.workers: list[WorkerHandle] = []
        self.history: list[WorkerHandle] = []  # every worker ever started, for stats()
        self.broken: str | None = None
        self.shutting_down = False
        self.killed = False  # by kill(): broken on purpose
        self.saturated = False  # see dispatch
        self.task_seconds: float | None = None  # moving average of the tasks' durations
        self.intake = Intake(self.interrupt)
        self.dispatcher = Dispatcher(self)
        self._names = itertools.count(1)
        self._finisher: threading.Thread | None = None
        self._depth = 0  # nesting of locked()
        self._deferred: list = []  # (function, args) to run once the lock is released
        live_pools.add(self)

    @contextmanager
    def locked(self):
        """Hold the lock; what :meth:`later` deferred runs once the outermost block has released
        it, whether the block ended normally or with an exception."""
        deferred: list = []
        try:
            with self.lock:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                    if self._depth == 0:
                        deferred, self._deferred = self._deferred, []
        finally:
            for function, args in deferred:
                try:
                    function(*args)
                except Exception:  # noqa: BLE001 - the next ones run all the same
                    _log.exception("dlexec: error while completing a future")

    def later(self, function: Callable, *args) -> None:
        """Run ``function(*args)`` once the lock is released (lock held, inside :meth:`locked`)."""
        self._deferred.append((function, args))

    # -- submit -----------------------------------------------------------------------------

    def check_open(self, global_shutdown: bool = False) -> None:
        if self.broken and not self.killed:
            raise WorkerLostError(self.broken)
        if self.shutting_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def callable_blob(self, fn: Callable) -> Blob:
        """``fn`` serialized (once, if it has not changed since the last call)."""
        return self.intake.callable_blob(fn)

    def submit_many(self, fn_blob: Blob | BaseException, calls: list[tuple[tuple, dict]], timeout: float | None = None,
                    max_retries: int | None = None, global_shutdown: bool = False) -> list[TaskFuture]:
        """Queue ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` in ``calls`` (``fn_blob``:
        ``fn`` serialized, or why it could not be), in one pass of the lock and the scheduler."""
        self.check_open(global_shutdown)
        timeout = self.task_timeout if timeout is None else timeout
        max_retries = self.max_retries if max_retries is None else max_retries
        futures, items = self.intake.items(fn_blob, calls, timeout, max_retries)
        with self.locked():
            self.check_open(global_shutdown)
            self.intake.count_submitted(len(futures))
            self.pending.extend(items)
            if items and not self.saturated:  # else nothing can take them now: skip the scheduling pass
                self.dispatch()
        return futures

    @property
    def counts(self) -> dict:
        """Futures submitted, done, failed, cancelled."""
        return self.intake.counts

    def stats(self) -> ExecutorStats:
        with self.lock:
            counts = self.intake.tally()
            running = sum(len(b.items) for w in self.workers for b in w.inflight)
            pending = len(self.pending)
            runtimes = tuple(w.stats() for w in self.history)
        return ExecutorStats(counts["submitted"], pending, running, counts["done"], counts["failed"],
                             counts["cancelled"], runtimes)

    def debug_state(self) -> str:
        """The pool's state in a few lines, for a bug report (taken without the lock: a hung
        pool may hold it)."""
        lines = [f"pool {id(self):#x}: broken={self.broken!r} shutting_down={self.shutting_down} "
                 f"pending={len(self.pending)} saturated={self.saturated} task_seconds={self.task_seconds}"]
        for worker in list(self.workers):
            batches = [sorted(batch.items) for batch in list(worker.inflight)]
            lines.append(f"  {worker.runtime_id}: {worker.state.value} inflight={batches} sent={worker.sent} "
                         f"expires_at={worker.expires_at} margin={worker.expiry_margin}")
        return "\n".join(lines)

    # -- dispatch (lock held) ----------------------------------------------------------------

    def dispatch(self) -> None:
        """Send what the scheduler plans now (see :class:`~.dispatch.Dispatcher`)."""
        self.dispatcher.dispatch()

    # -- the pool's runtimes and queue (lock held) ------------------------------------------

    def start_worker(self) -> None:
        """One more runtime (it starts in a thread of its own)."""
        worker = self.supervisor.start_worker(f"dlexec-worker-{next(self._names)}")
        self.workers.append(worker)
        self.history.append(worker)

    def remove(self, worker: WorkerHandle) -> None:
        """Take a runtime out of the pool and stop it (the one path that does)."""
        if worker in self.workers:
            self.workers.remove(worker)
        worker.retire()

    def resize(self, max_workers: int) -> None:
        """Change the number of runtimes: more start on demand, surplus ones stop (idle
        ones first, busy ones once their work is done)."""
        with self.locked():
            self.max_workers = max_workers
            self.supervisor.retire_surplus()
            self.dispatch()

    def requeue(self, item: WorkItem, solo: bool = False) -> None:
        """Put an item whose runtime went away back at the front of the queue."""
        item.requeued, item.worker, item.sent_at = True, None, None
        item.solo = item.solo or solo
        if item.stop_requested is not None:  # it was being stopped anyway
            self.later(item.future._set_cancelled)
            return
        self.pending.appendleft(item)

    # -- stopping tasks -------------------------------------------------------------------------

    def interrupt(self, item: WorkItem) -> bool:
        """TaskFuture.interrupt: stop the task wherever it is (see there)."""
        with self.locked():
            if item.future.done():
                return False
            if item.worker is None:  # queued again after its runtime died or restarted
                try:
                    self.pending.remove(item)
                except ValueError:
                    return False
                item.frames = None
                self.later(item.future._set_cancelled)
                return True
            if item.stop_requested is None:
                item.stop_requested = time.monotonic()
                try:
                    item.worker.session.channel.request("control", CANCEL, {"task_ids": [item.id]},
                                                        on_reply=lambda msg: True)
                except WorkerLostError:
                    pass  # its death requeues it, and the requeue cancels it
                self.supervisor.watch()
        return True

    # -- break, shutdown --------------------------------------------------------------------------

    def break_(self, error: BaseException) -> None:
        """Fail every pending and running future with ``error`` and stop every runtime (lock held)."""
        if self.broken:
            return
        self.broken = str(error)
        items = list(self.pending)
        self.pending.clear()
        workers = list(self.workers)
        for worker in workers:
            items.extend(worker.items())
            for batch in worker.inflight:
                batch.items.clear()
            worker.inflight.clear()
            if worker.state is not State.STARTING:
                worker.state = State.STOPPED
        self.changed.notify_all()
        _threads.start(threading.Thread(target=self._fail_and_stop, args=(items, workers, error), daemon=True))

    @staticmethod
    def _fail_and_stop(items: list[WorkItem], workers: list[WorkerHandle], error: BaseException) -> None:
        for item in items:
            try:
                item.future.set_exception(error)
            except InvalidStateError:  # cancelled meanwhile
                pass
        _terminate_all(w for w in workers if w.state is State.STOPPED)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        cancelled = []
        with self.locked():
            self.shutting_down = True
            if cancel_futures:
                cancelled = list(self.pending)
                self.pending.clear()
            if self._finisher is None:
                self._finisher = threading.Thread(target=self._finish, name="dlexec-shutdown", daemon=True)
                _threads.start(self._finisher)
            finisher = self._finisher
            self.changed.notify_all()
        _cancel(cancelled)
        if wait:
            finisher.join()

    def _finish(self) -> None:
        """Wait for the pending work, then stop every runtime."""
        while True:
            with self.locked():
                if self.broken or not (self.pending or any(w.inflight for w in self.workers)):
                    workers = list(self.workers)
                    self.workers.clear()
                    for worker in workers:
                        worker.state = State.STOPPED
                    break
                self.changed.wait(0.5)
                self._check_progress()
        for worker in workers:  # a runtime still starting stops itself when it is up
            if worker.thread is not None and worker.thread is not threading.current_thread():
                worker.thread.join(self.start_timeout + 5)
        _terminate_all(workers)
        if self.given_runtime is not None:  # the runtime handed in: deleted once its kernels are gone
            _quietly(self.given_runtime.terminate)
            self.given_runtime = None
        live_pools.discard(self)

    def _check_progress(self) -> None:
        """While shutdown waits (lock held): a runtime whose message threads are gone without
        a word is reported lost (its futures fail, or go elsewhere with retries), and queued
        work gets a runtime if none is left. So the wait ends, whatever happened."""
        for worker in list(self.workers):
            if worker.inflight and worker.session is not None and worker.session.started:
                worker.session.channel.check_connected()
        self.dispatch()

    def kill(self) -> None:
        """Stop at once: cancel what has not started, fail what runs, stop every runtime.

        A runtime still starting is stopped at once, not when it is up: a paid runtime still
        being created is deleted as soon as its create request answers (see runtimes.datalayer)."""
        with self.locked():
            self.shutting_down = self.killed = True
            cancelled = list(self.pending)
            self.pending.clear()
            starting = [w.session for w in self.workers if w.session is not None and not w.session.started]
            self.break_(WorkerLostError("the executor was stopped while the task was running"))
        _cancel(cancelled)
        for session in starting:
            _quietly(session.terminate)
        self.shutdown(wait=True)


def _cancel(items: list[WorkItem]) -> None:
    """Cancel queued items; a requeued one (its future already runs) is marked cancelled."""
    for item in items:
        item.frames = None
        if not item.future.cancel():
            item.future._set_cancelled()


def _quietly(stop: Callable) -> None:
    try:
        stop()
    except BaseException:  # noqa: BLE001 - a cleanup reports, never raises
        _log.warning("dlexec: could not stop a runtime", exc_info=True)


def _terminate_all(workers) -> None:
    """Stop the runtimes in parallel (remote ones take a request each), bounded."""
    threads = [threading.Thread(target=w.session.terminate, daemon=True) for w in workers if w.session is not None]
    for thread in threads:
        _threads.start(thread)
    for thread in threads:
        thread.join(30)
