"""``KernelSession``: one runtime made ready for dlexec, and the requests dlexec makes of it.

A session starts a :class:`~dlexec.runtimes.base.Runtime` (or restarts it), waits until the
kernel answers, installs dlexec's kernel-side worker and checks the versions it reports. It
then runs worker operations (:meth:`call`), sends ``run`` batches (:meth:`request`), runs
code with IPython (:meth:`execute`, for :class:`~dlexec.RuntimeService`) and sends the
user's modules the runtime lacks (:meth:`modules_to_ship`). Messages are routed by its
:class:`~dlexec.channel.KernelChannel`. The pool holds one session per worker;
``RuntimeService`` is a facade over one.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from . import bootstrap, execution
from .channel import KernelChannel
from .errors import RuntimeStartError
from .kernel.wire import REQUEST
from .modules import sources_to_ship
from .runtimes.base import Runtime


class KernelSession:
    """One runtime, started and with dlexec's worker installed. Thread-safe."""

    def __init__(self, runtime: Runtime, start_timeout: float = 60.0, ship_modules=True):
        self.runtime = runtime
        self.channel = KernelChannel(runtime)
        self.start_timeout = start_timeout
        self.ship_modules = ship_modules  # see dlexec.modules.check_ship_modules
        self.info: dict = {}  # what the worker reported: versions, pid, cwd
        self.installed_at_start = False  # the kernel installed the worker as it started
        self.started = False
        self.facts: dict = {}  # what the started runtime says of itself (Runtime.describe)
        self._shipped: dict[str, str] = {}  # user modules sent to the runtime: name -> digest
        self._shipped_lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.runtime.id

    def start(self) -> KernelSession:
        """Start the kernel, wait until it answers, install the worker and check its versions.

        A backend that can run code as the kernel starts (a local kernel) installs the worker
        then: one round trip fewer, and no IPython execution. On failure the runtime is stopped."""
        timeout = self.start_timeout
        self.installed_at_start = self.runtime.run_at_start(self.bootstrap_code)
        self.runtime.start(timeout)
        try:
            # Then the worker's versions come with the kernel's first answer, not a round trip later.
            info = self.channel.call_later("info") if self.installed_at_start else None
            self.wait_ready(timeout)
            self._install(timeout, info)
        except BaseException:
            self.runtime.terminate()
            raise
        self.facts = self.runtime.describe()
        self.started = True
        return self

    def restart(self) -> None:
        """Restart the kernel (a fresh interpreter) and install the worker again."""
        self.channel.forget_pending()
        self.runtime.restart(self.start_timeout)
        self.wait_ready(self.start_timeout)
        self._install(self.start_timeout)
        with self._shipped_lock:
            self._shipped.clear()

    def terminate(self) -> None:
        """Stop the kernel (idempotent, never raises)."""
        self.runtime.terminate()
        self.channel.close()

    def is_alive(self) -> bool:
        return self.started and self.channel.exit_reason is None and self.runtime.is_alive()

    def bootstrap_code(self) -> str:
        """The code that installs the worker in this runtime (see :mod:`dlexec.bootstrap`)."""
        return bootstrap.bootstrap_code(self.runtime.worker_settings())

    def _install(self, timeout: float, info=None) -> None:
        """Install the worker (unless the kernel did at its start), then check the versions it
        reports (``info``: the wait of an ``info`` request already sent)."""
        if not self.installed_at_start:
            reply, _ = self.execute(self.bootstrap_code(), timeout=timeout, silent=True, store_history=False)
            if reply.get("status") != "ok":
                self._not_installed(f"{reply.get('ename')}: {reply.get('evalue')}")
        try:
            info, _ = (info or self.channel.call_later("info"))(timeout)
        except TimeoutError:
            if not self.installed_at_start:
                raise
            self._not_installed(f"it did not answer dlexec's first request within {timeout:g} s (the worker should "
                                "have been installed as it started)")
        if info.get("status") == "error":
            self._not_installed(info.get("error") or "unknown error")
        self.info = info
        check_versions(info, self.runtime.id)

    def _not_installed(self, why: str):
        raise RuntimeStartError(
            f"could not install the dlexec worker in kernel {self.runtime.id}: {why}. The kernel's environment "
            "needs dill and tblib (pip install dill tblib)."
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait for a ``kernel_info_reply`` and for IOPub to be connected: its welcome message
        (ipykernel >= 7 greets each subscriber, JEP 65), or an IOPub message about our request."""
        channel = self.channel
        iopub_seen = channel.iopub_ready
        end = time.monotonic() + timeout
        while True:
            replied = threading.Event()

            def on_output(msg):
                iopub_seen.set()
                return False

            channel.request("shell", "kernel_info_request", {}, on_reply=lambda msg: replied.set() or True,
                            on_output=on_output)
            left = max(0.0, end - time.monotonic())
            if replied.wait(min(1.0, left)) and iopub_seen.wait(min(0.2, max(0.0, end - time.monotonic()))):
                return
            channel.raise_if_dead()
            if time.monotonic() >= end:
                raise RuntimeStartError(f"kernel {self.runtime.id} did not answer within {timeout:g} s")

    # -- requests ------------------------------------------------------------------------------

    def call(self, op: str, content: dict | None = None, frames=(), timeout: float | None = None):
        """Run one worker operation and wait for its reply: ``(content, frames)``."""
        return self.channel.call_later(op, content, frames)(timeout)

    def request(self, content: dict, frames, *, on_reply: Callable, on_lost: Callable, on_error: Callable) -> None:
        """Send a worker request whose replies go to ``on_reply`` (see KernelChannel.request)."""
        self.channel.request("shell", REQUEST, content, frames, on_reply=on_reply, on_lost=on_lost, on_error=on_error)

    def execute(self, code: str, timeout: float | None = None, **options):
        """Run code with IPython: ``(reply content, nbformat outputs)`` (see KernelChannel.execute)."""
        return execution.execute(self.channel, code, timeout, **options)

    def modules_to_ship(self, names) -> list:
        """Sources of the user modules that ``names`` (modules a payload refers to) need and
        this runtime lacks: those modules, the user modules they import and their parent
        packages, as ``ship_modules`` allows (none for a local kernel: it sees the files)."""
        if self.runtime.shares_files or self.ship_modules is False:
            return []
        with self._shipped_lock:
            return sources_to_ship(self._shipped, names, self.ship_modules)


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
