"""Requests and replies over one :class:`~dlexec.runtimes.base.Runtime`.

:class:`KernelChannel` matches replies and IOPub output to the request that caused them,
for the two kinds of request dlexec makes:

* ``execute_request``: code run by IPython, its outputs collected nbformat-style
  (what :class:`dlexec.RuntimeService` needs);
* ``dlexec_request``: one of the worker's operations (:mod:`dlexec.worker`), with the
  payload in binary buffers; this is how tasks travel.

It also installs the worker in the kernel (:meth:`KernelChannel.start`), and fails every
pending request when the kernel dies.

A request's output (IOPub) and its replies (shell) travel apart, so a reply can arrive
before the output that its tasks printed. A ``dlexec_reply`` says how much its request has
printed (``printed``: characters on stdout and stderr); such a reply is held until that much
output has been echoed here, or for ``OUTPUT_WAIT`` seconds at most, so that a task's output
is on the caller's stdout before its future completes. Replies of requests that print
nothing take no detour.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Callable

from . import _threads, bootstrap, serialization, worker
from .errors import RuntimeStartError, WorkerLostError
from .runtimes.base import Runtime

_log = logging.getLogger("dlexec")

#: Seconds a reply waits at most for the output its request printed (see the module's doc).
OUTPUT_WAIT = 1.0

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
        # Replies waiting for their output, in arrival order: (parent id, request, reply, deadline);
        # see _hold. The lock guards these and the requests' counts, never a reply's handling.
        self._held: deque = deque()
        self._held_lock = threading.Lock()
        self._held_idle = threading.Condition(self._held_lock)  # notified when no thread hands replies over
        self._handing_over = False  # a thread is handing held replies over (one at a time, in order)
        self._held_expired = False  # the kernel has gone: hand everything over, wait for nothing
        self._held_timer: threading.Timer | None = None
        self._exit_callbacks: list[Callable[[str], None]] = []
        self._iopub_ready = threading.Event()  # IOPub is connected: see wait_ready
        runtime.on_message = self._on_message
        runtime.on_exit = self._on_exit

    # -- start ------------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Start the kernel, wait until it answers, install the worker and read its versions.

        A backend that can run code as the kernel starts (a local kernel) installs the worker
        then: one round trip fewer, and no IPython execution."""
        self._installed_at_start = self.runtime.run_at_start(self.bootstrap_code)
        self.runtime.start(timeout)
        try:
            # Then the worker's versions come with the kernel's first answer, not a round trip later.
            info = self.call_later("info") if self._installed_at_start else None
            self.wait_ready(timeout)
            self.install_worker(timeout, info)
        except BaseException:
            self.runtime.terminate()
            raise

    _installed_at_start = False

    def bootstrap_code(self) -> str:
        """The code that installs the worker: its source and this runtime's settings."""
        return bootstrap.bootstrap_code(self.runtime.worker_settings())

    def install_worker(self, timeout: float, info=None) -> None:
        """Ship the worker's source into the kernel and register its handler (unless the
        kernel did at its start), then check the versions it reports (``info``: the wait of an
        ``info`` request already sent)."""
        if not self._installed_at_start:
            reply, _ = self.execute(self.bootstrap_code(), timeout=timeout, silent=True, store_history=False)
            if reply.get("status") != "ok":
                self._not_installed(f"{reply.get('ename')}: {reply.get('evalue')}")
        try:
            info, _ = (info or self.call_later("info"))(timeout)
        except TimeoutError:
            if not self._installed_at_start:
                raise
            self._not_installed(f"it did not answer dlexec's first request within {timeout:g} s (the worker should "
                                "have been installed as it started)")
        if info.get("status") == "error":
            self._not_installed(info.get("error") or "unknown error")
        self.info = info
        check_versions(self.info, self.runtime.id)

    def _not_installed(self, why: str):
        raise RuntimeStartError(
            f"could not install the dlexec worker in kernel {self.runtime.id}: {why}. The kernel's environment "
            "needs dill and tblib (pip install dill tblib)."
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait for a ``kernel_info_reply`` and for IOPub to be connected: its welcome message
        (ipykernel >= 7 greets each subscriber, JEP 65), or an IOPub message about our request."""
        iopub_seen = self._iopub_ready
        deadline = _Deadline(timeout)
        while True:
            replied = threading.Event()

            def on_output(msg):
                iopub_seen.set()
                return False

            self.request(
                "shell",
                "kernel_info_request",
                {},
                on_reply=lambda msg: replied.set() or True,
                on_output=on_output,
            )
            if replied.wait(min(1.0, deadline.left())) and iopub_seen.wait(min(0.2, deadline.left())):
                return
            self._raise_if_dead()
            if deadline.expired():
                raise RuntimeStartError(
                    f"kernel {self.runtime.id} did not answer within {timeout:g} s"
                )

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
        if msg_type == worker.REQUEST:
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
            self._raise_if_dead()
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
            "shell", worker.REQUEST, {"op": op, **(content or {})}, frames, on_reply=on_reply, on_lost=on_lost,
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

    def execute(self, code: str, timeout: float | None = None, *, silent=False, store_history=True,
                on_output: Callable[[dict], None] | None = None, interrupt_grace: float = 5.0):
        """Run code with IPython; returns ``(reply content, outputs)``.

        Outputs are nbformat v4 output dicts. On ``timeout`` the kernel is interrupted and
        the call waits ``interrupt_grace`` seconds more for the interrupted reply; the reply
        then has ``status: "timeout"``.
        """
        outputs: list[dict] = []
        displays: dict[str, list[dict]] = {}  # display_id -> its outputs, for updates
        state = {"reply": None, "idle": False}
        done = threading.Event()

        def collect(msg):
            msg_type = msg["header"]["msg_type"]
            if msg_type == "status":
                if msg["content"].get("execution_state") == "idle":
                    state["idle"] = True
                    if state["reply"] is not None:
                        done.set()
                        return True
                return False
            if msg_type == "clear_output":
                outputs.clear()
            elif msg_type in ("stream", "display_data", "execute_result", "error"):
                output = _output_from_msg(msg)
                _merge_output(outputs, output)
                display_id = (msg["content"].get("transient") or {}).get("display_id")
                if display_id:
                    displays.setdefault(display_id, []).append(output)
            elif msg_type == "update_display_data":
                display_id = (msg["content"].get("transient") or {}).get("display_id")
                for output in displays.get(display_id, ()):
                    output["data"] = msg["content"].get("data", {})
                    output["metadata"] = msg["content"].get("metadata", {})
            if on_output is not None:
                on_output(msg)
            return False

        def on_reply(msg):
            state["reply"] = msg["content"]
            if state["idle"]:
                done.set()
            return state["idle"]

        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        def on_error(exc):
            state["error"] = exc
            done.set()

        self.request("shell", "execute_request", content, on_reply=on_reply, on_output=collect,
                     on_lost=lambda reason: done.set(), on_error=on_error)
        if not done.wait(timeout):
            self.runtime.interrupt()
            done.wait(interrupt_grace)
            reply = dict(state["reply"] or {})
            reply["status"] = "timeout"
            return reply, outputs
        if state.get("error") is not None:
            raise state["error"]
        if state["reply"] is None:
            raise self.lost_error()
        return state["reply"], outputs

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
                    self._output_echoed(parent_id, request, msg["content"])
            elif msg["header"]["msg_type"] == "iopub_welcome":
                self._iopub_ready.set()
            return
        if self.digests and msg["header"]["msg_type"] == worker.REPLY:
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
        if self._held or msg["content"].get("printed"):
            self._hold(parent_id, request, msg)
        elif request.on_reply(msg):
            with self._lock:
                self._pending.pop(parent_id, None)

    # -- output before results --------------------------------------------------------------
    #
    # A reply that says its request printed more than has been echoed so far is held, and so
    # is every reply after it (the kernel's order is kept). They are handed over as the output
    # arrives (by the I/O thread) or when the first one has waited OUTPUT_WAIT (by a timer),
    # by one thread at a time, in order, without holding _held_lock (a reply's handling takes
    # the executor's lock). A reply stays first in _held while it is handed over, so that the
    # I/O thread does not take the fast path meanwhile.

    def _output_echoed(self, parent_id: str, request: _Request, content: dict) -> None:
        """Count a request's output (I/O thread); hand over the replies that waited for it."""
        index = 1 if content.get("name") == "stderr" else 0
        text = content.get("text", "")
        with self._held_lock:
            if request.echoed is None:
                request.echoed = [0, 0]
            request.echoed[index] += len(text)
            if index and text.startswith(_RATE_LIMITED):
                request.dropped = True
            waiting = bool(self._held)
        if waiting:
            self._release()

    def _hold(self, parent_id: str, request: _Request, msg: dict) -> None:
        """Hold a reply until its request's output has arrived, behind those already held (I/O thread)."""
        with self._held_lock:
            self._held.append((parent_id, request, msg, time.monotonic() + OUTPUT_WAIT))
        self._release()

    def _release(self) -> None:
        """Hand over the held replies, in order, up to the first one that must wait (the timer
        is set for it). Returns at once if another thread is handing them over: it goes on
        with what this thread would have handed over."""
        with self._held_lock:
            if self._handing_over:
                return
            self._handing_over = True
        try:
            while True:
                with self._held_lock:
                    head = self._releasable()
                    if head is None:
                        self._handing_over = False
                        self._held_idle.notify_all()
                        return
                parent_id, request, msg, _ = head
                if not request.done:
                    self._deliver(parent_id, request, msg)
                with self._held_lock:
                    self._held.popleft()
        except BaseException:
            with self._held_lock:
                self._handing_over = False
                self._held_idle.notify_all()
            raise

    def _releasable(self):
        """(lock held) The first held reply if it can be handed over now; else None, with the
        timer set for it."""
        if not self._held:
            if self._held_timer is not None:
                self._held_timer.cancel()
                self._held_timer = None
            return None
        head = self._held[0]
        _, request, msg, deadline = head
        left = deadline - time.monotonic()
        if self._held_expired or request.done or request.dropped or left <= 0 or _caught_up(request, msg):
            return head
        if self._held_timer is None:
            timer = threading.Timer(left, self._on_wait_over)
            timer.daemon = True
            timer.name = f"dlexec-output-wait-{self.runtime.id}"
            try:
                _threads.start(timer)
            except BaseException:  # noqa: BLE001 - no thread to wait with: do not wait
                _log.warning("dlexec: could not start a timer thread; a result is handed over without waiting "
                             "for its output", exc_info=True)
                return head
            self._held_timer = timer
        return None

    def _on_wait_over(self) -> None:
        """The first held reply may have waited long enough (timer thread)."""
        try:
            with self._held_lock:
                self._held_timer = None
            self._release()
        except BaseException:  # noqa: BLE001 - the timer thread never ends with an error (_deliver fails requests)
            _log.exception("dlexec: error while handing over the replies of kernel %s", self.runtime.id)

    def _deliver(self, parent_id: str, request: _Request, msg: dict) -> None:
        """One held reply to its request; whatever it raises ends the request, as in _on_message."""
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
        with self._held_lock:  # replies that came before the end: their results stand
            self._held_expired = True
        _guarded(self._release)
        with self._held_lock:  # if another thread is handing them over, let it finish (bounded)
            self._held_idle.wait_for(lambda: not self._handing_over, timeout=2.0)
        for request in pending.values():
            if request.on_lost is not None and not request.done:
                _guarded(request.on_lost, reason)
        for callback in callbacks:
            _guarded(callback, reason)

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
        self._iopub_ready.clear()  # the new kernel's IOPub has to be seen again
        with self._held_lock:  # nor will their held replies be handed over
            for request in pending.values():
                request.done = True
        self._release()

    def lost_error(self) -> WorkerLostError:
        reason = self.exit_reason or "the kernel stopped"
        return WorkerLostError(
            f"The runtime {self.runtime.id} terminated abruptly: {reason}",
            runtime_id=self.runtime.id,
            reason=reason,
        )

    def _raise_if_dead(self) -> None:
        if self.exit_reason is not None:
            raise self.lost_error()
        if not self.runtime.is_alive():
            raise RuntimeStartError(f"kernel {self.runtime.id} is not running")


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


def check_versions(info: dict, runtime_id: str) -> None:
    """Refuse a kernel that cannot read what this client sends; warn about a different dill.

    dill sends functions defined in ``__main__`` and in the user's modules as code objects,
    which only the same Python minor version can load.
    """
    import warnings

    import dill

    remote = tuple(info.get("python") or ())[:2]
    here = sys.version_info[:2]
    if remote and remote != here:
        raise RuntimeStartError(
            f"runtime {runtime_id} runs Python {'.'.join(map(str, info['python']))} but this client runs "
            f"{sys.version.split()[0]}: functions sent by value (from __main__, notebooks or your own modules) "
            f"cannot be loaded across Python versions. Use a runtime environment with Python "
            f"{here[0]}.{here[1]}, or a client with Python {remote[0]}.{remote[1]}."
        )
    if info.get("dill") and info["dill"] != dill.__version__:
        warnings.warn(
            f"runtime {runtime_id} has dill {info['dill']} and this client dill {dill.__version__}; "
            "if tasks fail to load there, install the same dill version on both sides.",
            RuntimeWarning,
            stacklevel=2,
        )


class _Deadline:
    def __init__(self, timeout: float | None):
        import time

        self._clock = time.monotonic
        self._end = None if timeout is None else self._clock() + timeout

    def left(self) -> float:
        return 3600.0 if self._end is None else max(0.0, self._end - self._clock())

    def expired(self) -> bool:
        return self._end is not None and self._clock() >= self._end


def _echo_stream(content: dict) -> None:
    """A task's print() shows on this process's stdout/stderr, as a child process's would."""
    out = sys.stderr if content.get("name") == "stderr" else sys.stdout
    try:
        out.write(content.get("text", ""))
        out.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not break the I/O thread
        pass


def _output_from_msg(msg: dict) -> dict:
    """An nbformat v4 output from an IOPub message (as ``nbformat.v4.output_from_msg``,
    whose import pulls in jsonschema and takes seconds: too slow for every kernel start)."""
    msg_type, content = msg["header"]["msg_type"], msg["content"]
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "error":
        return {"output_type": "error", "ename": content.get("ename", ""), "evalue": content.get("evalue", ""),
                "traceback": content.get("traceback", [])}
    output = {"output_type": msg_type, "metadata": content.get("metadata", {}), "data": content.get("data", {})}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    return output


def _merge_output(outputs: list[dict], output: dict) -> None:
    """Append an output; consecutive text on the same stream becomes one output."""
    if (
        output["output_type"] == "stream"
        and outputs
        and outputs[-1]["output_type"] == "stream"
        and outputs[-1]["name"] == output["name"]
    ):
        outputs[-1]["text"] += output["text"]
    else:
        outputs.append(output)

