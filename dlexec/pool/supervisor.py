"""The runtimes' lives: start (in a thread each) and initialize, restart, lose, retire.

:class:`Supervisor` works on the pool's state under the pool's lock (the pool owns it); what
takes time (starting, restarting, stopping a runtime) runs in threads of its own, without
the lock. Its :class:`~.watchdog.Watchdog` restarts runtimes whose task will not stop and
retires expiring and idle ones.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from .. import _threads
from ..errors import InitializerFailed, WorkerLostError
from ..session import KernelSession
from ..tracebacks import rebuild_exception
from .handle import State, WorkerHandle
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .pool import Pool

_log = logging.getLogger("dlexec")


class Supervisor:
    """Starts, restarts, retires and watches the pool's runtimes."""

    def __init__(self, pool: Pool, runtime_factory, *, start_timeout: float, ship_modules,
                 initializer=None, interrupt_grace: float = 5.0, expiry_margin: float = 60.0,
                 idle_timeout: float | None = None):
        self.pool = pool
        self.runtime_factory = runtime_factory  # (name) -> Runtime
        self.start_timeout, self.ship_modules = start_timeout, ship_modules
        self.initializer = initializer  # (frames, user modules) of (initializer, initargs), or None
        self.interrupt_grace, self.expiry_margin, self.idle_timeout = interrupt_grace, expiry_margin, idle_timeout
        self.watchdog = Watchdog(self)

    # -- start ----------------------------------------------------------------------------------

    def start_worker(self, name: str) -> WorkerHandle:
        """A new runtime, started in a thread of its own (pool's lock held)."""
        worker = WorkerHandle(name)
        worker.thread = threading.Thread(target=self._run_start, args=(worker,), name=name, daemon=True)
        _threads.start(worker.thread)
        return worker

    def _run_start(self, worker: WorkerHandle) -> None:
        """Start one runtime and run the initializer in it (in the worker's own thread).

        Whatever fails here, however, fails the futures waiting for a runtime (the pool
        breaks, as a ProcessPoolExecutor whose worker cannot start): nothing waits for a
        worker that will never be ready.
        """
        pool = self.pool
        session = None
        try:
            session = KernelSession(self.runtime_factory(worker.name), self.start_timeout, self.ship_modules)
            with pool.lock:
                if worker.state is State.STOPPED:  # the pool stopped before this runtime began to start
                    session.terminate()
                    return
                worker.session = session
            session.start()
            session.channel.add_exit_callback(partial(self.on_lost, worker))
            setup = getattr(self.runtime_factory, "setup", None)
            if setup is not None:  # e.g. a local snapshot's variables
                setup(session)
            self.initialize(session)
            self._note_reservation(worker, session.facts)
        except BaseException as exc:  # noqa: BLE001 - reported through the futures
            if session is not None:
                session.terminate()
            with pool.locked():
                cancelled = worker.state is State.STOPPED
                worker.state = State.STOPPED
                if not cancelled:
                    if not isinstance(exc, InitializerFailed):
                        error = WorkerLostError(f"A runtime could not be started: {exc}", worker.name, str(exc))
                        error.__cause__ = exc
                        exc = error
                    pool.break_(exc)
                pool.changed.notify_all()
            return
        with pool.locked():
            stop = worker.state is State.STOPPED or bool(pool.broken)  # shut down or broken while starting
            if stop:
                worker.state = State.STOPPED
            else:
                worker.state = State.READY
                worker.idle_since = time.monotonic()
                if self.idle_timeout is not None:
                    self.watch()
                pool.dispatch()
            pool.changed.notify_all()
        if stop:
            session.terminate()

    def _note_reservation(self, worker: WorkerHandle, facts: dict) -> None:
        if not facts.get("expired_at"):
            return
        worker.expires_at = float(facts["expired_at"])
        # Each runtime works for at least half its reservation, whatever the margin: otherwise
        # a short reservation would be retired as soon as it is up, again and again.
        reserved = worker.expires_at - float(facts.get("started_at") or time.time())
        worker.expiry_margin = min(self.expiry_margin, max(0.0, reserved / 2))

    def initialize(self, session: KernelSession) -> None:
        """Run the initializer in a fresh kernel; InitializerFailed if it raises."""
        if self.initializer is None:
            return
        frames, modules = self.initializer
        shipped = session.modules_to_ship(modules) if modules else []
        content, reply_frames = session.call("init", {"modules": shipped}, frames)
        if content.get("status") != "ok":
            cause = rebuild_exception(content.get("info") or {}, reply_frames)
            error = InitializerFailed(
                f"A runtime initializer failed, the pool is not usable anymore: {type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            raise error

    # -- loss and restart ---------------------------------------------------------------------

    def on_lost(self, worker: WorkerHandle, reason: str) -> None:
        """A kernel died (I/O thread). With ``max_retries=0`` the pool is broken, as
        ProcessPoolExecutor's would be. With retries, its tasks go back to the queue (alone, so
        that a task that kills its kernel is caught and blamed after its retries) and a new
        kernel takes its place. A runtime that died at its reservation's end loses no task and
        no retry. If even that fails, the pool breaks with the reason."""
        pool = self.pool
        try:
            failed = []
            with pool.locked():
                if worker.state is State.STOPPED or pool.broken:
                    return
                expired = worker.expires_at is not None and time.time() >= worker.expires_at - 1.0
                items = worker.items()
                if not expired and not any(item.max_retries for item in items) and pool.max_retries == 0:
                    pool.break_(WorkerLostError(
                        "A runtime in the pool terminated abruptly while the future was running or pending: "
                        f"{reason}", runtime_id=worker.runtime_id, reason=reason))
                    return
                worker.inflight.clear()
                pool.remove(worker)
                for item in reversed(items):  # back to the front of the queue, in order
                    if not expired:
                        item.deaths.append(reason)
                    if len(item.deaths) > item.max_retries:
                        failed.append(item)
                    else:
                        pool.requeue(item, solo=True)
                pool.dispatch()
                pool.changed.notify_all()
            for item in failed:
                deaths = len(item.deaths)
                item.future.set_exception(WorkerLostError(
                    f"this task was running on {deaths} runtime{'s' if deaths > 1 else ''} that died "
                    f"(max_retries={item.max_retries}), so it is the likely cause; the last: {reason}",
                    runtime_id=worker.runtime_id, reason=reason))
        except BaseException as exc:  # noqa: BLE001
            _log.error("dlexec: could not handle the loss of runtime %s", worker.runtime_id, exc_info=True)
            with pool.locked():
                pool.break_(WorkerLostError(f"A runtime in the pool terminated abruptly ({reason}), and dlexec "
                                            f"could not recover: {exc!r}", worker.runtime_id, reason))

    def restart(self, worker: WorkerHandle) -> None:
        """A task will not stop: restart its kernel; the batch's other tasks go back to the queue."""
        pool = self.pool
        timed_out = []
        with pool.locked():
            items = worker.items()
            for batch in worker.inflight:
                batch.items.clear()  # late replies from the old kernel are ignored
            worker.inflight.clear()
            worker.forget_blobs()
            now = time.monotonic()
            for item in reversed(items):
                if item.timeout is not None and item.stop_requested is None and now > item.sent_at + item.timeout:
                    timed_out.append(item)
                else:
                    pool.requeue(item)
        for item in timed_out:
            item.release()
            item.future.set_exception(TimeoutError(
                f"the task ran longer than its timeout of {item.timeout:g} s and did not stop when interrupted; "
                f"its runtime {worker.runtime_id} was restarted"))
        try:
            worker.session.restart()
            self.initialize(worker.session)
        except BaseException as exc:  # noqa: BLE001 - replace the runtime instead
            if not pool.shutting_down:
                _log.warning("dlexec: could not restart %s (%s); replacing it", worker.runtime_id, exc)
            with pool.locked():
                pool.remove(worker)
                pool.dispatch()
            return
        with pool.locked():
            if worker.state is State.RESTARTING:
                worker.state = State.READY
            pool.dispatch()
            pool.changed.notify_all()

    # -- retiring (pool's lock held) -------------------------------------------------------------

    def retire_idle(self) -> None:
        """Stop the runtimes that have had nothing to do for ``idle_timeout`` seconds."""
        pool = self.pool
        if self.idle_timeout is None or pool.pending:
            return
        limit = time.monotonic() - self.idle_timeout
        for worker in list(pool.workers):
            if worker.state is State.READY and not worker.inflight and worker.idle_since < limit:
                pool.remove(worker)

    def retire_when_done(self, worker: WorkerHandle) -> None:
        """No new work for this runtime; it stops once its batches are done."""
        worker.state = State.RETIRING
        if not worker.inflight:
            self.pool.remove(worker)

    def retire_surplus(self) -> None:
        """Past ``max_workers`` (a resize): retire the surplus, idle runtimes first."""
        pool = self.pool
        active = [w for w in pool.workers if w.state is not State.STOPPED]
        surplus = len([w for w in active if w.state is not State.RETIRING]) - pool.max_workers
        for worker in sorted((w for w in active if w.state is State.READY), key=lambda w: bool(w.inflight)):
            if surplus <= 0:
                break
            surplus -= 1
            self.retire_when_done(worker)

    def retire_expiring(self) -> None:
        """Give no new work to runtimes whose reservation ends within their margin."""
        now = time.time()
        for worker in list(self.pool.workers):
            if worker.expires_at is None:
                continue
            if worker.state is State.READY and worker.expires_at - now < worker.expiry_margin:
                self.retire_when_done(worker)
            elif worker.state in (State.READY, State.RETIRING):
                self.watch()

    def watch(self) -> None:
        """Make sure the watchdog runs (pool's lock held): something needs watching."""
        self.watchdog.watch()
