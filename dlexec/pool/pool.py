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
import threading
import time
import weakref
from collections import deque
from concurrent.futures import InvalidStateError
from concurrent.futures._base import FINISHED
from contextlib import contextmanager
from functools import partial
from typing import Callable

from .. import _threads, serialization
from ..callables import CallableCache
from ..errors import WorkerLostError
from ..futures import TaskFuture
from ..kernel.wire import CANCEL, Task
from ..modules import user_modules
from ..serialization import Blob
from ..stats import ExecutorStats
from . import results, scheduler
from .handle import State, WorkerHandle
from .supervisor import Supervisor
from .work import Batch, WorkItem

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
        self.callables = CallableCache()
        self.counts = {"submitted": 0, "done": 0, "failed": 0, "cancelled": 0}
        self._counts_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._names = itertools.count(1)
        self._finisher: threading.Thread | None = None
        self._depth = 0  # nesting of locked()
        self._deferred: list = []  # (function, args) to run once the lock is released
        live_pools.add(self)

    @contextmanager
    def locked(self):
        """Hold the lock; what :meth:`later` deferred runs once the outermost block has released it."""
        with self.lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                deferred, self._deferred = (self._deferred, []) if self._depth == 0 else ((), self._deferred)
        for function, args in deferred:
            function(*args)

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
        try:
            return self.callables.blob(fn)
        except Exception as exc:
            raise TypeError(f"cannot serialize {fn!r} with dill: {exc}") from exc

    def submit_many(self, fn_blob: Blob | BaseException, calls: list[tuple[tuple, dict]], timeout: float | None = None,
                    max_retries: int | None = None, global_shutdown: bool = False) -> list[TaskFuture]:
        """Queue ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` in ``calls`` (``fn_blob``:
        ``fn`` serialized, or why it could not be), in one pass of the lock and the scheduler."""
        self.check_open(global_shutdown)
        timeout = self.task_timeout if timeout is None else timeout
        max_retries = self.max_retries if max_retries is None else max_retries
        futures, items = [], []
        for args, kwargs in calls:
            future = TaskFuture()
            future.add_done_callback(self._count)
            futures.append(future)
            item = self._item(future, fn_blob, args, kwargs, timeout, max_retries)
            if item is not None:
                items.append(item)
        with self.locked():
            self.check_open(global_shutdown)
            self.counts["submitted"] += len(futures)
            self.pending.extend(items)
            if items and not self.saturated:  # else nothing can take them now: skip the scheduling pass
                self.dispatch()
        return futures

    def _item(self, future: TaskFuture, fn_blob: Blob | BaseException, args: tuple, kwargs: dict,
              timeout: float | None, max_retries: int) -> WorkItem | None:
        """The work item of one call, or None when it cannot be serialized (its future says why)."""
        if isinstance(fn_blob, BaseException):
            future.set_exception(fn_blob)
            return None
        modules: set = set()
        shared: list[Blob] = []
        try:
            frames = serialization.dumps_call(args, kwargs, modules=modules, shared=shared)
        except Exception as exc:  # noqa: BLE001 - as ProcessPoolExecutor: the future carries it
            future.set_exception(exc)
            return None
        blobs = [fn_blob, *shared] if shared else [fn_blob]
        call_modules = user_modules(modules) if modules else None
        uses_user_modules = any(map(_uses_user_modules, blobs)) or bool(call_modules)
        item = WorkItem(next(self._ids), future, frames, blobs, uses_user_modules, timeout, max_retries, call_modules)
        future._interrupt = partial(self.interrupt, item)
        return item

    def _count(self, future: TaskFuture) -> None:
        state = future._state  # final when callbacks run: no need for the future's lock
        outcome = "done" if state == FINISHED and future._exception is None else (
            "failed" if state == FINISHED else "cancelled")
        with self._counts_lock:
            self.counts[outcome] += 1

    def stats(self) -> ExecutorStats:
        with self.lock:
            with self._counts_lock:
                counts = dict(self.counts)
            running = sum(len(b.items) for w in self.workers for b in w.inflight)
            pending = len(self.pending)
            runtimes = tuple(w.stats() for w in self.history)
        return ExecutorStats(counts["submitted"], pending, running, counts["done"], counts["failed"],
                             counts["cancelled"], runtimes)

    # -- dispatch (lock held) ----------------------------------------------------------------

    def dispatch(self) -> None:
        """Send what the scheduler plans; start a runtime if it says so. Runs whenever something
        changes (a submit, a runtime ready, a reply, a death)."""
        if self.broken:
            return
        self.supervisor.retire_expiring()
        self.supervisor.retire_idle()
        while True:
            plan = scheduler.plan(self.pending, self.workers, self.task_seconds, self.max_workers,
                                  self.max_tasks_per_child)
            emptied = False
            for worker, count in plan.batches:
                items = []
                for _ in range(count):
                    item = self.pending.popleft()
                    # False: cancelled meanwhile. A requeued item's future is already running.
                    if item.requeued or item.future.set_running_or_notify_cancel():
                        items.append(item)
                if items:
                    self._send(worker, items)
                else:
                    emptied = True
            if not emptied:  # else a runtime planned for cancelled items only is still free: plan again
                break
        if plan.start_worker:
            worker = self.supervisor.start_worker(f"dlexec-worker-{next(self._names)}")
            self.workers.append(worker)
            self.history.append(worker)
        # Every runtime is busy and no other will start: until something changes (a reply, a
        # runtime ready, a death: each dispatches again), a new submit only joins the queue.
        self.saturated = plan.saturated

    def _send(self, worker: WorkerHandle, items: list[WorkItem]) -> None:
        batch = Batch(items)
        tasks, frames = [], []
        now, sent_at = time.time(), time.monotonic()
        runtime_id = worker.runtime_id
        for item in items:
            tasks.append(Task(item.id, len(item.frames), item.timeout, item.blobs[0].key))
            frames.extend(item.frames)  # kept until done: a retry sends them again
            item.future.runtime_id, item.future.started_at = runtime_id, now
            item.sent_at, item.worker = sent_at, worker
            if item.timeout is not None:
                self.supervisor.watch()
        content = {"op": "run", "tasks": tasks}
        modules = (worker.session.modules_to_ship(_module_names(items))
                   if any(item.uses_user_modules for item in items) else None)
        if modules:
            content["modules"] = modules
        frames[:0] = worker.blobs_to_send(items, content, fresh=bool(modules))
        worker.inflight.add(batch)
        worker.sent += len(items)
        if self.max_tasks_per_child and worker.sent >= self.max_tasks_per_child:
            worker.state = State.RETIRING
        try:
            worker.session.request(content, frames, on_reply=partial(self._on_reply, worker, batch),
                                   on_lost=partial(self.supervisor.on_lost, worker),
                                   on_error=partial(self._on_reply_error, worker, batch))
        except WorkerLostError as exc:
            self.break_(exc)
        except BaseException as exc:  # noqa: BLE001 - this batch cannot be sent: its futures say why
            worker.inflight.discard(batch)
            worker.forget_blobs()  # the kernel may or may not have what the batch carried
            self.later(results.settle, [(item, False, exc) for item in batch.items.values()])
            batch.items.clear()
            if not isinstance(exc, Exception):  # Ctrl-C in the submitting thread goes on up
                raise

    # -- replies (a runtime's I/O thread) ---------------------------------------------------

    def _on_reply(self, worker: WorkerHandle, batch: Batch, msg: dict) -> bool:
        """A ``run`` reply: settle the futures it reports. True when it is the batch's last."""
        try:
            content = msg["content"]
            done, seconds = results.read_reply(content, msg.get("buffers") or [], batch, worker.runtime_id)
            final = content.get("final", True)
            if content.get("status") == "ok":
                with self.lock:
                    worker.tasks += len(done)
                    worker.busy_seconds += seconds
                    if done:
                        sample, average = seconds / len(done), self.task_seconds
                        self.task_seconds = sample if average is None else 0.7 * average + 0.3 * sample
            results.settle(done)
            for item, _, _ in done:
                batch.items.pop(item.id, None)
            if final:
                self._batch_done(worker, batch)
            return final
        except BaseException as exc:  # noqa: BLE001 - never leave the batch's futures waiting
            error = RuntimeError(f"dlexec could not handle the reply of runtime {worker.runtime_id}: {exc!r}")
            error.__cause__ = exc
            self._on_reply_error(worker, batch, error)
            return True

    def _on_reply_error(self, worker: WorkerHandle, batch: Batch, error: BaseException) -> None:
        """A message for this batch could not be handled: its futures fail with ``error``."""
        results.settle([(item, False, error) for item in list(batch.items.values())])
        batch.items.clear()
        self._batch_done(worker, batch)

    def _batch_done(self, worker: WorkerHandle, batch: Batch) -> None:
        with self.locked():
            worker.inflight.discard(batch)
            if not worker.inflight:
                worker.idle_since = time.monotonic()
                if self.supervisor.idle_timeout is not None:
                    self.supervisor.watch()
                if worker.state is State.RETIRING:
                    self.remove(worker)
            self.dispatch()
            self.changed.notify_all()

    # -- the pool's runtimes and queue (lock held) ------------------------------------------

    def remove(self, worker: WorkerHandle) -> None:
        """Take a runtime out of the pool and stop it (the one path that does)."""
        if worker in self.workers:
            self.workers.remove(worker)
        worker.retire()

    def retire_when_done(self, worker: WorkerHandle) -> None:
        """No new work for this runtime; it stops once its batches are done."""
        worker.state = State.RETIRING
        if not worker.inflight:
            self.remove(worker)

    def resize(self, max_workers: int) -> None:
        """Change the number of runtimes: more start on demand, surplus ones stop (idle
        ones first, busy ones once their work is done)."""
        with self.locked():
            self.max_workers = max_workers
            active = [w for w in self.workers if w.state is not State.STOPPED]
            surplus = len([w for w in active if w.state is not State.RETIRING]) - max_workers
            for worker in sorted((w for w in active if w.state is State.READY), key=lambda w: bool(w.inflight)):
                if surplus <= 0:
                    break
                surplus -= 1
                self.retire_when_done(worker)
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


def _uses_user_modules(blob: Blob) -> bool:
    if blob.uses_user_modules is None:
        blob.uses_user_modules = bool(user_modules(blob.modules))
    return blob.uses_user_modules


def _module_names(items: list[WorkItem]) -> set[str]:
    """The modules that a batch's callables, shared objects and arguments refer to."""
    names: set[str] = set()
    for item in items:
        for blob in item.blobs:
            if _uses_user_modules(blob):  # not only the first: any() in _item stops at it
                names |= blob.modules
        if item.modules:
            names |= item.modules
    return names


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
        import logging

        logging.getLogger("dlexec").warning("dlexec: could not stop a runtime", exc_info=True)


def _terminate_all(workers) -> None:
    """Stop the runtimes in parallel (remote ones take a request each), bounded."""
    threads = [threading.Thread(target=w.session.terminate, daemon=True) for w in workers if w.session is not None]
    for thread in threads:
        _threads.start(thread)
    for thread in threads:
        thread.join(30)
