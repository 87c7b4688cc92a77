"""``InProcessRuntime``: a :class:`~dlexec.runtimes.base.Runtime` whose "kernel" is dlexec's
real kernel-side worker, run in threads of this process. For fast tests of the pool.

Per runtime, as in ipykernel, one thread per channel:

* the *shell* thread handles requests one at a time: ``kernel_info_request`` (with IOPub
  ``status`` busy/idle around every request, as ipykernel publishes), ``execute_request``
  (the worker's bootstrap installs the worker; other code is exec'd in the namespace) and
  ``dlexec_request`` (``Worker.handle``); what the worker prints goes out as IOPub
  ``stream`` messages with the request as parent;
* the *control* thread answers ``dlexec_cancel`` (``Worker.handle_cancel``) while a batch
  runs, and fires per-task timeouts (:class:`ThreadInterrupts`, the worker's ``interrupts``);
* the *I/O* thread delivers the kernel's messages to ``on_message`` (and ``on_exit``), so
  the client's callbacks never run in a kernel thread, as with a real backend.

Every message is copied across the boundary (content through JSON, buffers as bytes), so
client and kernel share no object by accident (module-level objects of importable modules
are shared, as with any in-process test: tests use that to steer their tasks).

The worker is dlexec's real :class:`~dlexec.kernel.worker.Worker`, one per kernel, with its
own blob store, a :class:`~dlexec.kernel.finder.SourceFinder` of its own (not put on
``sys.meta_path``: the runtime shares this process's files) and, as ``streams``, the kernel's
own ``stdout``/``stderr`` (which the worker swaps for its capturing tees around a request).
The one process-wide patch: while in-process kernels run, ``sys.stdout``/``sys.stderr`` are
routers sending what a kernel's shell thread prints to that kernel's streams (tasks print to
``sys.stdout``), everybody else's to the stream they replaced.

Stopping a running task cannot use signals in a thread that is not the main thread:
:class:`ThreadInterrupts` raises, with ``PyThreadState_SetAsyncExc``, :class:`ThreadInterrupt`
(a ``KeyboardInterrupt``: stop), :class:`ThreadTimeout` (the worker's ``TaskTimeout``) or
:class:`KernelGone` (death, restart, terminate) in the shell thread, always under the worker's
lock while a task runs, and waits (lock held) until the exception is delivered, so that it never
lands after the task ended (if it is not delivered within ``DELIVERY_TIMEOUT``, the shell
thread is waiting for the lock as the task ends: the exception is withdrawn). It is raised at
the next bytecode boundary: a task blocked in one long C call (``time.sleep(60)``) is stopped
only when the call returns, so tasks in these tests wait in short slices.

Knobs: ``start_delay``, ``start_error``, ``install_at_start`` (False: the client installs the
worker with an ``execute_request``), :meth:`InProcessRuntime.die`, and :func:`die_here` for a
task that kills the runtime it runs on. :class:`Runtimes` is a ``runtime_factory`` that keeps
the runtimes it made; each records the ``dlexec_request`` messages it received.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import itertools
import json
import logging
import queue
import sys
import threading
import time
import traceback
import types
import uuid

from dlexec.kernel.finder import SourceFinder
from dlexec.kernel.interrupts import TaskTimeout
from dlexec.kernel.wire import CANCEL, REPLY, REQUEST
from dlexec.kernel.worker import Worker
from dlexec.runtimes.base import Runtime, RuntimeStartError

_log = logging.getLogger("dlexec.tests.inprocess")

JOIN_TIMEOUT = 5.0  # seconds a thread of a stopped kernel is waited for
DELIVERY_TIMEOUT = 0.5  # seconds an exception raised in a shell thread is waited for (see the doc)


class _Delivered:
    """An exception raised in a shell thread by :meth:`_Kernel.raise_in_task`: the interpreter
    instantiates it in that thread as it reaches the first handler, which tells the raiser."""

    def __init__(self, *args):
        super().__init__(*args)
        kernel = getattr(_local, "kernel", None)
        if kernel is not None:
            kernel.delivered.set()


class KernelGone(_Delivered, BaseException):
    """Raised in a kernel's shell thread when its kernel dies, restarts or is terminated."""


class ThreadInterrupt(_Delivered, KeyboardInterrupt):
    """What a stop request (or :meth:`InProcessRuntime.interrupt`) raises in the running task."""


class ThreadTimeout(_Delivered, TaskTimeout):
    """What a task's timeout raises in it."""


def die_here(reason: str = "a task killed its kernel") -> None:
    """Called by a task: the runtime it runs on dies at once (as with ``os._exit``)."""
    kernel = getattr(_local, "kernel", None)
    if kernel is None:
        raise RuntimeError("die_here() is for tasks running in an InProcessRuntime")
    kernel.runtime.die(reason)
    raise KernelGone(reason)  # die() from the shell thread itself: unwind the request now


def current_runtime() -> InProcessRuntime | None:
    """The runtime whose kernel runs the calling code (in a task), else None."""
    kernel = getattr(_local, "kernel", None)
    return None if kernel is None else kernel.runtime


# -- the thread a piece of code runs in decides where its output and blobs go ---------------

#: Set in a kernel's shell thread: ``kernel`` (whose ``streams.stdout``/``streams.stderr`` are
#: where that thread's output goes: the kernel's IOPub streams, or the worker's tees around them).
_local = threading.local()


class _Router:
    """``sys.stdout``/``sys.stderr`` while in-process kernels run: a kernel thread's writes go
    to that kernel's stream, everybody else's to the stream it replaced."""

    def __init__(self, name: str, fallback):
        self._name, self._fallback = name, fallback

    def _target(self):
        kernel = getattr(_local, "kernel", None)
        return self._fallback if kernel is None else getattr(kernel.streams, self._name)

    def write(self, text):
        return self._target().write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        return self._target().flush()

    def __getattr__(self, name):
        return getattr(self._fallback, name)


class _KernelStream:
    """A kernel's stdout or stderr: each write is an IOPub ``stream`` message (ipykernel's
    OutStream batches them; one message per write is as valid, and ordered)."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, kernel: _Kernel, name: str):
        self._kernel, self._name = kernel, name

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._kernel.session.send("iopub", "stream", {"name": self._name, "text": text},
                                      parent=self._kernel.parent)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


# -- messages ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _header(msg_type: str, session: str) -> dict:
    return {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "dlexec-test", "session": session,
            "date": _now(), "version": "5.3"}


def _copy(msg: dict, buffers) -> dict:
    """What the other side receives: a deep copy through JSON, buffers as bytes (as jupyter-client)."""
    head = json.loads(json.dumps({key: msg.get(key) or {} for key in
                                  ("header", "parent_header", "metadata", "content")}))
    head["msg_id"], head["msg_type"] = head["header"]["msg_id"], head["header"]["msg_type"]
    head["buffers"] = [bytes(memoryview(b).cast("B")) for b in buffers or ()]
    return head


class _KernelSession:
    """``kernel.session`` for the worker: ``send(stream, msg_type, content, parent=, ident=, buffers=)``."""

    def __init__(self, kernel: _Kernel):
        self.kernel = kernel
        self.session = uuid.uuid4().hex

    def send(self, stream, msg_type, content=None, parent=None, ident=None, buffers=None, **_):
        if self.kernel.gone:  # a dead, restarted or stopped kernel says nothing more
            return None
        msg = {"header": _header(msg_type, self.session), "parent_header": (parent or {}).get("header") or {},
               "metadata": {}, "content": content or {}}
        copy = _copy(msg, buffers)
        copy["buffers"] = [memoryview(b) for b in copy["buffers"]]  # as zmq frames' buffers
        self.kernel.runtime._deliver(str(stream), copy)
        return copy


# -- one kernel: one "interpreter" of a runtime (a restart makes a new one) -----------------------


class _Kernel:
    def __init__(self, runtime: InProcessRuntime, generation: int):
        self.runtime, self.generation = runtime, generation
        self.session = _KernelSession(self)
        self.shell_queue: queue.Queue = queue.Queue()
        self.control_queue: queue.Queue = queue.Queue()
        self.user_ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        self.worker: Worker | None = None
        self.gone = False
        self.parent: dict | None = None  # the shell request being handled: the parent of its output
        #: The worker's ``streams``: what the shell thread's stdout/stderr are (the worker swaps them).
        self.streams = types.SimpleNamespace(stdout=_KernelStream(self, "stdout"),
                                             stderr=_KernelStream(self, "stderr"))
        self.batch: list = []  # the ids of the tasks of the request being handled (skipped if the kernel goes)
        self.shell_ident: int | None = None
        self.delivered = threading.Event()  # an exception raise_in_task raised has reached the shell thread
        self.deadline: tuple | None = None  # (task_id, time.monotonic() deadline)
        self.execution_count = 0
        self.threads = [
            threading.Thread(target=self._shell_loop, name=f"inprocess-shell-{runtime.name}", daemon=True),
            threading.Thread(target=self._control_loop, name=f"inprocess-control-{runtime.name}", daemon=True),
        ]
        self._started = threading.Event()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self._started.wait(JOIN_TIMEOUT)

    def install_worker(self) -> None:
        if self.worker is None:
            self.worker = Worker(self, self.user_ns, interrupts=ThreadInterrupts(self), finder=SourceFinder(),
                                 streams=self.streams)

    def stop(self) -> None:
        """No more requests, no more messages; a running task is stopped (KernelGone), the
        rest of its batch skipped."""
        self.gone = True
        worker = self.worker
        if worker is not None:
            with worker.lock:
                worker.cancelled.update(self.batch)
                if worker.current is not None and threading.get_ident() != self.shell_ident:
                    self.raise_in_task(KernelGone)
        self.shell_queue.put(None)
        self.control_queue.put(None)

    def join(self, timeout: float = JOIN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    _log.warning("inprocess: %s did not stop within %g s", thread.name, timeout)

    def raise_in_task(self, exc_type: type[_Delivered]) -> bool:
        """Raise ``exc_type`` in the shell thread (the worker's lock held, a task running) and
        wait until it is delivered; False (and withdrawn) if it was not within ``DELIVERY_TIMEOUT``:
        the shell thread waits for the lock to end its task, and must not get it afterwards."""
        ident = ctypes.c_ulong(self.shell_ident)
        self.delivered.clear()
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(exc_type))
        if self.delivered.wait(DELIVERY_TIMEOUT):
            return True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, None)
        _log.debug("inprocess: %s withdrawn in %s", exc_type.__name__, self.runtime.name)
        return False

    def set_deadline(self, task_id, timeout) -> None:
        """(shell thread) The running task times out in ``timeout`` seconds (None: no limit)."""
        if timeout:
            self.deadline = (task_id, time.monotonic() + timeout)
            self.control_queue.put("wake")
        else:
            self.deadline = None

    # -- shell ----------------------------------------------------------------------------------

    def _shell_loop(self) -> None:
        _local.kernel = self
        self.shell_ident = threading.get_ident()
        self._started.set()
        try:
            while not self.gone:
                msg = self.shell_queue.get()
                if msg is None or self.gone:
                    break
                _plumbing.ensure_routers()
                try:
                    self._handle_shell(msg)
                except KernelGone:
                    break
                except BaseException:  # noqa: BLE001 - a real kernel logs and goes on
                    _log.exception("inprocess: error in the shell handler of %s", self.runtime.name)
        except KernelGone:  # raised after the request it was meant for (delivered, not withdrawn)
            pass
        finally:
            _local.__dict__.pop("kernel", None)

    def _handle_shell(self, msg: dict) -> None:
        msg_type = msg["header"]["msg_type"]
        self.parent = msg
        self.session.send("iopub", "status", {"execution_state": "busy"}, parent=msg)
        try:
            if msg_type == "kernel_info_request":
                self.session.send("shell", "kernel_info_reply", _KERNEL_INFO, parent=msg)
            elif msg_type == "execute_request":
                self._execute(msg)
            elif msg_type == REQUEST:
                if self.worker is None:
                    self.session.send("shell", REPLY, {
                        "status": "error", "error": "the dlexec worker is not installed", "final": True}, parent=msg)
                else:
                    with self.worker.lock:
                        self.batch = [task[0] for task in msg["content"].get("tasks", ())]
                    try:
                        self.worker.handle("shell", [], msg)
                    finally:
                        with self.worker.lock:
                            self.batch = []
            else:
                _log.warning("inprocess: unknown shell message %s", msg_type)
        finally:
            self.session.send("iopub", "status", {"execution_state": "idle"}, parent=msg)
            self.parent = None

    def _execute(self, msg: dict) -> None:
        """The worker's bootstrap installs the worker (the real one would exec its source into
        modules of this process); any other code is run in the namespace."""
        self.execution_count += 1
        code = msg["content"].get("code", "")
        content = {"status": "ok", "execution_count": self.execution_count, "user_expressions": {}, "payload": []}
        if "__dlexec_bootstrap" in code:
            self.install_worker()
        else:
            try:
                exec(compile(code, f"<cell {self.execution_count}>", "exec"), self.user_ns)  # noqa: S102 - a kernel's job
            except KernelGone:
                raise
            except BaseException as exc:  # noqa: BLE001 - an error reply, as IPython's
                error = {"ename": type(exc).__name__, "evalue": str(exc),
                         "traceback": traceback.format_exception(exc)}
                self.session.send("iopub", "error", error, parent=msg)
                content = {"status": "error", "execution_count": self.execution_count, **error}
        self.session.send("shell", "execute_reply", content, parent=msg)

    # -- control ------------------------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self.gone:
            deadline = self.deadline
            wait = None if deadline is None else max(0.0, deadline[1] - time.monotonic())
            try:
                msg = self.control_queue.get(timeout=wait)
            except queue.Empty:
                msg = "wake"
            if msg is None or self.gone:
                break
            try:
                self._fire_deadline()
                if msg == "wake":
                    continue
                msg_type = msg["header"]["msg_type"]
                if msg_type == CANCEL and self.worker is not None:
                    self.worker.handle_cancel("control", [], msg)
                elif msg_type == "kernel_info_request":
                    self.session.send("control", "kernel_info_reply", _KERNEL_INFO, parent=msg)
                else:
                    _log.warning("inprocess: unknown control message %s", msg_type)
            except BaseException:  # noqa: BLE001
                _log.exception("inprocess: error in the control handler of %s", self.runtime.name)

    def _fire_deadline(self) -> None:
        deadline, worker = self.deadline, self.worker
        if deadline is None or worker is None or time.monotonic() < deadline[1]:
            return
        with worker.lock:
            if self.deadline is deadline and worker.current == deadline[0]:
                self.raise_in_task(ThreadTimeout)
            self.deadline = None


class ThreadInterrupts:
    """The worker's ``interrupts`` (:mod:`dlexec.kernel.interrupts`) in an in-process kernel:
    exceptions raised in its shell thread (:meth:`_Kernel.raise_in_task`) instead of signals,
    timeouts kept and fired by its control thread (:meth:`_Kernel.set_deadline`)."""

    def __init__(self, kernel: _Kernel):
        self.kernel = kernel
        self.worker: Worker | None = None

    @contextlib.contextmanager
    def armed(self, worker):
        self.worker = worker
        try:
            yield
        finally:
            self.kernel.set_deadline(None, None)

    def start_timeout(self, seconds: float) -> None:
        self.kernel.set_deadline(self.worker.current, seconds)

    def cancel_timeout(self) -> None:
        self.kernel.set_deadline(None, None)

    def interrupt(self) -> None:
        """(worker.lock held) As SignalInterrupts' SIGINT handler: the running task raises
        ``KeyboardInterrupt`` unless the stop request was for a task that has ended."""
        worker = self.kernel.worker
        if worker.current is None or (worker.stopping is not None and worker.stopping != worker.current):
            return
        self.kernel.raise_in_task(ThreadInterrupt)


_KERNEL_INFO = {"status": "ok", "protocol_version": "5.3", "implementation": "dlexec-inprocess",
                "implementation_version": "0", "language_info": {"name": "python"}, "banner": ""}


# -- the runtime ---------------------------------------------------------------------------------


class InProcessRuntime(Runtime):
    """One fake kernel: dlexec's worker in threads of this process (see the module's doc)."""

    kind = "inprocess"
    shares_files = True  # this very process: no module is shipped, no digest checked

    def __init__(self, name: str, *, start_delay: float = 0.0, start_error: str | None = None,
                 install_at_start: bool = True):
        super().__init__(name)
        self.start_delay, self.start_error, self.install_at_start = start_delay, start_error, install_at_start
        self._id = f"inprocess-{name}-{uuid.uuid4().hex[:6]}"
        self._session = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._offered = False  # run_at_start was called: the worker is installed as the kernel starts
        self._started = self._stopping = False
        self._exit_reason: str | None = None
        self._kernel: _Kernel | None = None
        self._generations = itertools.count(1)
        self._outbox: queue.Queue = queue.Queue()
        self._io: threading.Thread | None = None
        self._plumbed = False
        #: What the kernel received: one dict per dlexec_request (op, tasks, blob keys, bytes).
        self.requests: list[dict] = []
        self.restarts = 0

    # -- Runtime --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    def run_at_start(self, code) -> bool:
        self._offered = self.install_at_start
        return self.install_at_start

    def start(self, timeout: float) -> None:
        if self.start_delay:
            if self._stop_event.wait(min(self.start_delay, timeout)):
                raise RuntimeStartError(f"runtime {self.id} was terminated while starting")
            if self.start_delay > timeout:
                raise RuntimeStartError(f"runtime {self.id} did not start within {timeout:g} s")
        if self.start_error is not None:
            raise RuntimeStartError(f"runtime {self.id} could not start: {self.start_error}")
        with self._lock:
            if self._stopping or self._started:
                raise RuntimeStartError(f"runtime {self.id} was terminated or is started")
            self._started = True
            _plumbing.acquire()
            self._plumbed = True
        self._io = threading.Thread(target=self._io_loop, name=f"inprocess-io-{self.name}", daemon=True)
        self._io.start()
        self._new_kernel()

    def _new_kernel(self) -> None:
        kernel = _Kernel(self, next(self._generations))
        if self._offered:
            kernel.install_worker()
        with self._lock:
            if self._stopping or self._exit_reason is not None:  # terminated (or died) meanwhile
                kernel.join()
                raise RuntimeStartError(f"runtime {self.id} was terminated while starting")
            self._kernel = kernel
        kernel.start()
        kernel.session.send("iopub", "iopub_welcome", {"subscription": ""})

    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        header = _header(msg_type, self._session)
        return {"header": header, "msg_id": header["msg_id"], "msg_type": msg_type, "parent_header": {},
                "metadata": metadata or {}, "content": content}

    def send(self, channel: str, msg: dict, buffers=()) -> None:
        copy = _copy(msg, buffers)  # in the caller's thread: content that is not JSON fails the caller
        with self._lock:
            kernel = self._kernel
            if not self._started or self._stopping or self._exit_reason is not None or kernel is None:
                raise RuntimeError(f"kernel {self.id} is not running")
            if copy["msg_type"] == REQUEST:
                self.requests.append(_summary(copy))
        (kernel.control_queue if channel == "control" else kernel.shell_queue).put(copy)

    def interrupt(self) -> None:
        """As SIGINT to a kernel: the running task, if any, raises ``KeyboardInterrupt``."""
        kernel = self._kernel
        worker = None if kernel is None else kernel.worker
        if worker is not None:
            with worker.lock:
                worker.interrupts.interrupt()

    def restart(self, timeout: float) -> None:
        with self._lock:
            if not self._started or self._stopping or self._exit_reason is not None:
                raise RuntimeStartError(f"kernel {self.id} is not running")
            old = self._kernel
        old.stop()
        old.join(min(timeout, JOIN_TIMEOUT))
        self.restarts += 1
        self._new_kernel()

    def terminate(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            kernel, plumbed, self._plumbed = self._kernel, self._plumbed, False
        self._stop_event.set()
        if kernel is not None:
            kernel.stop()
            kernel.join()
        self._outbox.put(None)
        if self._io is not None and self._io is not threading.current_thread():
            self._io.join(JOIN_TIMEOUT)
        if plumbed:
            _plumbing.release()

    def is_alive(self) -> bool:
        return self._started and not self._stopping and self._exit_reason is None

    def io_alive(self) -> bool:
        return self._io is not None and (self._io.is_alive() or self._stopping)

    def describe(self) -> dict:
        return {**super().describe(), "restarts": self.restarts}

    # -- test knobs -----------------------------------------------------------------------------

    def die(self, reason: str = "the in-process kernel was killed") -> None:
        """The kernel dies: what it sent so far is delivered, then ``on_exit(reason)``."""
        with self._lock:
            if not self._started or self._stopping or self._exit_reason is not None:
                return
            self._exit_reason = reason
            kernel = self._kernel
        kernel.stop()
        self._outbox.put(("exit", reason))

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    def tasks_per_request(self) -> list[int]:
        return [len(r["tasks"]) for r in self.requests if r["op"] == "run"]

    # -- I/O ------------------------------------------------------------------------------------

    def _deliver(self, channel: str, msg: dict) -> None:
        self._outbox.put((channel, msg))

    def _io_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            channel, payload = item
            if channel == "exit":
                try:
                    self.on_exit(payload)
                except BaseException:  # noqa: BLE001
                    _log.exception("inprocess: error in on_exit")
                return
            if self._stopping:
                continue
            try:
                self.on_message(channel, payload)
            except BaseException:  # noqa: BLE001 - a handler's failure must not stop the I/O thread
                _log.exception("inprocess: error while handling a %s message", channel)


def _summary(msg: dict) -> dict:
    content = msg["content"]
    return {"op": content.get("op"), "tasks": [task[0] for task in content.get("tasks", ())],
            "blobs": [key for key, _ in content.get("blobs", ())], "drop_blobs": bool(content.get("drop_blobs")),
            "nbytes": sum(len(b) for b in msg["buffers"]), "at": time.monotonic()}


class Runtimes:
    """A ``runtime_factory`` that keeps the runtimes it made (``made``), all built with ``options``."""

    def __init__(self, **options):
        self.options = options
        self.made: list[InProcessRuntime] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> InProcessRuntime:
        runtime = InProcessRuntime(name, **self.options)
        with self._lock:
            self.made.append(runtime)
        return runtime

    def by_id(self, runtime_id: str) -> InProcessRuntime:
        return next(r for r in self.made if r.id == runtime_id)

    def requests(self, op: str = "run") -> list[dict]:
        return [r for runtime in list(self.made) for r in runtime.requests if r["op"] == op]


class _Plumbing:
    """Process-wide patches, in place while at least one in-process kernel is started."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
        self.ensure_routers()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _Router):
                        setattr(sys, name, stream._fallback)

    def ensure_routers(self) -> None:
        """sys.stdout/stderr route kernel threads' output (pytest swaps them between phases)."""
        with self._lock:
            if self._users:
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if not isinstance(stream, _Router):
                        setattr(sys, name, _Router(name, stream))


_plumbing = _Plumbing()
