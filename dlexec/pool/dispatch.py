"""Batches out and replies in: the pool's traffic with its runtimes.

:class:`Dispatcher` sends what :func:`~.scheduler.plan` says (the pool's lock held), one
``run`` request per batch through the runtime's :class:`~dlexec.session.KernelSession`, and
reads the replies on the runtime's I/O thread: futures are settled there, outside the lock
(:mod:`.results`), and the batch's end (under the lock) lets the next batch go.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from ..errors import WorkerLostError
from ..kernel.wire import Task
from ..modules import user_modules
from . import results, scheduler
from .handle import State, WorkerHandle
from .work import Batch, WorkItem

if TYPE_CHECKING:
    from ..serialization import Blob
    from .pool import Pool


class Dispatcher:
    """Sends the pool's batches and handles their replies."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def dispatch(self) -> None:
        """Send what the scheduler plans; start a runtime if it says so. Runs whenever something
        changes (a submit, a runtime ready, a reply, a death)."""
        pool = self.pool
        if pool.broken:
            return
        pool.supervisor.retire_expiring()
        pool.supervisor.retire_idle()
        while True:
            plan = scheduler.plan(pool.pending, pool.workers, pool.task_seconds, pool.max_workers,
                                  pool.max_tasks_per_child)
            replan = False  # a runtime planned for cancelled items only is still free
            for worker, count in plan.batches:
                items = []
                for _ in range(count):
                    item = pool.pending.popleft()
                    # False: cancelled meanwhile. A requeued item's future is already running.
                    if item.requeued or item.future.set_running_or_notify_cancel():
                        items.append(item)
                if not items:
                    replan = True
                    continue
                self._send(worker, items)
                if pool.broken:  # its runtime was gone: the break failed every queued future
                    return
                if worker.state is State.STOPPED:  # gone as the batch went (requeued): the plan is stale
                    replan = True
                    break
            if not replan:
                break
        if plan.start_worker:
            pool.start_worker()
        # Every runtime is busy and no other will start: until something changes (a reply, a
        # runtime ready, a death: each dispatches again), a new submit only joins the queue.
        pool.saturated = plan.saturated

    def _send(self, worker: WorkerHandle, items: list[WorkItem]) -> None:
        pool = self.pool
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
                pool.supervisor.watch()
        content = {"op": "run", "tasks": tasks}
        modules = (worker.session.modules_to_ship(_module_names(items))
                   if any(item.uses_user_modules for item in items) else None)
        if modules:
            content["modules"] = modules
        frames[:0] = worker.blobs_to_send(items, content, fresh=bool(modules))
        worker.inflight.add(batch)
        worker.sent += len(items)
        if pool.max_tasks_per_child and worker.sent >= pool.max_tasks_per_child:
            worker.state = State.RETIRING
        try:
            worker.session.request(content, frames, on_reply=partial(self._on_reply, worker, batch),
                                   on_lost=partial(pool.supervisor.on_lost, worker),
                                   on_error=partial(self._on_reply_error, worker, batch))
        except BaseException as exc:  # noqa: BLE001 - this batch cannot be sent
            worker.inflight.discard(batch)
            worker.forget_blobs()  # the kernel may or may not have what the batch carried
            items = list(batch.items.values())
            batch.items.clear()
            if isinstance(exc, WorkerLostError) or not _alive(worker):
                # The runtime is gone, its death maybe not reported yet: the batch never ran and
                # goes back to the queue (no retry spent); the death is handled as any other.
                for item in reversed(items):
                    pool.requeue(item)
                pool.supervisor.on_lost(worker, getattr(exc, "reason", None) or str(exc))
            else:  # the message itself cannot be sent: its futures say why
                pool.later(results.settle, [(item, False, exc) for item in items])
            if not isinstance(exc, Exception):  # Ctrl-C in the submitting thread goes on up
                raise

    # -- replies (a runtime's I/O thread) ---------------------------------------------------

    def _on_reply(self, worker: WorkerHandle, batch: Batch, msg: dict) -> bool:
        """A ``run`` reply: settle the futures it reports. True when it is the batch's last.

        The reply is read without the lock (unpickling takes time); the items it settles are
        then claimed from the batch under the lock, so that an item that a restart or a break
        took meanwhile (its future is theirs) is left alone."""
        pool = self.pool
        try:
            content = msg["content"]
            with pool.lock:
                items = dict(batch.items)
            done, seconds = results.read_reply(content, msg.get("buffers") or [], items, worker.runtime_id)
            with pool.lock:
                done = [outcome for outcome in done if batch.items.pop(outcome[0].id, None) is not None]
                if content.get("status") == "ok" and done:
                    worker.tasks += len(done)
                    worker.busy_seconds += seconds
                    sample, average = seconds / len(done), pool.task_seconds
                    pool.task_seconds = sample if average is None else 0.7 * average + 0.3 * sample
            results.settle(done)
            final = content.get("final", True)
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
        with self.pool.lock:
            items = list(batch.items.values())
            batch.items.clear()
        results.settle([(item, False, error) for item in items])
        self._batch_done(worker, batch)

    def _batch_done(self, worker: WorkerHandle, batch: Batch) -> None:
        pool = self.pool
        with pool.locked():
            worker.inflight.discard(batch)
            if not worker.inflight:
                worker.idle_since = time.monotonic()
                if pool.supervisor.idle_timeout is not None:
                    pool.supervisor.watch()
                if worker.state is State.RETIRING:
                    pool.remove(worker)
            self.dispatch()
            pool.changed.notify_all()


def _alive(worker: WorkerHandle) -> bool:
    try:
        return worker.session.runtime.is_alive()
    except Exception:  # noqa: BLE001 - a runtime that cannot tell is not sent to again
        return False


def uses_user_modules(blob: Blob) -> bool:
    if blob.uses_user_modules is None:
        blob.uses_user_modules = bool(user_modules(blob.modules))
    return blob.uses_user_modules


def _module_names(items: list[WorkItem]) -> set[str]:
    """The modules that a batch's callables, shared objects and arguments refer to."""
    names: set[str] = set()
    for item in items:
        for blob in item.blobs:
            if uses_user_modules(blob):  # not only the first: any() at submit stops at it
                names |= blob.modules
        if item.modules:
            names |= item.modules
    return names
