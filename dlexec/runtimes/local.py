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

import logging
import os
import shutil
import signal
import sys
import tempfile

import zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from .. import _threads
from .base import Runtime, RuntimeStartError
from .lifecycle import TerminateOnce
from .local_io import KernelIO

_log = logging.getLogger("dlexec")
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


class LocalRuntime(TerminateOnce, Runtime):
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
        self._io: KernelIO | None = None  # the I/O thread, once started (see local_io)
        self._init_terminate_once()
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
        sockets = {
            "shell": km.connect_shell(identity=km.session.bsession),
            "control": km.connect_control(identity=km.session.bsession),
            "iopub": km.connect_iopub(),
        }
        for sock in sockets.values():
            sock.linger = 0
        self._io = KernelIO(self.name, km.session, sockets, label=lambda: self.id,
                            on_message=lambda channel, msg: self.on_message(channel, msg),
                            exit_code=self._exit_code, stopping=lambda: self._stopping, on_end=self._io_ended)
        self._io.start()

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
        self._io.send(channel, parts, copy)

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
        return self._io is not None and (self._io.is_alive() or self._stopping)

    def is_alive(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def _terminate(self) -> None:
        if self._io is not None:
            self._io.stop()
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

    # -- what the I/O thread (local_io.KernelIO) reports ------------------------------------------

    def _exit_code(self) -> int | None:
        """The kernel process's exit code once it ended; None while it runs, or restarts."""
        process = self._process
        if not self._restarting and process is not None and process.poll() is not None:
            return process.returncode
        return None

    def _io_ended(self, code: int | None, error: BaseException | None) -> None:
        """The I/O thread ended: if for any reason but terminate(), that is the kernel's death
        for the client (``on_exit``), never a silent end."""
        if error is not None:
            if self._exit_reason is None:
                self._exit_reason = f"dlexec's I/O thread for kernel {self.id} failed: {error!r}"
            _log.error("dlexec: %s", self._exit_reason, exc_info=error)
            self._kill()  # nobody can talk to it any more
        elif code is not None:
            self._exit_reason = self._describe_exit(code)
        if self._exit_reason is not None and not self._stopping:
            self.on_exit(self._exit_reason)

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            _kill_group(process, getattr(self._km.provisioner, "pgid", None))

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
