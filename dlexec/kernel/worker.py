"""The code that runs inside a kernel: a shell-message handler for dlexec requests.

The client's bootstrap (:mod:`dlexec.bootstrap`, :func:`dlexec.kernel.finder.bootstrap`)
imports this module under its real name when a runtime starts; :func:`install` then
registers a handler for ``dlexec_request`` messages on the kernel's shell channel. Each
request is one message with the payload in binary buffers and is answered on the shell
channel (reliable, unlike IOPub) by one or more ``dlexec_reply`` messages; no IPython cell
is run, so a task costs one kernel message each way.

Requests (``content["op"]``):

``run``       a batch of tasks ``fn(*args, **kwargs)``; replies carry results or exceptions
              and each task's duration, flushed every ``FLUSH_INTERVAL`` seconds while the
              batch runs. ``fn`` is a *blob*, received once and kept by key (with the
              ``Shared`` objects); the request carries the blobs this kernel lacks.
``init``      ``initializer(*initargs)``, once per kernel.
``set``       assign variables in the user namespace.
``get``       read one variable from the user namespace.
``snapshot``  every picklable user variable, for a snapshot.
``info``      Python, dill and tblib versions and the kernel's pid.

Any request may carry ``modules``: the source of the user's own modules, imported from it
on demand (:class:`~dlexec.kernel.finder.SourceFinder`; see :mod:`dlexec.modules`).

Only the standard library, dill and tblib may be imported here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

from .. import serialization
from ..serialization import BlobStore
from .finder import SourceFinder
from .interrupts import SignalInterrupts, TaskTimeout
from .output import CapturedOutput, Reply
from .wire import CANCEL, REQUEST, BlobRef, Task, TaskResult, rows, split_frames

FLUSH_INTERVAL = 0.05  # seconds between partial replies while a batch runs

_crash_log = None
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_STOPPED = (KeyboardInterrupt, TaskTimeout)  # raised into a task by its interrupts


class Worker:
    """Answers dlexec requests inside one kernel.

    ``interrupts`` stops running tasks (:mod:`dlexec.kernel.interrupts`; signals by
    default); ``finder`` is where shipped modules go (the bootstrap's; a new one at the
    front of ``sys.meta_path`` by default). ``blobs`` keeps the blobs received. ``streams``:
    where the tasks' ``stdout``/``stderr`` are captured (:class:`~dlexec.kernel.output.CapturedOutput`;
    the ``sys`` module by default).
    """

    def __init__(self, kernel, user_ns: dict, interrupts=None, finder: SourceFinder | None = None, streams=None):
        self.kernel = kernel
        self.streams = sys if streams is None else streams
        self.user_ns = user_ns
        self.interrupts = interrupts if interrupts is not None else SignalInterrupts()
        self.blobs = BlobStore()
        self.lock = threading.Lock()  # current/stopping/cancelled: shared with the control thread
        self.current = None  # the id of the task running now
        self.stopping = None  # the id of the task a stop request is for
        self.cancelled: set = set()  # ids of this batch's tasks to skip
        if finder is None:
            finder = SourceFinder()
            sys.meta_path = [finder, *sys.meta_path]  # the user's current code wins over any installed copy
        self.finder = finder

    # -- dispatch ---------------------------------------------------------------------

    def handle(self, stream, idents, msg):
        """ipykernel shell handler: never raises, always answers."""
        content = msg["content"]
        op = content.get("op")
        frames = [memoryview(b) for b in msg.get("buffers") or ()]
        reply = Reply(self.kernel.session, stream, idents, msg)
        try:
            if content.get("modules"):  # sources from the signed content: the client counts them as sent
                self.finder.update(content["modules"])
            serialization.check_digests(content, frames, what="request")  # before anything is unpickled
            if content.get("layout"):
                frames = serialization.unpack(content["layout"], frames)
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                reply.send({"status": "error", "error": f"unknown dlexec op {op!r}"})
            else:
                with self.blobs.active():  # Shared objects unpickled here are this worker's
                    handler(content, frames, reply)
        except BaseException as exc:  # noqa: BLE001 - a handler error must reach the client
            info, exc_frames = serialization.dump_exception(exc)
            reply.send({"status": "error", "info": info, "final": True}, exc_frames)

    # -- ops ----------------------------------------------------------------------------

    def op_run(self, content, frames, reply):
        """Run a batch: ``blobs`` (:class:`~dlexec.kernel.wire.BlobRef`, their frames first)
        and ``tasks`` (:class:`~dlexec.kernel.wire.Task`, each with ``(args, kwargs)`` as
        frames); each result a :class:`~dlexec.kernel.wire.TaskResult`, with status ``ok``,
        ``error``, ``cancelled`` (stopped or skipped on request) or ``timeout``."""
        results, buffers = [], []
        last_flush = time.monotonic()
        if content.get("drop_blobs"):
            self.blobs.clear()
        blobs = rows(content.get("blobs", ()), BlobRef)
        tasks = rows(content["tasks"], Task)
        parts = split_frames(frames, [blob.nframes for blob in blobs] + [task.nframes for task in tasks])
        for blob, blob_frames in zip(blobs, parts):
            self.blobs.load(blob.key, blob_frames)
        with self._batch(), CapturedOutput(streams=self.streams) as output:
            for index, (task, task_frames) in enumerate(zip(tasks, parts)):
                started = time.perf_counter()
                output.start()
                status, info, out = self._run_one(task, task_frames)
                text, errors = output.stop()
                results.append(TaskResult(task.id, status, len(out), info, time.perf_counter() - started, text,
                                          errors))
                buffers.extend(out)
                if time.monotonic() - last_flush > FLUSH_INTERVAL and index + 1 < len(tasks):
                    reply.send({"status": "ok", "results": results, "final": False}, buffers,
                               flush=output.take_unflushed(), printed=output.printed)
                    results, buffers = [], []
                    last_flush = time.monotonic()
            unflushed = output.take_unflushed()
        reply.send({"status": "ok", "results": results, "final": True}, buffers, flush=unflushed,
                   printed=output.printed)

    def _run_one(self, task: Task, frames):
        """Run one task; returns (status, info, frames). Never raises."""
        with self.lock:
            if task.id in self.cancelled:
                self.cancelled.discard(task.id)
                return "cancelled", None, []
            self.current, self.stopping = task.id, None
        try:
            try:
                fn = self.blobs.get(task.fn_key)
                args, kwargs = serialization.loads(frames)
            except _STOPPED:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a __reduce__ too: the task fails, not the kernel
                serialization.add_note(exc, "dlexec: the task's function or arguments could not be unpickled "
                                            "in the kernel")
                return self._error(exc, strip=0)
            try:
                if task.timeout:
                    self.interrupts.start_timeout(task.timeout)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    if task.timeout:
                        self.interrupts.cancel_timeout()
            except TaskTimeout:
                return "timeout", {"timeout": task.timeout}, []
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt) and self.stopping == task.id:
                    return "cancelled", None, []
                return self._error(exc, strip=1)
            try:
                return "ok", None, serialization.dumps(result)
            except _STOPPED:
                raise
            except BaseException as exc:  # noqa: BLE001 - the error itself, as ProcessPoolExecutor sends it
                serialization.add_note(exc, f"dlexec: the task's result (a {type(result).__name__}) could not be "
                                            "pickled in the kernel")
                return self._error(exc, strip=0)
        except _STOPPED as exc:  # an interrupt between the steps above
            if isinstance(exc, TaskTimeout):
                return "timeout", {"timeout": task.timeout}, []
            return ("cancelled", None, []) if self.stopping == task.id else self._error(exc, strip=0)
        finally:
            with self.lock:
                self.current = None

    # -- stopping tasks (the control channel) ----------------------------------------------

    def handle_cancel(self, stream, idents, msg):
        """``dlexec_cancel`` on the control channel, answered while a batch runs: stop the
        running task if it is one of ``task_ids`` (``interrupts.interrupt()``), skip the
        others when reached."""
        found = {}
        with self.lock:
            for task_id in msg["content"].get("task_ids", ()):
                if task_id == self.current:
                    self.stopping = task_id
                    self.interrupts.interrupt()
                    found[task_id] = "stopping"
                else:
                    self.cancelled.add(task_id)
                    found[task_id] = "skipped if not done"
        self.kernel.session.send(stream, "dlexec_cancel_reply", {"status": "ok", "tasks": found},
                                 parent=msg, ident=idents)

    @contextlib.contextmanager
    def _batch(self):
        """Around a batch: the interrupts armed; afterwards, no stop or skip request left over."""
        try:
            with self.interrupts.armed(self):
                yield
        finally:
            with self.lock:
                self.cancelled.clear()
                self.stopping = None

    @staticmethod
    def _error(exc, strip, status="error"):
        # Drop this module's own frame so that the traceback starts in the user's code.
        for _ in range(strip):
            if exc.__traceback__ is not None:
                exc.__traceback__ = exc.__traceback__.tb_next
        info, frames = serialization.dump_exception(exc)
        return status, info, frames

    def op_init(self, content, frames, reply):
        initializer, initargs = serialization.loads(frames)
        status, info, out = "ok", None, []
        with CapturedOutput(keep=False, streams=self.streams) as output:  # counted, not kept
            try:
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001
                status, info, out = self._error(exc, strip=1)
        reply.send({"status": status, "info": info, "final": True}, out, flush=output.take_unflushed(),
                   printed=output.printed)

    def op_set(self, content, frames, reply):
        names = content["names"]  # [name, nframes] each
        for (name, _), value_frames in zip(names, split_frames(frames, [count for _, count in names])):
            self.user_ns[name] = serialization.loads(value_frames)
        reply.send({"status": "ok", "final": True})

    def op_get(self, content, frames, reply):
        name = content["name"]
        if name not in self.user_ns:
            reply.send({"status": "missing", "final": True})
            return
        reply.send({"status": "ok", "final": True}, serialization.dumps(self.user_ns[name]))

    def op_snapshot(self, content, frames, reply):
        names, buffers, skipped = [], [], {}
        for name, value in list(self.user_ns.items()):
            if name.startswith("_") or name in _IPYTHON_NAMES or _is_module(value):
                continue
            try:
                out = serialization.dumps(value)
            except Exception as exc:  # noqa: BLE001
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            names.append([name, len(out)])
            buffers.extend(out)
        reply.send({"status": "ok", "names": names, "skipped": skipped, "final": True}, buffers)

    def op_info(self, content, frames, reply):
        import dill
        import tblib

        reply.send(
            {
                "status": "ok",
                "final": True,
                "pid": os.getpid(),
                "python": list(sys.version_info[:3]),
                "implementation": sys.implementation.name,
                "dill": dill.__version__,
                "tblib": tblib.__version__,
                "cwd": os.getcwd(),
            }
        )


def _is_module(value) -> bool:
    return type(value).__name__ == "module"


def install(settings: dict, finder: SourceFinder | None = None, interrupts=None) -> dict:
    """Register a :class:`Worker`'s handlers in the running kernel; returns the kernel's versions.

    ``settings`` (:meth:`dlexec.runtimes.base.Runtime.worker_settings`): ``sys_path``
    (prepended to ``sys.path``), ``cwd``, ``crash_log`` (faulthandler's file).
    """
    ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821 - runs inside IPython
    kernel = ip.kernel
    for path in reversed(settings.get("sys_path") or ()):
        if path not in sys.path:
            sys.path.insert(0, path)
    if settings.get("cwd") and os.path.isdir(settings["cwd"]):
        os.chdir(settings["cwd"])
    if settings.get("crash_log"):  # a local kernel: crash reports go where the client reads them
        import faulthandler

        global _crash_log
        _crash_log = open(settings["crash_log"], "a")  # noqa: SIM115 - open for the kernel's life
        faulthandler.enable(file=_crash_log, all_threads=False)
    # Not needed by dlexec requests, but RuntimeService.execute_code pays it on every cell.
    if hasattr(kernel, "_execute_sleep"):
        kernel._execute_sleep = 0
    worker = Worker(kernel, ip.user_ns, interrupts=interrupts, finder=finder)
    kernel.shell_handlers[REQUEST] = worker.handle
    kernel.control_handlers[CANCEL] = worker.handle_cancel
    return {"pid": os.getpid(), "python": list(sys.version_info[:3])}
