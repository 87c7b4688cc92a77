"""A Datalayer runtime: a paid, remote pod whose Jupyter Server runs the kernel.

:meth:`DatalayerRuntime.start` creates the runtime through the Datalayer REST API
(:mod:`dlexec.datalayer`), then starts a kernel on the runtime's ``ingress`` with the
runtime's own token through :class:`~dlexec.runtimes.jupyter.JupyterServerRuntime`,
retrying while a new runtime's ingress still answers 502/503/504 (warming up).

Paid runtimes must never outlive the program that created them. A runtime created here
is deleted by :meth:`terminate`, when connecting to it fails, and at interpreter exit
(also after Ctrl-C, and after SIGTERM: see :mod:`dlexec.runtimes.signals`). One that
cannot be deleted is reported with its pod name and the command that deletes it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import warnings

from ..datalayer import DatalayerClient, DatalayerError, terminate_command
from ..errors import RuntimeStartError
from .base import Runtime
from .jupyter import JupyterServerRuntime

_log = logging.getLogger("dlexec")

#: Statuses of an ingress that is still warming up.
WARMING_UP = (502, 503, 504)

_owned: dict[str, DatalayerRuntime] = {}  # pod name -> runtime this process created and has not deleted
_owned_lock = threading.Lock()


class DatalayerRuntime(Runtime):
    """One Datalayer runtime and one kernel on it.

    ``environment``, ``time_reservation`` (minutes), ``run_url``, ``iam_url`` and ``token``
    are the seed API's; ``snapshot`` (a Datalayer snapshot name or uid) starts the runtime
    from it. ``warmup_timeout`` bounds the wait for a new runtime's ingress, and
    ``retry_deadline`` the retries of each API call. Given ``pod_name``, ``ingress`` and ``jupyter_token`` of an existing runtime,
    it connects to it instead, and does not delete it.
    """

    kind = "datalayer"

    def __init__(
        self,
        name: str = "dlexec",
        environment: str = "python-cpu-env",
        time_reservation: float = 10.0,
        run_url: str | None = None,
        iam_url: str | None = None,
        token: str | None = None,
        *,
        snapshot: str | None = None,
        pod_name: str | None = None,
        ingress: str | None = None,
        jupyter_token: str | None = None,
        kernel_name: str = "python3",
        warmup_timeout: float = 180.0,
        retry_deadline: float = 30.0,
        client: DatalayerClient | None = None,
    ):
        super().__init__(name)
        self.environment = environment
        self.time_reservation = time_reservation
        self.snapshot = snapshot
        self.kernel_name = kernel_name
        self.warmup_timeout = warmup_timeout
        self.client = client or DatalayerClient(token, run_url, iam_url, retry_deadline=retry_deadline)
        self.info = None  # dlexec.datalayer.RuntimeInfo once created or found
        self.pod_name = pod_name
        self.ingress, self.jupyter_token = ingress, jupyter_token
        self.owned = False
        self.kernel: JupyterServerRuntime | None = None
        self._terminated = False
        self._terminate_lock = threading.Lock()

    @property
    def id(self) -> str:
        return f"{self.name} (runtime {self.pod_name or '?'})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        if not (self.ingress and self.jupyter_token):
            self._create()
        try:
            self._connect(self.warmup_timeout)
        except BaseException:
            self.terminate()  # never leave a paid runtime behind a failed start
            raise

    def _create(self) -> None:
        try:
            info = self.client.create_runtime(self.environment, self.time_reservation, given_name=self.name,
                                              snapshot=self.snapshot)
        except (DatalayerError, ValueError) as exc:
            raise RuntimeStartError(f"could not create a Datalayer runtime: {exc}") from exc
        self.info, self.owned = info, True
        self.pod_name, self.ingress, self.jupyter_token = info.pod_name, info.ingress, info.token
        with _owned_lock:
            _owned[info.pod_name] = self
        if not (info.ingress and info.token):
            raise RuntimeStartError(f"runtime {info.pod_name} was created without an ingress or a token: {info.raw}")

    def _connect(self, timeout: float) -> None:
        """Start a kernel on the runtime's Jupyter Server, waiting out its warm-up."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            kernel = JupyterServerRuntime(self.name, self.ingress, self.jupyter_token, self.kernel_name)
            kernel.on_message = lambda channel, msg: self.on_message(channel, msg)
            kernel.on_exit = lambda reason: self.on_exit(f"{reason} [runtime {self.pod_name}]")
            try:
                kernel.start(max(1.0, deadline - time.monotonic()))
            except RuntimeStartError as exc:
                warming = getattr(exc, "status", None) in WARMING_UP or getattr(exc, "unreachable", False)
                if not warming or time.monotonic() + delay > deadline or self._terminated:
                    raise RuntimeStartError(
                        f"runtime {self.pod_name} did not accept a kernel"
                        f"{' within ' + format(timeout, 'g') + ' s' if warming else ''}: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.kernel = kernel
            return

    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        return self._kernel().message(msg_type, content, metadata)

    def send(self, channel: str, msg: dict, buffers=()) -> None:
        self._kernel().send(channel, msg, buffers)

    def interrupt(self) -> None:
        self._kernel().interrupt()

    def restart(self, timeout: float = 60.0) -> None:
        self._kernel().restart(timeout)

    def is_alive(self) -> bool:
        return self.kernel is not None and not self._terminated and self.kernel.is_alive()

    def _kernel(self) -> JupyterServerRuntime:
        if self.kernel is None:
            raise RuntimeError(f"runtime {self.id} has no kernel yet")
        return self.kernel

    def terminate(self) -> None:
        with self._terminate_lock:  # a second caller waits until the runtime is really deleted
            if self._terminated:
                return
            self._terminated = True
            if self.kernel is not None:
                self.kernel.terminate()
            if self.owned:
                _delete(self)

    def describe(self) -> dict:
        info = self.info
        facts = {
            **super().describe(),
            "pod_name": self.pod_name,
            "ingress": self.ingress,
            "jupyter_token": self.jupyter_token,
            "kernel_id": self.kernel.kernel_id if self.kernel else None,
            "environment": self.environment,
        }
        if info is not None:
            facts.update(uid=info.uid, reservation_id=info.reservation_id, burning_rate=info.burning_rate,
                         started_at=info.started_at, expired_at=info.expired_at)
        return facts


def _delete(runtime: DatalayerRuntime) -> bool:
    """Delete a runtime this process created; report it if that fails."""
    pod = runtime.pod_name
    try:
        runtime.client.delete_runtime(pod)
    except Exception as exc:  # noqa: BLE001 - reported, never raised from a cleanup
        message = (f"dlexec could not delete the Datalayer runtime {pod}, which may still be running and "
                   f"consuming credits: {exc}. Delete it with: {terminate_command(pod)}")
        _log.error(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return False
    finally:
        with _owned_lock:
            _owned.pop(pod, None)
    return True


def owned_runtimes() -> list[str]:
    """Pod names of the runtimes this process created and has not deleted."""
    with _owned_lock:
        return list(_owned)


@atexit.register
def _delete_owned_at_exit() -> None:
    with _owned_lock:
        runtimes = list(_owned.values())
    threads = [threading.Thread(target=r.terminate, daemon=True) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
