"""A local ipykernel, started and driven with jupyter-client.

The kernel listens on Unix sockets (the IPC transport) in a private ``0700`` temporary
directory, with jupyter-client's HMAC message signing, so no other user can reach it and
no TCP port is opened. Its own stdout/stderr (C-level output, crash reports) go to a log
file in that directory, whose tail explains a crash. jupyter-client sets
``JPY_PARENT_PID``, so the kernel exits by itself when this process dies.

One I/O thread per kernel owns the ZeroMQ sockets (they are not thread-safe): it sends
what :meth:`LocalRuntime.send` queued, delivers what arrives, and notices when the
kernel process exits.

The default kernel (``kernel_name=None``) is this Python's ipykernel, started by
``launch_kernel.py`` (ipykernel without its debugger, which dlexec does not use), from a
kernel spec made here rather than looked up (a lookup imports IPython in this process), and
it installs the dlexec worker as it starts (``IPKernelApp.exec_files``), so that its first
request can be a task. A named kernel (``kernel_name="python3"``...) is found by
jupyter-client as usual, and gets the worker by a first ``execute_request``.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from .. import _threads
from .base import Runtime, RuntimeStartError

_log = logging.getLogger("dlexec")
_POLL_MS = 100  # how often the I/O thread checks that the kernel process is alive
_LOG_TAIL_LINES = 20
#: Milliseconds between two attempts of a client socket to reach a kernel that is not yet
#: listening (ZeroMQ's default is 100, which a kernel's first answer would wait for on average half of).
_RECONNECT_MS = 10

#: Kernel options that take ~1 ms off each execution: no sqlite history, no post-execute sleep.
KERNEL_ARGUMENTS = ("--HistoryManager.enabled=False", "--IPythonKernel._execute_sleep=0")
#: The name of the default kernel's spec (``kernel_name=None``): this Python, ``launch_kernel.py``.
OWN_KERNEL = "dlexec-python"
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_kernel.py")
_STARTUP_FILE = "dlexec-worker-startup.py"  # in the kernel's private directory (not an importable name)


class _KernelSpecs(KernelSpecManager):
    """jupyter-client's kernel specs, plus dlexec's own kernel, which needs no lookup."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == OWN_KERNEL:
            return KernelSpec(
                name=OWN_KERNEL,
                argv=[sys.executable, _LAUNCHER, "-f", "{connection_file}"],
                display_name=f"dlexec (Python {sys.version.split()[0]})",
                language="python",
                resource_dir=os.path.dirname(_LAUNCHER),
                metadata={"debugger": False, "supported_encryption": ["curve"]},  # ipykernel's, less the debugger
            )
        return super().get_kernel_spec(kernel_name)


_context: tuple | None = None  # (the process-wide context, our shadow of it)


def _zmq_context() -> zmq.Context:
    """The process-wide ZeroMQ context, never one per kernel: a context that the garbage
    collector finalizes while one of its sockets is still open blocks forever in zmq_ctx_term
    (a KernelManager in a reference cycle does exactly that). Seen through a shadow of its own,
    whose sockets retry a kernel that is not listening yet every ``_RECONNECT_MS`` ms (the
    application's sockets keep their defaults); a shadow never terminates the context."""
    global _context
    instance = zmq.Context.instance()  # a new one if the application terminated the last one
    if _context is None or _context[0] is not instance:
        context = zmq.Context(shadow=instance)
        context.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
        _context = (instance, context)
    return _context[1]


class LocalRuntime(Runtime):
    """An ipykernel child process of this Python process."""

    kind = "local"
    shares_files = True

    def __init__(
        self,
        name: str = "local",
        kernel_name: str | None = None,
        *,
        extra_arguments: tuple[str, ...] = (),
        env: dict | None = None,
        cwd: str | None = None,
    ):
        super().__init__(name)
        self.kernel_name = kernel_name
        self.extra_arguments = tuple(extra_arguments)
        self.env = env
        self.cwd = cwd
        self._km: KernelManager | None = None
        self._log = None
        self._restarting = False
        self._dir: str | None = None
        self._log_path: str | None = None
        self._outbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._exit_reason: str | None = None
        self._terminate_lock = threading.Lock()
        self._startup_code = None  # () -> code the kernel runs as it starts (see run_at_start)

    @property
    def id(self) -> str:
        return f"{self.name} (pid {self.pid})" if self.pid else self.name

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    @property
    def _process(self):
        return getattr(self._km.provisioner, "process", None) if self._km else None

    # -- lifecycle ------------------------------------------------------------------------

    def run_at_start(self, code) -> bool:
        """dlexec's own kernel runs ``code()`` as it starts, and again after a restart, from a
        startup file in its private directory (ipykernel's ``exec_files``); a named kernel
        (which may not be ipykernel) does not, nor one given startup files of its own."""
        if self.kernel_name is not None or any("exec_files" in argument for argument in self.extra_arguments):
            return False
        self._startup_code = code
        return True

    def _write_startup_file(self) -> list[str]:
        """The startup file, written afresh (the worker's settings as they are now); its kernel argument."""
        if self._startup_code is None:
            return []
        path = os.path.join(self._dir, _STARTUP_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self._startup_code())
        return [f"--IPKernelApp.exec_files={path}"]

    def start(self, timeout: float = 60.0) -> None:
        self._dir = tempfile.mkdtemp(prefix="dlexec-")  # mode 0700
        self._log_path = os.path.join(self._dir, "kernel.log")
        transport, ip = ("ipc", os.path.join(self._dir, "kernel")) if hasattr(os, "fork") else ("tcp", "127.0.0.1")
        km = KernelManager(
            kernel_name=OWN_KERNEL if self.kernel_name is None else self.kernel_name,
            kernel_spec_manager=_KernelSpecs(),
            transport=transport,
            ip=ip,
            connection_file=os.path.join(self._dir, "connection.json"),
            context=_zmq_context(),
        )
        self._km = km
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's frozen-modules warning
        self._log = open(self._log_path, "ab")  # noqa: SIM115 - kept open for restarts
        try:
            with _threads.signals_unblocked():  # the kernel inherits this thread's mask: it must get SIGINT
                km.start_kernel(
                    extra_arguments=[*KERNEL_ARGUMENTS, *self._write_startup_file(), *self.extra_arguments],
                    env=env,
                    cwd=self.cwd or os.getcwd(),
                    stdout=self._log,
                    stderr=self._log,
                )
        except Exception as exc:
            self.terminate()
            name = self.kernel_name or OWN_KERNEL
            raise RuntimeStartError(f"could not start a local kernel ({name!r}): {exc}") from exc
        self._session = km.session
        self._sockets = {
            "shell": km.connect_shell(identity=km.session.bsession),
            "control": km.connect_control(identity=km.session.bsession),
            "iopub": km.connect_iopub(),
        }
        for sock in self._sockets.values():
            sock.linger = 0
        self._thread = threading.Thread(target=self._io_loop, name=f"dlexec-io-{self.name}", daemon=True)
        _threads.start(self._thread)

    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        return self._session.msg(msg_type, content, metadata=metadata)

    def send(self, channel: str, msg: dict, buffers=()) -> None:
        if self._stopping or self._exit_reason is not None:
            raise RuntimeError(f"kernel {self.id} is not running")
        # Serialized and signed here, in the caller's thread: a message that cannot be sent
        # (content that is not JSON) fails its caller, not the I/O thread.
        parts = self._session.serialize(msg)
        parts.extend(buffers)
        copy = max(memoryview(part).nbytes for part in parts) < self._session.copy_threshold
        self._outbox.append((channel, parts, copy))
        self._wake()

    def interrupt(self) -> None:
        if self._km is not None and self.is_alive():
            self._km.interrupt_kernel()

    def restart(self, timeout: float = 60.0) -> None:
        if self._km is None:
            raise RuntimeStartError("the kernel was never started")
        self._restarting = True  # the old process's exit is not a death
        try:
            self._write_startup_file()  # the same path, with the settings as they are now
            with _threads.signals_unblocked():
                self._km.restart_kernel(now=True)
        except Exception as exc:
            raise RuntimeStartError(f"could not restart kernel {self.id}: {exc}") from exc
        finally:
            self._restarting = False

    def io_alive(self) -> bool:
        return self._thread is not None and (self._thread.is_alive() or self._stopping)

    def is_alive(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    def terminate(self) -> None:
        with self._terminate_lock:  # a second caller waits until the kernel is really gone
            if self._stopping:
                return
            self._stopping = True
            self._terminate()

    def _terminate(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._wake()
            self._thread.join(timeout=5)
        km = self._km
        if km is not None:
            try:
                if km.has_kernel:
                    process = self._process
                    if process is not None and process.poll() is None:
                        _kill_group(process, getattr(km.provisioner, "pgid", None))
                        process.wait(timeout=5)
                # No km.cleanup_resources(): removing the private directory below removes the
                # connection file and sockets, without an asyncio loop per call (jupyter-client's
                # sync wrappers leave one unclosed in every thread). Its control socket is closed
                # here, not left to the garbage collector.
                km._close_control_socket()
            except Exception:  # noqa: BLE001 - termination must not raise, but say why
                _log.warning("dlexec: could not stop kernel %s", self.id, exc_info=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def worker_settings(self) -> dict:
        # As multiprocessing's spawn does: the child sees this process's import path and
        # working directory, so functions from the user's modules import there too.
        return {"sys_path": list(sys.path), "cwd": os.getcwd(), "crash_log": self._log_path}

    def describe(self) -> dict:
        kernel_id = self._km.kernel_id if self._km is not None else None
        return {**super().describe(), "pid": self.pid, "kernel_id": kernel_id, "directory": self._dir}

    # -- the I/O thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (the thread has plenty to wake it) or already closed
            pass

    def _io_loop(self) -> None:
        """The I/O thread: if it has to stop for any reason but terminate(), that is the
        kernel's death for the client (``on_exit``), never a silent end."""
        try:
            self._io_loop_body()
        except BaseException as exc:  # noqa: BLE001 - reported as the kernel's end, below
            if self._exit_reason is None:
                self._exit_reason = f"dlexec's I/O thread for kernel {self.id} failed: {exc!r}"
            _log.error("dlexec: %s", self._exit_reason, exc_info=True)
            self._kill()  # nobody can talk to it any more
        finally:
            for sock in self._sockets.values():
                sock.close(linger=0)
        if self._exit_reason is not None and not self._stopping:
            self.on_exit(self._exit_reason)

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            _kill_group(process, getattr(self._km.provisioner, "pgid", None))

    def _io_loop_body(self) -> None:
        poller = zmq.Poller()
        by_socket = {}
        for channel, sock in self._sockets.items():
            poller.register(sock, zmq.POLLIN)
            by_socket[sock] = channel
        poller.register(self._wake_r, zmq.POLLIN)
        next_check = 0.0
        while not self._stopping:
            events = dict(poller.poll(_POLL_MS))
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
            while self._outbox:
                channel, parts, copy = self._outbox.popleft()
                self._sockets[channel].send_multipart(parts, copy=copy)
            for sock, channel in by_socket.items():
                if sock in events:
                    self._drain(sock, channel)
            now = time.monotonic()
            if now >= next_check or not events:
                next_check = now + _POLL_MS / 1000
                process = self._process
                if not self._restarting and process is not None and process.poll() is not None:
                    for sock, channel in by_socket.items():  # what it said before dying
                        self._drain(sock, channel)
                    self._exit_reason = self._describe_exit(process.returncode)
                    return

    def _drain(self, sock, channel: str) -> None:
        session = self._session
        while True:
            try:
                idents, msg = session.recv(sock, mode=zmq.NOBLOCK, content=True, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:
                raise  # the socket itself failed: the loop ends, and says why
            except Exception:  # noqa: BLE001 - a bad message (a wrong signature...) is dropped
                _log.warning("dlexec: dropped a malformed %s message from kernel %s", channel, self.id, exc_info=True)
                continue
            if msg is None:
                return
            try:
                self.on_message(channel, msg)
            except BaseException:  # noqa: BLE001 - a handler's failure must not stop the I/O thread
                _log.exception("dlexec: error while handling a %s message", channel)

    def _describe_exit(self, code: int) -> str:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name} ({code})"
            if -code == signal.SIGKILL:
                how += ", possibly by the out-of-memory killer"
        else:
            how = f"exited with code {code}"
        tail = self.log_tail()
        return f"kernel {self.id} {how}" + (f"; its last output:\n{tail}" if tail else "")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the kernel process wrote to its own stdout/stderr.

        For a crash, faulthandler's report from "Fatal Python error" down to the user's
        last frame (the kernel's own frames below it are left out).
        """
        if not self._log_path:
            return ""
        try:
            with open(self._log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        start = text.rfind("Fatal Python error")
        if start >= 0:
            text = text[start:]
            cut = text.find(os.sep + os.path.join("dlexec", "kernel", ""))  # the first frame of dlexec's worker
            if cut >= 0:
                text = text[: text.rfind("\n", 0, cut) + 1]
        kept = [line for line in text.strip().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def _kill_group(process, pgid) -> None:
    """SIGKILL the kernel and what it started (it leads its own process group)."""
    try:
        if pgid and hasattr(os, "killpg"):
            os.killpg(pgid, signal.SIGKILL)
        else:
            process.kill()
    except OSError:
        pass
