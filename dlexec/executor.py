"""``DatalayerExecutor``: ``ProcessPoolExecutor``'s API with Jupyter kernels as workers.

Data flow::

    submit(fn, *args) --> _WorkItem --> pending --> _Pool._dispatch --> _Worker ======> kernel
    (caller's thread:    (future +     (deque)     (lock held; makes   (a Runtime-     (dlexec.worker
     dill-serializes)     frames)                   batches)            Service)        runs the batch)
                                                                            ||
    future.result() <-- set_result / set_exception <-- _Pool._on_reply <====++ (the runtime's I/O thread)

* ``submit`` serializes the call with dill in the caller's thread (a failure is set on
  the future, as ProcessPoolExecutor does) and queues a ``_WorkItem``.
* ``_dispatch`` runs whenever something changes (a submit, a worker ready, a reply, a
  death). It hands queued items to workers that have a free pipeline slot, as one ``run``
  request per batch. A batch holds about ``BATCH_SECONDS`` of work, judged by the tasks'
  measured durations (one task until the first result), and never more than the queue's
  fair share per free slot: one task when the queue is short or the tasks are long (low
  latency, little committed work), up to ``MAX_BATCH`` tiny ones (throughput). When every
  worker is busy and fewer than ``max_workers`` exist, it starts one more; kernels start
  lazily and in parallel, each in its own thread.
* An item sent to a kernel is RUNNING and can no longer be cancelled. A kernel has one
  batch in flight, or ``PIPELINE_DEPTH`` when tasks are short (the second hides the message
  latency); longer tasks wait in ``pending`` for a free kernel, so they run in parallel and
  stay cancellable (ProcessPoolExecutor's call queue plays the same role).
* A kernel that dies breaks the pool, as a dead process breaks a ProcessPoolExecutor:
  every pending future fails with :class:`~dlexec.errors.WorkerLostError` (a
  ``BrokenProcessPool``) saying which runtime died and how; the other kernels are stopped.
* ``shutdown``, garbage collection of the executor and interpreter exit let the pending
  work finish, then stop every kernel; a ``KeyboardInterrupt`` in a ``with`` block stops
  them at once.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor, InvalidStateError
from concurrent.futures._base import FINISHED
from concurrent.futures.process import _chain_from_iterable_of_lists, _get_chunks, _process_chunk
from functools import partial
from typing import Any, Callable

from . import _threads, serialization
from .callables import CallableCache
from .errors import InitializerFailed, TerminatedBySignal, WorkerLostError
from .futures import TaskFuture
from .modules import check_ship_modules, user_modules
from .runtimes import prepare
from .serialization import Blob, Shared
from . import view
from .stats import ExecutorStats, RuntimeStats
from .service import RuntimeService
from .tracebacks import rebuild_exception
from .worker import CANCEL, REQUEST

#: Batches in flight per kernel for short tasks: one running, one queued behind it.
PIPELINE_DEPTH = 2
#: Most tasks in one message.
MAX_BATCH = 256
#: Calls that map submits at a time (one pass of the lock and the scheduler each).
MAP_GROUP = 64
#: How much work (by measured task durations) one batch carries.
BATCH_SECONDS = 0.05
#: Blobs (callables, shared objects) a runtime keeps: past either bound, it starts afresh.
BLOB_CACHE_ITEMS = 256
BLOB_CACHE_BYTES = 1 << 30

_log = logging.getLogger("dlexec")
_global_shutdown = False
_live_pools: weakref.WeakSet = weakref.WeakSet()


def _python_exit() -> None:
    """At interpreter exit, finish the pending work and stop the kernels (as ProcessPoolExecutor).

    Unless the program is ending on Ctrl-C or SIGTERM: then the kernels are stopped at once.
    """
    global _global_shutdown
    _global_shutdown = True
    interrupted = TerminatedBySignal.raised or isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for pool in list(_live_pools):
        if interrupted:
            pool.kill()
        else:
            pool.shutdown(wait=True)


# Runs before non-daemon threads are joined and before atexit, like concurrent.futures.
threading._register_atexit(_python_exit)


class _WorkItem:
    """A task: its future, its serialized call, its settings, and where it stands."""

    __slots__ = ("id", "future", "frames", "blobs", "uses_user_modules", "modules", "timeout", "max_retries",
                 "deaths", "requeued", "solo", "sent_at", "worker", "stop_requested")

    def __init__(self, id: int, future: TaskFuture, frames: list, blobs: list[Blob], uses_user_modules: bool,
                 timeout: float | None, max_retries: int):
        self.id, self.future, self.frames = id, future, frames
        self.blobs = blobs  # the callable's first, then the Shared objects in the arguments
        self.uses_user_modules = uses_user_modules
        self.modules: set[str] | None = None  # the user modules the arguments refer to (to ship)
        self.timeout, self.max_retries = timeout, max_retries
        self.deaths: list[str] = []  # how the runtimes it was running on died
        self.requeued = False  # back in the queue after its runtime died or restarted (its future runs)
        self.solo = timeout is not None  # sent alone, to an idle kernel
        self.sent_at: float | None = None  # time.monotonic() when sent
        self.worker: _Worker | None = None  # where it is in flight
        self.stop_requested: float | None = None  # time.monotonic() of interrupt()


class _Batch:
    """Items sent to one kernel in one request, by task id."""

    __slots__ = ("items",)

    def __init__(self, items: list[_WorkItem]):
        self.items = {item.id: item for item in items}


class _Worker:
    """One kernel of the pool, and what it is doing."""

    def __init__(self, name: str):
        self.name = name
        self.service: RuntimeService | None = None
        self.created_at = time.time()
        self.stopped_at: float | None = None
        self.idle_since = time.monotonic()
        self.tasks = 0  # results returned
        self.busy_seconds = 0.0  # spent running tasks
        self.state = "starting"  # -> ready (<-> restarting) -> retiring -> stopped
        self.inflight: set[_Batch] = set()
        self.sent = 0  # tasks sent, for max_tasks_per_child
        self.thread: threading.Thread | None = None
        self.expires_at: float | None = None  # epoch seconds, for runtimes with a reservation
        self.expiry_margin = 0.0  # seconds before expires_at from which it gets no new work
        self.blobs: dict[str, int] = {}  # key -> size of the blobs the kernel holds
        self.blob_bytes = 0

    def forget_blobs(self) -> None:
        self.blobs.clear()
        self.blob_bytes = 0

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        if value == "stopped" and self.stopped_at is None:
            self.stopped_at = time.time()

    def stats(self) -> RuntimeStats:
        seconds = (self.stopped_at or time.time()) - self.created_at
        rate = self.service.burning_rate if self.service is not None else None
        return RuntimeStats(self.runtime_id, self.state, self.tasks, self.busy_seconds, seconds,
                            None if rate is None else float(rate) * seconds,
                            sum(len(batch.items) for batch in self.inflight))

    def pipelinable(self) -> bool:
        return not any(item.solo for batch in self.inflight for item in batch.items.values())

    @property
    def runtime_id(self) -> str:
        if self.service is not None and self.service.is_started:
            return self.service.channel.runtime.id
        return self.name


class _Pool:
    """The executor's state and scheduling; everything mutable is guarded by ``lock``."""

    def __init__(self, max_workers: int, initializer: tuple | None, max_tasks_per_child: int | None,
                 backend: str | None, start_timeout: float, runtime_options: dict, *,
                 task_timeout: float | None = None, max_retries: int = 0, interrupt_grace: float = 5.0,
                 expiry_margin: float = 60.0, idle_timeout: float | None = None):
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.task_timeout, self.max_retries = task_timeout, max_retries
        self.interrupt_grace, self.expiry_margin = interrupt_grace, expiry_margin
        self._watchdog: threading.Thread | None = None
        self.initializer_frames, self.initializer_uses_user_modules = None, False
        if initializer is not None:
            modules: set = set()
            try:
                self.initializer_frames = serialization.dumps(initializer, modules=modules)
            except Exception as exc:
                raise TypeError(f"the initializer and its arguments cannot be serialized with dill: {exc}") from exc
            self.initializer_modules = user_modules(modules)
            self.initializer_uses_user_modules = bool(self.initializer_modules)
        self.max_tasks_per_child = max_tasks_per_child
        self.backend = backend
        self.given_runtime: RuntimeService | None = None  # a Datalayer runtime handed in: deleted at the end
        self.start_timeout = start_timeout
        check_ship_modules(runtime_options.get("ship_modules", True))  # here, not in a worker thread
        self.runtime_options = runtime_options
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pending: deque[_WorkItem] = deque()
        self.workers: list[_Worker] = []
        self.broken: str | None = None
        self.shutting_down = False
        self.killed = False  # by kill(): broken on purpose
        self.saturated = False  # see the end of _dispatch
        self._ids = itertools.count(1)
        self._names = itertools.count(1)
        self._finisher: threading.Thread | None = None
        self.task_seconds: float | None = None  # moving average of the tasks' durations
        self.callables = CallableCache()
        self.history: list[_Worker] = []  # every worker ever started, for stats()
        self.counts = {"submitted": 0, "done": 0, "failed": 0, "cancelled": 0}
        self._counts_lock = threading.Lock()
        _live_pools.add(self)

    # -- submit -----------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.broken and not self.killed:
            raise WorkerLostError(self.broken)
        if self.shutting_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def callable_blob(self, fn: Callable) -> Blob:
        """``fn`` serialized (once, if it has not changed since the last call)."""
        try:
            return self.callables.blob(fn)
        except Exception as exc:
            raise TypeError(f"cannot serialize {fn!r} with dill: {exc}") from exc

    def submit(self, fn: Callable | None, args: tuple, kwargs: dict, timeout: float | None = None,
               max_retries: int | None = None, fn_blob: Blob | BaseException | None = None) -> TaskFuture:
        """Queue ``fn(*args, **kwargs)``; ``fn_blob`` is ``fn`` already serialized (by ``map``)."""
        return self.submit_many(fn, [(args, kwargs)], timeout, max_retries, fn_blob)[0]

    def submit_many(self, fn: Callable | None, calls: list[tuple[tuple, dict]], timeout: float | None = None,
                    max_retries: int | None = None, fn_blob: Blob | BaseException | None = None) -> list[TaskFuture]:
        """Queue ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` in ``calls``, in one pass
        of the lock and the scheduler (``map`` submits this way, a group at a time)."""
        self.check_open()
        timeout = self.task_timeout if timeout is None else timeout
        max_retries = self.max_retries if max_retries is None else max_retries
        if fn_blob is None:
            try:
                fn_blob = self.callable_blob(fn)
            except Exception as exc:  # noqa: BLE001 - as ProcessPoolExecutor: the future carries it
                fn_blob = exc
        futures, items = [], []
        for args, kwargs in calls:
            future = TaskFuture()
            future.add_done_callback(self._count)
            futures.append(future)
            item = self._item(future, fn_blob, args, kwargs, timeout, max_retries)
            if item is not None:
                items.append(item)
        with self.lock:
            self.check_open()
            self.counts["submitted"] += len(futures)
            self.pending.extend(items)
            if items and not self.saturated:  # else nothing can take them now: skip the scheduling pass
                self._dispatch()
        return futures

    def _item(self, future: TaskFuture, fn_blob: Blob | BaseException, args: tuple, kwargs: dict,
              timeout: float | None, max_retries: int) -> _WorkItem | None:
        """The work item of one call, or None when it cannot be serialized (its future says why)."""
        if isinstance(fn_blob, BaseException):
            future.set_exception(fn_blob)
            return None
        modules: set = set()
        shared: list[Blob] = []
        try:
            frames = serialization.dumps_call(args, kwargs, modules=modules, shared=shared)
        except Exception as exc:  # noqa: BLE001
            future.set_exception(exc)
            return None
        blobs = [fn_blob, *shared] if shared else [fn_blob]
        call_modules = user_modules(modules) if modules else None
        uses_user_modules = any(map(_uses_user_modules, blobs)) or bool(call_modules)
        item = _WorkItem(next(self._ids), future, frames, blobs, uses_user_modules, timeout, max_retries)
        item.modules = call_modules
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

    # -- scheduling (lock held) -------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.broken:
            return
        self._retire_expiring()
        self._retire_idle()
        depth = self._pipeline_depth()
        while self.pending:
            if self.pending[0].solo:  # alone, and only to an idle kernel
                free = [w for w in self.workers if w.state == "ready" and not w.inflight]
            else:
                free = [w for w in self.workers
                        if w.state == "ready" and len(w.inflight) < depth and w.pipelinable()]
            if not free:
                break
            slots = sum(depth - len(w.inflight) for w in free)
            worker = min(free, key=lambda w: len(w.inflight))  # an idle kernel first
            size = min(self._batch_limit(), math.ceil(len(self.pending) / slots))
            if self.max_tasks_per_child:
                size = min(size, self.max_tasks_per_child - worker.sent)
            items = []
            while self.pending and len(items) < size:
                if items and self.pending[0].solo:
                    break
                item = self.pending.popleft()
                # False: cancelled meanwhile. A requeued item's future is already running.
                if item.requeued or item.future.set_running_or_notify_cancel():
                    items.append(item)
                if item.solo:
                    break
            if items:
                self._send(worker, items)
        starting = sum(1 for w in self.workers if w.state == "starting")
        active = sum(1 for w in self.workers if w.state not in ("stopped", "retiring"))
        if self.pending and starting < len(self.pending) and active < self.max_workers:
            self._start_worker()
        # Every kernel is busy and no other will start: until something changes (a reply, a
        # kernel ready, a death: each dispatches again), a new submit only joins the queue.
        self.saturated = bool(self.pending) and active >= self.max_workers

    def _pipeline_depth(self) -> int:
        """Queue work behind a busy kernel only for short tasks, where hiding the message
        latency pays; longer (or not yet measured) tasks wait here for a free kernel, as in
        ProcessPoolExecutor: they run in parallel and stay cancellable."""
        if self.task_seconds is not None and self.task_seconds < BATCH_SECONDS:
            return PIPELINE_DEPTH
        return 1

    def _batch_limit(self) -> int:
        if self.task_seconds is None:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.task_seconds, 1e-6))))

    def _send(self, worker: _Worker, items: list[_WorkItem]) -> None:
        batch = _Batch(items)
        tasks, frames = [], []
        now = time.time()
        sent_at = time.monotonic()
        runtime_id = worker.runtime_id
        for item in items:
            tasks.append([item.id, len(item.frames), item.timeout, item.blobs[0].key])
            frames.extend(item.frames)  # kept until done: a retry sends them again
            item.future.runtime_id = runtime_id
            item.future.started_at = now
            item.sent_at, item.worker = sent_at, worker
            if item.timeout is not None:
                self._watch()
        content = {"op": "run", "tasks": tasks}
        modules = (worker.service.modules_to_ship(_module_names(items))
                   if any(item.uses_user_modules for item in items) else None)
        if modules:
            content["modules"] = modules
        frames[:0] = self._blobs_to_send(worker, items, content, fresh=bool(modules))
        worker.inflight.add(batch)
        worker.sent += len(items)
        if self.max_tasks_per_child and worker.sent >= self.max_tasks_per_child:
            worker.state = "retiring"
        try:
            worker.service.channel.request(
                "shell", REQUEST, content, frames,
                on_reply=partial(self._on_reply, worker, batch),
                on_lost=partial(self._on_lost, worker),
                on_error=partial(self._on_reply_error, worker, batch),
            )
        except WorkerLostError as exc:
            self._break(exc)
        except BaseException as exc:  # noqa: BLE001 - this batch cannot be sent: its futures say why
            worker.inflight.discard(batch)
            worker.forget_blobs()  # the kernel may or may not have what the batch carried
            for item in batch.items.values():
                item.frames = item.blobs = item.worker = None
                _set_exception(item.future, exc)
            batch.items.clear()
            if not isinstance(exc, Exception):  # Ctrl-C in the submitting thread goes on up
                raise

    @staticmethod
    def _blobs_to_send(worker: _Worker, items: list[_WorkItem], content: dict, fresh: bool) -> list:
        """The frames of the blobs the batch needs and the kernel lacks (``content`` says which).

        ``fresh`` (a user module changed), or a cache grown past its bounds: the kernel drops
        what it holds first, and everything the batch needs is sent again.
        """
        needed = {blob.key: blob for item in items for blob in item.blobs}
        missing = [blob for key, blob in needed.items() if key not in worker.blobs]
        size = sum(blob.nbytes for blob in missing)
        if fresh or len(worker.blobs) + len(missing) > BLOB_CACHE_ITEMS or worker.blob_bytes + size > BLOB_CACHE_BYTES:
            content["drop_blobs"] = True
            worker.forget_blobs()
            missing = list(needed.values())
            size = sum(blob.nbytes for blob in missing)
        frames = []
        for blob in missing:
            worker.blobs[blob.key] = blob.nbytes
            frames.extend(blob.frames)
        worker.blob_bytes += size
        if missing:
            content["blobs"] = [[blob.key, len(blob.frames)] for blob in missing]
        return frames

    def _start_worker(self) -> None:
        worker = _Worker(f"dlexec-worker-{next(self._names)}")
        self.workers.append(worker)
        self.history.append(worker)
        worker.thread = threading.Thread(target=self._run_start, args=(worker,), name=worker.name, daemon=True)
        _threads.start(worker.thread)

    # -- worker life ------------------------------------------------------------------------

    def _run_start(self, worker: _Worker) -> None:
        """Start one kernel and run the initializer in it (in the worker's own thread).

        Whatever fails here, however, fails the futures waiting for a runtime (the pool
        breaks, as a ProcessPoolExecutor whose worker cannot start): nothing waits for a
        worker that will never be ready.
        """
        service = None
        try:
            service = RuntimeService(worker.name, backend=self.backend, start_timeout=self.start_timeout,
                                     **self.runtime_options)
            with self.lock:
                if worker.state == "stopped":  # the pool stopped before this runtime began to start
                    return
                worker.service = service
            service.start()
            service.channel.add_exit_callback(partial(self._on_lost, worker))
            self._initialize(service)
            if service.expired_at:
                worker.expires_at = float(service.expired_at)
                # Each runtime works for at least half its reservation, whatever the margin:
                # otherwise a short reservation would be retired as soon as it is up, again and again.
                reserved = worker.expires_at - float(service.started_at or time.time())
                worker.expiry_margin = min(self.expiry_margin, max(0.0, reserved / 2))
        except BaseException as exc:  # noqa: BLE001 - reported through the futures
            if service is not None:
                _terminate_quietly(service)
            with self.lock:
                cancelled = worker.state == "stopped"
                worker.state = "stopped"
                if not cancelled:
                    if not isinstance(exc, InitializerFailed):
                        error = WorkerLostError(f"A runtime could not be started: {exc}", worker.name, str(exc))
                        error.__cause__ = exc
                        exc = error
                    self._break(exc)
                self.changed.notify_all()
            return
        with self.lock:
            if worker.state == "stopped" or self.broken:  # shut down or broken while starting
                worker.state = "stopped"
                stop = True
            else:
                stop = False
                worker.state = "ready"
                worker.idle_since = time.monotonic()
                if self.idle_timeout is not None:
                    self._watch()
                self._dispatch()
            self.changed.notify_all()
        if stop:
            service.terminate()

    def _initialize(self, service: RuntimeService) -> None:
        """Run the initializer in a fresh kernel; InitializerFailed if it raises."""
        if self.initializer_frames is None:
            return
        modules = service.modules_to_ship(self.initializer_modules) if self.initializer_uses_user_modules else []
        content, frames = service.channel.call("init", {"modules": modules}, self.initializer_frames)
        if content.get("status") != "ok":
            cause = rebuild_exception(content.get("info") or {}, frames)
            error = InitializerFailed(
                f"A runtime initializer failed, the pool is not usable anymore: {type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            raise error

    def _on_reply(self, worker: _Worker, batch: _Batch, msg: dict) -> bool:
        """A ``run`` reply (I/O thread): set the futures it reports. True when it is the last."""
        try:
            return self._handle_reply(worker, batch, msg)
        except BaseException as exc:  # noqa: BLE001 - never leave the batch's futures waiting
            error = RuntimeError(f"dlexec could not handle the reply of runtime {worker.runtime_id}: {exc!r}")
            error.__cause__ = exc
            self._on_reply_error(worker, batch, error)
            return True

    def _on_reply_error(self, worker: _Worker, batch: _Batch, error: BaseException) -> None:
        """A message for this batch could not be handled: its futures fail with ``error``."""
        for item in list(batch.items.values()):
            _set_exception(item.future, error)
        batch.items.clear()
        self._batch_done(worker, batch)

    def _handle_reply(self, worker: _Worker, batch: _Batch, msg: dict) -> bool:
        content = msg["content"]
        frames = msg.get("buffers") or []
        done = []
        if content.get("status") != "ok":  # the worker failed outside any task
            error = rebuild_exception(content.get("info") or {}, frames)
            done = [(item, False, error) for item in batch.items.values()]
            batch.items.clear()
        else:
            offset, seconds = 0, 0.0
            for task_id, status, count, info, elapsed, out, err in content["results"]:
                item_frames = frames[offset: offset + count]
                offset += count
                seconds += elapsed
                item = batch.items.get(task_id)  # removed once its future is set
                if item is None:  # a late reply for a task already settled (its kernel was restarted)
                    continue
                item.future.stdout, item.future.stderr = out, err
                item.future.run_seconds = elapsed
                done.append((item, *_outcome(status, info, item_frames, item, worker)))
            worker.tasks += len(done)
            worker.busy_seconds += seconds
            if done:
                sample = seconds / len(done)
                average = self.task_seconds
                self.task_seconds = sample if average is None else 0.7 * average + 0.3 * sample
        final = content.get("final", True)
        if final:  # anything not reported by now never will be (not with a well-behaved worker)
            reported = {item.id for item, _, _ in done}
            lost = RuntimeError("the runtime did not report the result of this task")
            done.extend((item, False, lost) for item in batch.items.values() if item.id not in reported)
        now = time.time()
        for item, ok, value in done:
            item.future.finished_at = now
            item.frames = item.blobs = item.worker = None
            if ok is None:
                item.future._set_cancelled()
            elif ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
            batch.items.pop(item.id, None)
        if final:
            self._batch_done(worker, batch)
        return final

    def _batch_done(self, worker: _Worker, batch: _Batch) -> None:
        with self.lock:
            worker.inflight.discard(batch)
            if not worker.inflight:
                worker.idle_since = time.monotonic()
                if self.idle_timeout is not None:
                    self._watch()
            retire = worker.state == "retiring" and not worker.inflight
            if retire:
                worker.state = "stopped"
                self.workers.remove(worker)
            self._dispatch()
            self.changed.notify_all()
        if retire:
            _threads.start(threading.Thread(target=worker.service.terminate, daemon=True))

    def _on_lost(self, worker: _Worker, reason: str) -> None:
        """A kernel died (I/O thread): see :meth:`_handle_loss`. If even that fails, the pool
        breaks with the reason, so that no future waits for a runtime that is gone."""
        try:
            self._handle_loss(worker, reason)
        except BaseException as exc:  # noqa: BLE001
            _log.error("dlexec: could not handle the loss of runtime %s", worker.runtime_id, exc_info=True)
            with self.lock:
                self._break(WorkerLostError(f"A runtime in the pool terminated abruptly ({reason}), and dlexec "
                                            f"could not recover: {exc!r}", worker.runtime_id, reason))

    def _handle_loss(self, worker: _Worker, reason: str) -> None:
        """A kernel died (I/O thread).

        With ``max_retries=0`` the pool is broken, as ProcessPoolExecutor's would be. With
        retries, its tasks go back to the queue (alone, so that a task that kills its
        kernel is caught and blamed after its retries) and a new kernel takes its place.
        A runtime that died at its reservation's end loses no task and no retry.
        """
        with self.lock:
            if worker.state == "stopped" or self.broken:
                return
            expired = worker.expires_at is not None and time.time() >= worker.expires_at - 1.0
            items = [item for batch in worker.inflight for item in batch.items.values()]
            if not expired and not any(item.max_retries for item in items) and self.max_retries == 0:
                error = WorkerLostError(
                    "A runtime in the pool terminated abruptly while the future was running or pending: "
                    f"{reason}",
                    runtime_id=worker.runtime_id,
                    reason=reason,
                )
                self._break(error)
                return
            worker.state = "stopped"
            worker.inflight.clear()
            self.workers.remove(worker)
            failed = []
            for item in reversed(items):  # back to the front of the queue, in order
                if not expired:
                    item.deaths.append(reason)
                if len(item.deaths) > item.max_retries:
                    failed.append(item)
                else:
                    self._requeue(item, solo=True)
            self._dispatch()
            self.changed.notify_all()
        for item in failed:
            deaths = len(item.deaths)
            item.future.set_exception(WorkerLostError(
                f"this task was running on {deaths} runtime{'s' if deaths > 1 else ''} that died "
                f"(max_retries={item.max_retries}), so it is the likely cause; the last: {reason}",
                runtime_id=worker.runtime_id, reason=reason))
        _threads.start(threading.Thread(target=worker.service.terminate, daemon=True))

    def _requeue(self, item: _WorkItem, solo: bool = False) -> None:
        """Put an item whose kernel went away back at the front of the queue (lock held)."""
        item.requeued, item.worker, item.sent_at = True, None, None
        item.solo = item.solo or solo
        if item.stop_requested is not None:  # it was being stopped anyway
            item.future._set_cancelled()
            return
        self.pending.appendleft(item)

    # -- stopping tasks -------------------------------------------------------------------------

    def interrupt(self, item: _WorkItem) -> bool:
        """TaskFuture.interrupt: stop the task wherever it is (see there)."""
        with self.lock:
            if item.future.done():
                return False
            if item.worker is None:  # queued again after its kernel died or restarted
                try:
                    self.pending.remove(item)
                except ValueError:
                    return False
                item.frames = None
                return item.future._set_cancelled()
            if item.stop_requested is None:
                item.stop_requested = time.monotonic()
                channel = item.worker.service.channel
                try:
                    channel.request("control", CANCEL, {"task_ids": [item.id]}, on_reply=lambda msg: True)
                except WorkerLostError:
                    pass  # its death requeues it, and the requeue cancels it
                self._watch()
        return True

    def _watch(self) -> None:
        """Start the watchdog if it is not running (lock held)."""
        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(target=self._watch_loop, name="dlexec-watchdog", daemon=True)
            _threads.start(self._watchdog)

    def _watch_loop(self) -> None:
        """Restart kernels that ignore a stop or a timeout; retire runtimes about to expire.

        If it fails, the pool breaks with the reason: timeouts it no longer enforces would
        otherwise let futures wait forever."""
        try:
            self._watch_steps()
        except BaseException as exc:  # noqa: BLE001
            _log.error("dlexec: the executor's watchdog failed", exc_info=True)
            with self.lock:
                self._watchdog = None
                self._break(WorkerLostError(f"dlexec's watchdog thread failed: {exc!r}"))

    def _watch_steps(self) -> None:
        while True:
            time.sleep(0.2)
            with self.lock:
                if self.broken or (self.shutting_down and not any(w.inflight for w in self.workers)):
                    return
                now = time.monotonic()
                stuck = set()
                for worker in self.workers:
                    for batch in worker.inflight:
                        for item in batch.items.values():
                            if item.stop_requested is not None and now > item.stop_requested + self.interrupt_grace:
                                stuck.add(worker)
                            elif item.timeout is not None and item.sent_at is not None and (
                                    now > item.sent_at + item.timeout + self.interrupt_grace):
                                stuck.add(worker)
                for worker in stuck:
                    if worker.state == "ready" or worker.state == "retiring":
                        worker.state = "restarting"
                        _threads.start(threading.Thread(target=self._restart, args=(worker,), daemon=True))
                self._dispatch()  # also retires runtimes about to expire
                watching = any(item.timeout is not None or item.stop_requested is not None
                               for w in self.workers for b in w.inflight for item in b.items.values())
                expiring = any(w.expires_at is not None for w in self.workers)
                idling = self.idle_timeout is not None and any(w.state == "ready" for w in self.workers)
                if not watching and not expiring and not idling:
                    self._watchdog = None
                    return

    def _restart(self, worker: _Worker) -> None:
        """A task will not stop: restart its kernel; the batch's other tasks go back to the queue."""
        with self.lock:
            items = [item for batch in worker.inflight for item in batch.items.values()]
            for batch in worker.inflight:
                batch.items.clear()  # late replies from the old kernel are ignored
            worker.inflight.clear()
        timed_out = []
        for item in reversed(items):
            overdue = item.timeout is not None and item.stop_requested is None
            if overdue and time.monotonic() > item.sent_at + item.timeout:
                timed_out.append(item)
        with self.lock:
            for item in reversed(items):
                if item not in timed_out:
                    self._requeue(item)
        for item in timed_out:
            item.frames = item.worker = None
            item.future.set_exception(TimeoutError(
                f"the task ran longer than its timeout of {item.timeout:g} s and did not stop when interrupted; "
                f"its runtime {worker.runtime_id} was restarted"))
        try:
            with self.lock:
                worker.forget_blobs()
            worker.service.restart()
            self._initialize(worker.service)
        except BaseException as exc:  # noqa: BLE001 - replace the runtime instead
            if not self.shutting_down:
                _log.warning("dlexec: could not restart %s (%s); replacing it", worker.runtime_id, exc)
            with self.lock:
                if worker in self.workers:
                    self.workers.remove(worker)
                worker.state = "stopped"
                self._dispatch()
            worker.service.terminate()
            return
        with self.lock:
            if worker.state == "restarting":
                worker.state = "ready"
            self._dispatch()
            self.changed.notify_all()

    def resize(self, max_workers: int) -> None:
        """Change the number of runtimes: more start on demand, surplus ones stop (idle
        ones first, busy ones once their work is done)."""
        with self.lock:
            self.max_workers = max_workers
            active = [w for w in self.workers if w.state in ("ready", "retiring", "restarting", "starting")]
            surplus = len([w for w in active if w.state != "retiring"]) - max_workers
            for worker in sorted((w for w in active if w.state == "ready"), key=lambda w: bool(w.inflight)):
                if surplus <= 0:
                    break
                surplus -= 1
                worker.state = "retiring"
                if not worker.inflight:
                    worker.state = "stopped"
                    self.workers.remove(worker)
                    _threads.start(threading.Thread(target=worker.service.terminate, daemon=True))
            self._dispatch()

    def _retire_idle(self) -> None:
        """Stop the runtimes that have had nothing to do for ``idle_timeout`` seconds (lock held)."""
        if self.idle_timeout is None or self.pending:
            return
        limit = time.monotonic() - self.idle_timeout
        for worker in list(self.workers):
            if worker.state == "ready" and not worker.inflight and worker.idle_since < limit:
                worker.state = "stopped"
                self.workers.remove(worker)
                _threads.start(threading.Thread(target=worker.service.terminate, daemon=True))

    def _retire_expiring(self) -> None:
        """Give no new work to runtimes whose reservation ends within ``expiry_margin`` (lock held)."""
        now = time.time()
        for worker in self.workers:
            if worker.expires_at is not None and worker.state == "ready" and (
                    worker.expires_at - now < worker.expiry_margin):
                worker.state = "retiring"
                if not worker.inflight:
                    worker.state = "stopped"
                    self.workers.remove(worker)
                    _threads.start(threading.Thread(target=worker.service.terminate, daemon=True))
            elif worker.expires_at is not None and worker.state in ("ready", "retiring"):
                self._watch()

    def _break(self, error: BaseException) -> None:
        """Fail every pending and running future with ``error`` and stop every kernel (lock held)."""
        if self.broken:
            return
        self.broken = str(error)
        items = list(self.pending)
        self.pending.clear()
        workers = list(self.workers)
        for worker in workers:
            for batch in worker.inflight:
                items.extend(batch.items.values())
                batch.items.clear()
            worker.inflight.clear()
            if worker.state != "starting":
                worker.state = "stopped"
        self.changed.notify_all()
        _threads.start(threading.Thread(target=self._fail_and_stop, args=(items, workers, error), daemon=True))

    def _fail_and_stop(self, items, workers, error) -> None:
        for item in items:
            try:
                item.future.set_exception(error)
            except InvalidStateError:  # cancelled meanwhile
                pass
        _terminate_all(w for w in workers if w.state == "stopped")

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        cancelled = []
        with self.lock:
            self.shutting_down = True
            if cancel_futures:
                cancelled = list(self.pending)
                self.pending.clear()
            if self._finisher is None:
                self._finisher = threading.Thread(target=self._finish, name="dlexec-shutdown", daemon=True)
                _threads.start(self._finisher)
            finisher = self._finisher
            self.changed.notify_all()
        _cancel(cancelled)  # outside the lock: the futures' callbacks may call back into the executor
        if wait:
            finisher.join()

    def _finish(self) -> None:
        """Wait for the pending work, then stop every kernel."""
        with self.lock:
            while not self.broken and (self.pending or any(w.inflight for w in self.workers)):
                self.changed.wait(0.5)
                self._check_progress()
            workers = list(self.workers)
            self.workers.clear()
            for worker in workers:
                worker.state = "stopped"
            killed = self.killed
        for worker in workers:
            if killed and worker.service is not None and not worker.service.is_started:
                # Stopped at once, not when it is up: a paid runtime still being created is
                # deleted as soon as its create request answers (see runtimes.datalayer).
                _terminate_quietly(worker.service)
        for worker in workers:  # a kernel still starting stops itself when it is up
            if worker.thread is not None and worker.thread is not threading.current_thread():
                worker.thread.join(self.start_timeout + 5)
        _terminate_all(workers)
        if self.given_runtime is not None:  # the runtime handed in: deleted once its kernels are gone
            _terminate_quietly(self.given_runtime)
            self.given_runtime = None
        _live_pools.discard(self)

    def _check_progress(self) -> None:
        """While shutdown waits (lock held): a runtime whose message threads are gone without
        a word is reported lost (its futures fail, or go elsewhere with retries), and queued
        work gets a runtime if none is left. So the wait ends, whatever happened."""
        for worker in list(self.workers):
            if worker.inflight and worker.service is not None and worker.service.is_started:
                worker.service.channel.check_connected()
        self._dispatch()

    def kill(self) -> None:
        """Stop at once: cancel what has not started, fail what runs, stop every kernel."""
        with self.lock:
            self.shutting_down = self.killed = True
            cancelled = list(self.pending)
            self.pending.clear()
            self._break(WorkerLostError("the executor was stopped while the task was running"))
        _cancel(cancelled)
        self.shutdown(wait=True)


def _map(executor, fn: Callable, calls, timeout: float | None, buffersize: int | None, progress=None):
    """``Executor.map`` of Python 3.14 (with ``buffersize``), ``fn`` serialized once; its tasks
    counted in ``progress`` (a :class:`~dlexec.stats.MapProgress`, for the notebook view)."""
    end_time = None if timeout is None else timeout + time.monotonic()
    pool, settings = executor._pool, executor._task_settings
    try:
        blob = pool.callable_blob(fn)
    except Exception as exc:  # noqa: BLE001 - raised by each result, as submit would
        blob = exc

    def submit(group):
        futures = pool.submit_many(None, group, *settings, fn_blob=blob)
        if progress is not None:
            progress.add_submitted(len(futures))
            for future in futures:
                future.add_done_callback(progress.track)
        return futures

    if buffersize:
        first = [(args, {}) for args in itertools.islice(calls, buffersize)]
        fs = deque(submit(first) if first else ())
    else:
        fs = []
        while group := [(args, {}) for args in itertools.islice(calls, MAP_GROUP)]:
            fs.extend(submit(group))
    # A result iterator does not keep the executor alive (nor options(), the executor's).
    executor_ref = weakref.ref(getattr(executor, "_executor", executor))

    def result_iterator():
        try:
            fs.reverse()  # pop() from the end: the first submitted first
            while fs:
                if buffersize and executor_ref() is not None and (args := next(calls, None)) is not None:
                    fs.appendleft(submit([(args, {})])[0])
                if end_time is None:
                    yield _result_or_cancel(fs.pop())
                else:
                    yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
        finally:
            for future in fs:
                future.cancel()

    return result_iterator()


def _result_or_cancel(future, timeout=None):
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # no reference kept to a result the caller may drop


def _common_length(iterables) -> int | None:
    try:
        return min(len(iterable) for iterable in iterables)
    except (TypeError, ValueError):  # not all sized, or no iterables
        return None


def _uses_user_modules(blob: Blob) -> bool:
    if blob.uses_user_modules is None:
        blob.uses_user_modules = bool(user_modules(blob.modules))
    return blob.uses_user_modules


def _module_names(items: list[_WorkItem]) -> set[str]:
    """The modules that a batch's callables, shared objects and arguments refer to."""
    names: set[str] = set()
    for item in items:
        for blob in item.blobs:
            if _uses_user_modules(blob):  # not only the first: any() in _item stops at it
                names |= blob.modules
        if item.modules:
            names |= item.modules
    return names


def _seconds(name: str, value, *, optional: bool = False, zero: bool = False) -> float | None:
    """A duration option as a float: a real number, > 0 (>= 0 if ``zero``), or None if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or _is_decimal(value)):
        kind = "a number of seconds" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, not {value!r}")
    return seconds


def _is_decimal(value) -> bool:
    return type(value).__name__ == "Decimal" and type(value).__module__ in ("decimal", "_decimal", "_pydecimal")


def _set_exception(future: TaskFuture, error: BaseException) -> None:
    """Fail a future unless it is already done (cancelled or settled meanwhile)."""
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


def _cancel(items: list[_WorkItem]) -> None:
    """Cancel queued items; a requeued one (its future already runs) is marked cancelled."""
    for item in items:
        item.frames = None
        if not item.future.cancel():
            item.future._set_cancelled()


def _outcome(status: str, info: dict | None, frames: list, item: _WorkItem, worker: _Worker) -> tuple[Any, Any]:
    """``(True, result)``, ``(False, exception)`` or ``(None, None)`` (cancelled) for one task's reply."""
    if status == "cancelled":
        return None, None
    if status == "timeout":
        return False, TimeoutError(
            f"the task ran longer than its timeout of {item.timeout:g} s on runtime {worker.runtime_id}; "
            "it was stopped there")
    if status == "ok":
        try:
            return True, serialization.loads(frames)
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: it fails this future, not the thread
            serialization.add_note(exc, f"dlexec: the task's result, sent by runtime {worker.runtime_id}, could not "
                                        "be unpickled here")
            return False, exc
    return False, rebuild_exception(info or {}, frames)


def _terminate_quietly(service: RuntimeService) -> None:
    try:
        service.terminate()
    except BaseException:  # noqa: BLE001 - a cleanup reports, never raises
        _log.warning("dlexec: could not stop runtime %s", service.name, exc_info=True)


def _terminate_all(workers) -> None:
    """Stop the workers' kernels in parallel (remote ones take a request each)."""
    threads = [threading.Thread(target=w.service.terminate, daemon=True) for w in workers if w.service is not None]
    for thread in threads:
        _threads.start(thread)
    for thread in threads:
        thread.join(30)


class DatalayerExecutor(Executor):
    """A ``ProcessPoolExecutor`` whose workers are Jupyter kernels (runtimes).

    The arguments are ``ProcessPoolExecutor``'s; ``mp_context`` is accepted and ignored
    (kernels are not multiprocessing children). The keyword-only options choose the
    backend (``"local"``, the default, or ``$DLEXEC_BACKEND``), how long a runtime may
    take to start, and pass backend settings on (for ``local``: ``kernel_name``,
    ``extra_arguments``, ``env``, ``cwd``).

    Callables, arguments and results travel with dill; remote exceptions are re-raised
    with their remote traceback; a runtime that dies breaks the pool with a
    :class:`~dlexec.errors.WorkerLostError` (a ``BrokenProcessPool``).

    ``task_timeout``, ``max_retries`` and ``interrupt_grace``: see :meth:`options` and
    :meth:`TaskFuture.interrupt`. ``expiry_margin``: seconds before a paid runtime's
    reservation ends from which it gets no new work. ``idle_timeout``: seconds after which
    a runtime with nothing to do is stopped (a new one starts when work comes).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str | None = None,
        start_timeout: float = 60.0,
        task_timeout: float | None = None,
        max_retries: int = 0,
        interrupt_grace: float = 5.0,
        expiry_margin: float = 60.0,
        idle_timeout: float | None = None,
        **runtime_options: Any,
    ):
        if max_workers is None:
            from loky import cpu_count

            max_workers = cpu_count()
        elif not isinstance(max_workers, numbers.Integral) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an integer, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        start_timeout = _seconds("start_timeout", start_timeout)
        task_timeout = _seconds("task_timeout", task_timeout, optional=True)
        interrupt_grace = _seconds("interrupt_grace", interrupt_grace, zero=True)
        expiry_margin = _seconds("expiry_margin", expiry_margin, zero=True)
        idle_timeout = _seconds("idle_timeout", idle_timeout, optional=True)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError("max_retries must be an integer >= 0")
        backend = prepare(backend, runtime_options)  # Datalayer arguments select Datalayer, as for RuntimeService
        # The runtimes' options are checked now, not in a worker thread at the first task.
        RuntimeService.check_options(backend, runtime_options)
        given = None
        if backend == "datalayer" and runtime_options.get("delete_given", True) and all(
                runtime_options.get(key) for key in ("pod_name", "ingress", "jupyter_token")):
            # A runtime handed in: every worker starts a kernel on it, and the executor (not the
            # first worker to stop) deletes it at shutdown, as RuntimeService.terminate() would.
            given = RuntimeService("dlexec-given-runtime", backend=backend, **runtime_options)
            runtime_options = {**runtime_options, "delete_given": False}
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._pool = _Pool(max_workers, None if initializer is None else (initializer, tuple(initargs)),
                           max_tasks_per_child, backend, start_timeout, runtime_options,
                           task_timeout=task_timeout, max_retries=max_retries, interrupt_grace=interrupt_grace,
                           expiry_margin=expiry_margin, idle_timeout=idle_timeout)
        self._pool.given_runtime = given
        # Garbage collection lets the pending work finish, then stops the kernels.
        self._finalizer = weakref.finalize(self, self._pool.shutdown, False)

    @property
    def max_workers(self) -> int:
        return self._max_workers

    #: (timeout, max_retries) of the tasks submitted through this object: the defaults.
    _task_settings: tuple = (None, None)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in a runtime; returns a :class:`TaskFuture`."""
        return self._pool.submit(fn, args, kwargs, *self._task_settings)

    def map(self, fn: Callable, *iterables, timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None, progress: bool | dict = False):
        """As ``ProcessPoolExecutor.map`` (Python 3.14's, with ``buffersize``): results in order.

        ``fn`` is serialized once for the whole call. ``chunksize``: items per remote call.
        ``buffersize``: at most that many calls submitted ahead of the results consumed, so
        that an endless iterable works. ``progress=True`` shows a progress bar when run in a
        terminal or a notebook (a dict: options for :func:`dlexec.progress`).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        total = _common_length(iterables)
        record = view.map_progress(fn, None if total is None else -(-total // chunksize), chunksize)
        if chunksize > 1:
            fn, iterables = partial(_process_chunk, fn), (_get_chunks(*iterables, chunksize=chunksize),)
        results = view.tracked(self._pool, _map(self, fn, zip(*iterables), timeout, buffersize, record), record)
        if chunksize > 1:
            results = _chain_from_iterable_of_lists(results)
        if progress:
            from .progress import progress as show

            results = show(results, total=total, **(progress if isinstance(progress, dict) else {}))
        return results

    def share(self, obj: Any) -> Shared:
        """``obj`` to be sent once per runtime rather than with every task that uses it.

        Pass the returned :class:`~dlexec.Shared` to ``submit`` or ``map`` in place of
        ``obj``, as an argument or inside one; the task receives ``obj`` (one copy per
        runtime, shared by its tasks: treat it as read-only).
        """
        return Shared(obj)

    def options(self, *, timeout: float | None = None, max_retries: int | None = None) -> _Options:
        """The same ``submit`` and ``map``, with these settings for the tasks sent through them.

        ``timeout``: seconds a task may run; past that it is stopped and its future raises
        ``TimeoutError``. ``max_retries``: how many dying runtimes a task survives (it is
        resubmitted to another one). Unset ones keep the executor's defaults.
        """
        return _Options(self, timeout, max_retries)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``ProcessPoolExecutor.shutdown``; afterwards no kernel of this executor runs.

        The executors that :meth:`options` returns share it: shutting one down shuts all."""
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, TerminatedBySignal)):
            self._pool.kill()  # Ctrl-C or SIGTERM: do not wait for the remote work
        else:
            self.shutdown(wait=True)
        return False

    def terminate_workers(self) -> None:
        """As Python 3.14's ``ProcessPoolExecutor.terminate_workers``: stop every runtime now.

        Queued tasks are cancelled, running ones fail with
        :class:`~dlexec.errors.WorkerLostError` (a ``BrokenProcessPool``), and the executor
        is shut down. Kernels are stopped and remote runtimes deleted before it returns.
        """
        self._pool.kill()

    def kill_workers(self) -> None:
        """As Python 3.14's ``ProcessPoolExecutor.kill_workers``: here the same as
        :meth:`terminate_workers` (a kernel is always stopped with SIGKILL, after the task
        interrupt that :meth:`TaskFuture.interrupt` gives the gentle way)."""
        self._pool.kill()

    def _resize(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._pool.resize(max_workers)

    def stats(self) -> ExecutorStats:
        """Tasks submitted, pending, running, done, failed and cancelled, and each runtime's
        tasks, busy time, runtime-seconds and credits (see :mod:`dlexec.stats`)."""
        return self._pool.stats()

    def _state(self) -> str:
        pool = self._pool
        if pool.broken and not pool.killed:
            return "broken"
        return "shut down" if pool.shutting_down else "running"

    def __repr__(self) -> str:
        stats = self._pool.stats()
        ready = sum(1 for r in stats.runtimes if r.state in ("ready", "retiring"))
        text = (f"<DatalayerExecutor {self._pool.backend} {self._state()}: {ready}/{self._max_workers} runtimes ready, "
                f"{stats.running} running, {stats.pending} pending, {stats.done} done, {stats.failed} failed")
        if stats.credits is not None:
            text += f", {stats.credits:.2f} credits"
        return text + ">"

    def _repr_html_(self) -> str:
        return view.render(self._pool)

    def _ipython_display_(self) -> None:
        """In a notebook: the live view (see :mod:`dlexec.view`)."""
        view.display(self._pool)


class _Options(Executor):
    """``executor.options(...)``: submit and map with per-call task settings."""

    def __init__(self, executor: DatalayerExecutor, timeout: float | None, max_retries: int | None):
        timeout = _seconds("timeout", timeout, optional=True)
        if max_retries is not None and (not isinstance(max_retries, int) or isinstance(max_retries, bool)
                                        or max_retries < 0):
            raise ValueError("max_retries must be an integer >= 0, or None")
        self._executor = executor
        self._pool = executor._pool
        self._task_settings = (timeout, max_retries)

    submit = DatalayerExecutor.submit
    map = DatalayerExecutor.map
    share = DatalayerExecutor.share

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait, cancel_futures=cancel_futures)
