"""Requests and replies over one :class:`~dlexec.runtimes.base.Runtime`: routing only.

:class:`KernelChannel` matches replies and IOPub output to the request that caused them,
for the two kinds of request dlexec makes:

* ``execute_request``: code run by IPython, its outputs collected nbformat-style
  (what :class:`dlexec.RuntimeService` needs);
* ``dlexec_request``: one of the worker's operations (:mod:`dlexec.kernel.worker`), with
  the payload in binary buffers; this is how tasks travel.

It fails every pending request when the kernel dies. Starting the kernel and installing
the worker is :class:`dlexec.session.KernelSession`'s job.

A request's output (IOPub) and its replies (shell) travel apart, so a reply can arrive
before the output that its tasks printed. A ``dlexec_reply`` says how much its request has
printed (``printed``: characters on stdout and stderr); such a reply, and every reply after
it, goes to :class:`_InOrder`, whose thread hands them over in the kernel's order once that
much output has been echoed here, or after ``OUTPUT_WAIT`` seconds at most, so that a task's
output is on the caller's stdout before its future completes. Replies of requests that print
nothing take no detour.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Callable

from . import _threads, serialization
from .errors import RuntimeStartError, WorkerLostError
from .kernel.wire import REPLY, REQUEST
from .runtimes.base import Runtime

_log = logging.getLogger("dlexec")

#: Seconds a reply waits at most for the output its request printed (see the module's doc).
OUTPUT_WAIT = 1.0
#: Seconds the thread that hands held replies over stays when it has none.
_IDLE = 5.0

#: How a Jupyter Server says it dropped output (its IOPub rate limits): nothing more will come.
_RATE_LIMITED = ("IOPub data rate exceeded", "IOPub message rate exceeded")


class _Request:
    """One request in flight: where its replies and output go."""

    __slots__ = ("on_reply", "on_output", "on_lost", "on_error", "echoed", "done", "dropped")

    def __init__(self, on_reply, on_output, on_lost, on_error):
        self.on_reply = on_reply  # (msg) -> bool: True when the request is complete
        self.on_output = on_output  # (msg) -> bool for IOPub messages with this parent, or None
        self.on_lost = on_lost  # (reason) when the kernel died first
        self.on_error = on_error  # (exception) when a message for it could not be handled
        self.echoed: list | None = None  # characters of its output echoed so far: [stdout, stderr]
        self.done = False  # a held reply completed it, or it failed: its other held replies are dropped
        self.dropped = False  # the server said it dropped output: nothing to wait for


class KernelChannel:
    """Routes one kernel's messages to the requests that are waiting for them."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.exit_reason: str | None = None
        self.info: dict = {}
        # Digests of dlexec buffers, checked on both sides (serialization.digests); not for a
        # kernel of this user on this machine, whose private sockets nobody else can reach.
        self.digests = not runtime.shares_files
        self._pending: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._in_order = _InOrder(self._deliver, f"dlexec-replies-{runtime.id}")
        self._exit_callbacks: list[Callable[[str], None]] = []
        self.iopub_ready = threading.Event()  # IOPub is connected: see KernelSession.wait_ready
        runtime.on_message = self._on_message
        runtime.on_exit = self._on_exit

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        channel: str,
        msg_type: str,
        content: dict,
        buffers=(),
        *,
        on_reply: Callable[[dict], bool],
        on_output: Callable[[dict], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> str:
        """Send a request; ``on_reply`` gets each reply until it (or ``on_output``) returns True.

        Callbacks run on the runtime's I/O thread and must not block. If one raises, the
        request ends there: ``on_error(exception)`` is called (else ``on_lost`` with a reason),
        and the I/O thread goes on with the next message.
        """
        if msg_type == REQUEST:
            layout, buffers = serialization.pack(buffers)
            if layout:
                content = {**content, "layout": layout}
            if self.digests:  # the content is signed, the buffers are not: sign them through it
                content = {**content, "digests": serialization.digests(buffers)}
        msg = self.runtime.message(msg_type, content)
        msg_id = msg["header"]["msg_id"]
        with self._lock:
            if self.exit_reason is not None:
                raise self.lost_error()
            self._pending[msg_id] = _Request(on_reply, on_output, on_lost, on_error)
        try:
            self.runtime.send(channel, msg, buffers)
        except BaseException:
            with self._lock:
                self._pending.pop(msg_id, None)
            self.raise_if_dead()
            raise
        return msg_id

    def call(self, op: str, content: dict | None = None, frames=(), timeout: float | None = None):
        """Run one worker operation and wait for its reply: ``(content, frames)``."""
        return self.call_later(op, content, frames)(timeout)

    def call_later(self, op: str, content: dict | None = None, frames=()):
        """Send one worker operation now; returns ``wait(timeout)``, which waits for its reply
        and returns ``(content, frames)`` (as :meth:`call`)."""
        done = threading.Event()
        box: dict = {}

        def on_reply(msg):
            box["reply"] = msg
            done.set()
            return True

        def on_lost(reason):
            done.set()

        def on_error(exc):
            box["error"] = exc
            done.set()

        self.request(
            "shell", REQUEST, {"op": op, **(content or {})}, frames, on_reply=on_reply, on_lost=on_lost,
            on_error=on_error,
        )

        def wait(timeout: float | None):
            if not done.wait(timeout):
                raise TimeoutError(f"kernel {self.runtime.id} did not answer {op!r} within {timeout:g} s")
            if "error" in box:
                raise box["error"]
            if "reply" not in box:
                raise self.lost_error()
            msg = box["reply"]
            return msg["content"], msg.get("buffers") or []

        return wait

    # -- incoming -------------------------------------------------------------------------

    def _on_message(self, channel: str, msg: dict) -> None:
        """Route one message (I/O thread). Whatever a message raises ends only its own request."""
        parent_id = (msg.get("parent_header") or {}).get("msg_id")
        request = self._pending.get(parent_id)
        try:
            self._route(channel, msg, parent_id, request)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from an unpickled reply too
            if request is None:
                _log.error("dlexec: could not handle a %s message from kernel %s: %r", channel, self.runtime.id, exc)
                return
            with self._lock:
                self._pending.pop(parent_id, None)
            _fail(request, exc, self.runtime.id)

    def _route(self, channel: str, msg: dict, parent_id: str | None, request: _Request | None) -> None:
        if channel == "iopub":
            if request is not None and request.on_output is not None:
                if request.on_output(msg):
                    with self._lock:
                        self._pending.pop(parent_id, None)
            elif msg["header"]["msg_type"] == "stream":
                _echo_stream(msg["content"])
                if request is not None:
                    self._in_order.count_output(request, msg["content"])
            elif msg["header"]["msg_type"] == "iopub_welcome":
                self.iopub_ready.set()
            return
        if self.digests and msg["header"]["msg_type"] == REPLY:
            try:  # before anything of it is unpickled
                serialization.check_digests(msg["content"], msg.get("buffers") or (), required=True, what="reply")
            except serialization.DigestMismatchError as exc:  # the request fails with this error
                info, frames = serialization.dump_exception(exc)
                msg["content"] = {"status": "error", "info": info, "final": msg["content"].get("final", True)}
                msg["buffers"] = frames
        if "layout" in msg["content"] and msg.get("buffers"):  # a dlexec_reply with packed frames
            msg["buffers"] = serialization.unpack(msg["content"]["layout"], msg["buffers"])
        if request is None:
            return
        if self._in_order.busy or msg["content"].get("printed"):
            self._in_order.hold(parent_id, request, msg)
        elif request.on_reply(msg):
            with self._lock:
                self._pending.pop(parent_id, None)

    def _deliver(self, parent_id: str, request: _Request, msg: dict) -> None:
        """One held reply to its request (thread of _InOrder); whatever it raises ends the
        request, as in _on_message."""
        try:
            complete = request.on_reply(msg)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from an unpickled reply too
            complete = True
            _fail(request, exc, self.runtime.id)
        if complete:
            request.done = True
            with self._lock:
                self._pending.pop(parent_id, None)

    def _on_exit(self, reason: str) -> None:
        with self._lock:
            self.exit_reason = reason
            pending, self._pending = self._pending, {}
            callbacks = list(self._exit_callbacks)
        self._in_order.expire()  # replies that came before the end are handed over: their results stand
        for request in pending.values():
            if request.on_lost is not None and not request.done:
                _guarded(request.on_lost, reason)
        for callback in callbacks:
            _guarded(callback, reason)

    def close(self) -> None:
        """The kernel was stopped on purpose: hand over the replies still held, end their thread."""
        self._in_order.expire()

    def check_connected(self) -> None:
        """If the runtime's message threads have ended without reporting it, report it now:
        every request in flight fails and the exit callbacks run (see ``_on_exit``)."""
        if self.exit_reason is None and not self.runtime.io_alive():
            self._on_exit(f"dlexec lost its connection to kernel {self.runtime.id} (its message threads ended)")

    def add_exit_callback(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once if the kernel dies (not when it is terminated)."""
        with self._lock:
            if self.exit_reason is None:
                self._exit_callbacks.append(callback)
                return
        callback(self.exit_reason)

    def forget_pending(self) -> None:
        """Drop every request in flight (the kernel is being restarted: no reply will come)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        self.iopub_ready.clear()  # the new kernel's IOPub has to be seen again
        for request in pending.values():  # nor will their held replies be handed over
            request.done = True

    def lost_error(self) -> WorkerLostError:
        reason = self.exit_reason or "the kernel stopped"
        return WorkerLostError(
            f"The runtime {self.runtime.id} terminated abruptly: {reason}",
            runtime_id=self.runtime.id,
            reason=reason,
        )

    def raise_if_dead(self) -> None:
        if self.exit_reason is not None:
            raise self.lost_error()
        if not self.runtime.is_alive():
            raise RuntimeStartError(f"kernel {self.runtime.id} is not running")


class _InOrder:
    """Replies held until their request's output has been echoed, handed over in the kernel's
    order by one thread of their own (started when a reply must wait, gone when idle)."""

    def __init__(self, deliver: Callable, thread_name: str):
        self._deliver = deliver  # (parent id, request, reply): hands one reply over
        self._thread_name = thread_name
        self._queue: deque = deque()  # (parent id, request, reply, deadline); the head stays while handed over
        self._changed = threading.Condition()  # guards the queue, the requests' counts, the thread
        self._thread: threading.Thread | None = None
        self._expired = False  # the kernel has gone: hand everything over, wait for nothing

    @property
    def busy(self) -> bool:
        """Replies are held: a new one goes behind them (read without the lock by the I/O thread,
        the only one that adds replies)."""
        return bool(self._queue)

    def hold(self, parent_id: str, request: _Request, msg: dict) -> None:
        """Hold a reply behind those already held (I/O thread)."""
        with self._changed:
            self._queue.append((parent_id, request, msg, time.monotonic() + OUTPUT_WAIT))
            if self._thread is not None:
                self._changed.notify_all()
                return
            thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            try:
                _threads.start(thread)
                self._thread = thread
                return
            except BaseException:  # noqa: BLE001 - no thread: hand them over now rather than never
                _log.warning("dlexec: could not start a thread; results are handed over without waiting for "
                             "their output", exc_info=True)
                held = list(self._queue)
                self._queue.clear()
        for parent_id, request, msg, _ in held:  # in order, without the lock
            if not request.done:
                self._deliver(parent_id, request, msg)

    def count_output(self, request: _Request, content: dict) -> None:
        """Count a request's echoed output (I/O thread); wakes the thread if replies wait."""
        index = 1 if content.get("name") == "stderr" else 0
        text = content.get("text", "")
        with self._changed:
            if request.echoed is None:
                request.echoed = [0, 0]
            request.echoed[index] += len(text)
            if index and text.startswith(_RATE_LIMITED):
                request.dropped = True
            if self._queue:
                self._changed.notify_all()

    def expire(self) -> None:
        """The kernel has gone: hand every held reply over now, and wait (bounded) until done."""
        with self._changed:
            self._expired = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._queue or self._thread is None, timeout=2.0)

    def _run(self) -> None:
        """Hand the held replies over, in order, each once its output is here or its wait is over."""
        try:
            while True:
                with self._changed:
                    head = self._next()
                    if head is None:
                        return
                parent_id, request, msg, _ = head
                if not request.done:
                    self._deliver(parent_id, request, msg)  # never raises (see KernelChannel._deliver)
                with self._changed:
                    self._queue.popleft()
                    self._changed.notify_all()
        except BaseException:  # noqa: BLE001 - never leave replies behind without a word
            _log.exception("dlexec: error while handing over the replies of a kernel")
        finally:
            with self._changed:
                self._thread = None
                if self._queue:  # (only after an error) whoever holds the next reply starts a new thread
                    self._expired = True
                self._changed.notify_all()

    def _next(self):
        """(lock held) The first held reply once it can be handed over; None when the thread
        has had nothing to do for ``_IDLE`` seconds."""
        while True:
            if not self._queue:
                if self._expired:  # the kernel has gone: no reply will come
                    return None
                if not self._changed.wait(_IDLE) and not self._queue:
                    return None
                continue
            head = self._queue[0]
            _, request, msg, deadline = head
            left = deadline - time.monotonic()
            if self._expired or request.done or request.dropped or left <= 0 or _caught_up(request, msg):
                return head
            self._changed.wait(left)


def _caught_up(request: _Request, msg: dict) -> bool:
    """Has all the output that the reply says its request printed been echoed?"""
    printed = msg["content"].get("printed")
    if not printed:
        return True
    echoed = request.echoed or (0, 0)
    return echoed[0] >= printed[0] and echoed[1] >= printed[1]


def _fail(request: _Request, exc: BaseException, runtime_id: str) -> None:
    """End a request whose message could not be handled: its waiter gets the error."""
    if request.on_error is not None:
        _guarded(request.on_error, exc)
    elif request.on_lost is not None:
        _guarded(request.on_lost, f"dlexec could not handle a message from kernel {runtime_id}: {exc!r}")
    else:
        _log.error("dlexec: could not handle a message from kernel %s: %r", runtime_id, exc)


def _guarded(callback: Callable, *args) -> None:
    """Call a callback on an I/O thread: whatever it raises is logged, never propagated."""
    try:
        callback(*args)
    except BaseException:  # noqa: BLE001 - the thread must go on with the next message
        _log.exception("dlexec: error in a callback of the I/O thread")


def _echo_stream(content: dict) -> None:
    """A task's print() shows on this process's stdout/stderr, as a child process's would."""
    out = sys.stderr if content.get("name") == "stderr" else sys.stdout
    try:
        out.write(content.get("text", ""))
        out.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not break the I/O thread
        pass
