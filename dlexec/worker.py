"""The code that runs inside a kernel: a shell-message handler for dlexec requests.

The client ships this module's source (with ``serialization.py``) in one
``execute_request`` when a runtime starts; :func:`install` then registers a handler for
``dlexec_request`` messages on the kernel's shell channel. Each request is one message
with the payload in binary buffers and is answered on the shell channel (reliable,
unlike IOPub) by one or more ``dlexec_reply`` messages; no IPython cell is run, so a
task costs one kernel message each way.

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
``modules``   the source of the user's own modules, imported from it on demand
              (``run`` and ``set`` may carry the same list); see :mod:`dlexec.modules`.

Only the standard library, dill and tblib may be imported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

try:  # imported as part of the dlexec package (tests, local tools)
    from . import serialization
except ImportError:  # shipped as source into a kernel
    import _dlexec_serialization as serialization  # type: ignore[no-redef]

REQUEST = "dlexec_request"
REPLY = "dlexec_reply"
CANCEL = "dlexec_cancel"  # on the control channel: stop or skip tasks of the running batch
FLUSH_INTERVAL = 0.05  # seconds between partial replies while a batch runs

_crash_log = None
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class SourceFinder:
    """Imports the user's modules that the client shipped, from their source."""

    def __init__(self):
        self.sources: dict[str, tuple] = {}  # name -> (filename, source, is_package, digest)

    def update(self, entries) -> None:
        for name, filename, source, is_package, digest in entries:
            old = self.sources.get(name)
            self.sources[name] = (filename, source, is_package, digest)
            if old is not None and old[3] != digest:
                sys.modules.pop(name, None)  # a new version: import it afresh next time

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.sources:
            return None
        import importlib.util

        filename, _, is_package, _ = self.sources[fullname]
        return importlib.util.spec_from_loader(fullname, self, origin=filename, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        filename, source, _, _ = self.sources[module.__name__]
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)


class Worker:
    """Answers dlexec requests inside one kernel."""

    def __init__(self, kernel, user_ns: dict):
        self.kernel = kernel
        self.user_ns = user_ns
        self.initialized = False
        self.lock = threading.Lock()  # current/stopping/cancelled: shared with the control thread
        self.current = None  # the id of the task running now
        self.stopping = None  # the id of the task a stop request is for
        self.cancelled: set = set()  # ids of this batch's tasks to skip
        self.finder = SourceFinder()
        sys.meta_path.insert(0, self.finder)  # the user's current code wins over any installed copy

    # -- dispatch ---------------------------------------------------------------------

    def handle(self, stream, idents, msg):
        """ipykernel shell handler: never raises, always answers."""
        content = msg["content"]
        op = content.get("op")
        frames = [memoryview(b) for b in msg.get("buffers") or ()]
        reply = _Reply(self.kernel.session, stream, idents, msg)
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
                handler(content, frames, reply)
        except BaseException as exc:  # noqa: BLE001 - a handler error must reach the client
            info, exc_frames = serialization.dump_exception(exc)
            reply.send({"status": "error", "info": info, "final": True}, exc_frames)

    # -- ops ----------------------------------------------------------------------------

    def op_run(self, content, frames, reply):
        """Run a batch. ``blobs`` are ``[key, nframes]`` (their frames come first), each task
        ``[task_id, nframes, timeout or None, key of fn]`` with ``(args, kwargs)`` as frames;
        each result ``[task_id, status, nframes, info, seconds, stdout, stderr]``, with status
        ``ok``, ``error``, ``cancelled`` (stopped or skipped on request) or ``timeout``."""
        results, buffers = [], []
        last_flush = time.monotonic()
        if content.get("drop_blobs"):
            serialization.BLOBS.clear()
        offset = 0
        for key, nframes in content.get("blobs", ()):
            serialization.load_blob(key, frames[offset : offset + nframes])
            offset += nframes
        tasks = content["tasks"]
        with self._task_signals(), _CapturedOutput() as output:
            for index, (task_id, nframes, timeout, fn_key) in enumerate(tasks):
                task_frames = frames[offset : offset + nframes]
                offset += nframes
                started = time.perf_counter()
                output.start()
                status, info, out = self._run_one(task_id, fn_key, task_frames, timeout)
                text, errors = output.stop()
                results.append([task_id, status, len(out), info, time.perf_counter() - started, text, errors])
                buffers.extend(out)
                if time.monotonic() - last_flush > FLUSH_INTERVAL and index + 1 < len(tasks):
                    reply.send({"status": "ok", "results": results, "final": False}, buffers,
                               flush=output.take_unflushed(), printed=output.printed)
                    results, buffers = [], []
                    last_flush = time.monotonic()
            unflushed = output.take_unflushed()
        reply.send({"status": "ok", "results": results, "final": True}, buffers, flush=unflushed,
                   printed=output.printed)

    def _run_one(self, task_id, fn_key, frames, timeout):
        """Run one task; returns (status, info, frames). Never raises."""
        with self.lock:
            if task_id in self.cancelled:
                self.cancelled.discard(task_id)
                return "cancelled", None, []
            self.current, self.stopping = task_id, None
        try:
            try:
                fn = serialization.blob(fn_key)
                args, kwargs = serialization.loads(frames)
            except (KeyboardInterrupt, _TaskTimeout):
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a __reduce__ too: the task fails, not the kernel
                serialization.add_note(exc, "dlexec: the task's function or arguments could not be unpickled "
                                            "in the kernel")
                return self._error(exc, strip=0)
            try:
                if timeout:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    if timeout:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except _TaskTimeout:
                return "timeout", {"timeout": timeout}, []
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt) and self.stopping == task_id:
                    return "cancelled", None, []
                return self._error(exc, strip=1)
            try:
                return "ok", None, serialization.dumps(result)
            except (KeyboardInterrupt, _TaskTimeout):
                raise
            except BaseException as exc:  # noqa: BLE001 - the error itself, as ProcessPoolExecutor sends it
                serialization.add_note(exc, f"dlexec: the task's result (a {type(result).__name__}) could not be "
                                            "pickled in the kernel")
                return self._error(exc, strip=0)
        except (KeyboardInterrupt, _TaskTimeout) as exc:  # a signal between the steps above
            if isinstance(exc, _TaskTimeout):
                return "timeout", {"timeout": timeout}, []
            return ("cancelled", None, []) if self.stopping == task_id else self._error(exc, strip=0)
        finally:
            with self.lock:
                self.current = None

    # -- stopping tasks (the control channel) ----------------------------------------------

    def handle_cancel(self, stream, idents, msg):
        """``dlexec_cancel`` on the control channel, answered while a batch runs: stop the
        running task if it is one of ``task_ids`` (SIGINT), skip the others when reached."""
        found = {}
        with self.lock:
            for task_id in msg["content"].get("task_ids", ()):
                if task_id == self.current:
                    self.stopping = task_id
                    os.kill(os.getpid(), signal.SIGINT)  # wakes sleeps and blocking calls too
                    found[task_id] = "stopping"
                else:
                    self.cancelled.add(task_id)
                    found[task_id] = "skipped if not done"
        self.kernel.session.send(stream, "dlexec_cancel_reply", {"status": "ok", "tasks": found},
                                 parent=msg, ident=idents)

    @contextlib.contextmanager
    def _task_signals(self):
        """SIGINT stops the running task only if it was meant for it; SIGALRM is a timeout."""

        def on_sigint(signum, frame):
            if self.stopping is not None and self.stopping != self.current:
                return  # a stop request for a task that has finished meanwhile
            raise KeyboardInterrupt

        def on_sigalrm(signum, frame):
            if self.current is not None:
                raise _TaskTimeout

        previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGALRM, on_sigalrm)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGALRM, previous[1])
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
        with _CapturedOutput(keep=False) as output:  # counted, not kept
            try:
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001
                status, info, out = self._error(exc, strip=1)
        self.initialized = status == "ok"
        reply.send({"status": status, "info": info, "final": True}, out, flush=output.take_unflushed(),
                   printed=output.printed)

    def op_set(self, content, frames, reply):
        offset = 0
        for name, nframes in content["names"]:
            self.user_ns[name] = serialization.loads(frames[offset : offset + nframes])
            offset += nframes
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

    def op_modules(self, content, frames, reply):
        reply.send({"status": "ok", "final": True})  # installed by handle()

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


class _TaskTimeout(BaseException):
    """Raised in a task by SIGALRM when it runs past its timeout."""


class _CapturedOutput:
    """Keeps what each task prints (for ``TaskFuture.stdout``/``stderr``), while letting it
    through to the kernel's own streams, which show it live on the client.

    ``printed`` counts the characters that the thread running the request wrote to stdout
    and stderr (other threads' output goes out under their own parent message): a reply
    says how much, and the client holds the results until that much output has arrived
    (it travels on IOPub, the reply on the shell channel, and either may come first).
    """

    def __init__(self, keep: bool = True):
        self.parts = {"stdout": [], "stderr": []} if keep else {"stdout": None, "stderr": None}
        self.printed = [0, 0]  # characters written to stdout, stderr by the request's thread, in all
        self.unflushed = False  # something was printed since the last reply

    def __enter__(self):
        self.thread = threading.get_ident()
        self.saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(sys.stdout, self.parts["stdout"], self, 0)
        sys.stderr = _Tee(sys.stderr, self.parts["stderr"], self, 1)
        return self

    def __exit__(self, *exc_info):
        sys.stdout, sys.stderr = self.saved

    def start(self):
        self.parts["stdout"].clear()
        self.parts["stderr"].clear()

    def stop(self):
        return "".join(self.parts["stdout"]), "".join(self.parts["stderr"])

    def take_unflushed(self) -> bool:
        unflushed, self.unflushed = self.unflushed, False
        return unflushed


class _Tee:
    def __init__(self, stream, parts: list, owner: _CapturedOutput, index: int):
        self._stream, self._parts, self._owner, self._index = stream, parts, owner, index

    def write(self, text):
        if self._parts is not None:
            self._parts.append(text)
        self._owner.unflushed = True
        written = self._stream.write(text)
        if type(text) is str and threading.get_ident() == self._owner.thread:
            self._owner.printed[self._index] += len(text)
        return written

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Reply:
    """Sends ``dlexec_reply`` messages to one request, on the shell channel."""

    def __init__(self, session, stream, idents, parent):
        self.session, self.stream, self.idents, self.parent = session, stream, idents, parent

    def send(self, content, buffers=(), flush=True, printed=None):
        # Let the task's prints go out first. Only if there are any: a flush waits for a
        # round trip to the kernel's IOPub thread, a quarter of a trivial task's time.
        for out in (sys.stdout, sys.stderr) if flush else ():
            try:
                out.flush()
            except Exception:  # noqa: BLE001
                pass
        if printed and (printed[0] or printed[1]):  # the client waits for this much output first
            content["printed"] = list(printed)
        layout, buffers = serialization.pack(buffers)
        if layout:
            content["layout"] = layout
        if "digests" in self.parent["content"]:  # the client checks them (serialization.digests)
            content["digests"] = serialization.digests(buffers)
        self.session.send(self.stream, REPLY, content, parent=self.parent, ident=self.idents, buffers=buffers)


def _is_module(value) -> bool:
    return type(value).__name__ == "module"


def install(settings: dict) -> dict:
    """Register the handler in the running kernel; returns the kernel's versions."""
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
    worker = Worker(kernel, ip.user_ns)
    kernel.shell_handlers[REQUEST] = worker.handle
    kernel.control_handlers[CANCEL] = worker.handle_cancel
    return {"pid": os.getpid(), "python": list(sys.version_info[:3])}
