"""A Datalayer runtime: a paid, remote pod whose Jupyter Server runs the kernel.

:meth:`DatalayerRuntime.start` creates the runtime through the Datalayer REST API
(:mod:`dlexec.datalayer`), then starts a kernel on the runtime's ``ingress`` with the
runtime's own token through :class:`~dlexec.runtimes.jupyter.JupyterServerRuntime`,
retrying while a new runtime's ingress still answers 502/503/504 (warming up).

Paid runtimes must never outlive the program that created them. A runtime created here
is deleted by :meth:`terminate`, when connecting to it fails, and at interpreter exit
(also after Ctrl-C, and after SIGTERM: see :mod:`dlexec.runtimes.signals`). One that
cannot be deleted is reported with its pod name and the command that deletes it.

A runtime handed in (``pod_name``, ``ingress`` and ``jupyter_token`` of an existing one) is
connected to, not created, and deleted by :meth:`terminate` too, as the Datalayer SDK does:
whoever hands a runtime to dlexec hands over its end.

The ingress is reached as the SDK reaches it: ``Authorization: Bearer`` on HTTP, the
``token`` query parameter on the WebSocket.

Each create carries a unique ``given_name`` (the runtime's name plus a random suffix), so
that a create whose answer is lost, or that :meth:`~DatalayerRuntime.terminate` or the exit
overtakes, is found by listing and deleted (see :meth:`dlexec.datalayer.DatalayerClient.create_runtime`).
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import time
import warnings

from .. import _threads
from ..datalayer import DatalayerClient, DatalayerError, check_time_reservation, terminate_command
from ..errors import RuntimeStartError
from .base import Runtime
from .jupyter import JupyterServerRuntime

_log = logging.getLogger("dlexec")

#: Statuses of an ingress that is still warming up.
WARMING_UP = (502, 503, 504)

#: Seconds the exit handler waits for creates still in flight, before looking their runtimes up by name.
EXIT_CREATE_WAIT = 10.0

_owned: dict[str, DatalayerRuntime] = {}  # pod name -> runtime this process created and has not deleted
_creating: set[DatalayerRuntime] = set()  # runtimes whose create request is in flight
_owned_lock = threading.Lock()


class DatalayerRuntime(Runtime):
    """One Datalayer runtime and one kernel on it.

    ``environment``, ``time_reservation`` (minutes), ``run_url``, ``iam_url`` and ``token``
    are the seed API's; ``snapshot`` (a Datalayer snapshot name or uid) starts the runtime
    from it. ``runtimes_url`` is the runtimes API's URL (default ``run_url``). ``warmup_timeout``
    bounds the wait for a new runtime's ingress, and ``retry_deadline`` the retries of each API
    call. Given ``ingress`` and ``jupyter_token`` of an existing runtime, it connects to it
    instead; with its ``pod_name`` it also deletes it on :meth:`terminate` (as the SDK does),
    unless ``delete_given=False``.
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
        allow_insecure: bool = False,
        runtimes_url: str | None = None,
        delete_given: bool = True,
    ):
        super().__init__(name)
        given = bool(ingress and jupyter_token)
        if not given:  # it will create a runtime: refuse a reservation that cannot work
            check_time_reservation(time_reservation)
            if ingress or jupyter_token:
                raise ValueError("an existing runtime needs both ingress= and jupyter_token= (its Jupyter Server "
                                 f"token); {'jupyter_token' if ingress else 'ingress'}= is missing")
        self.environment = environment
        self.time_reservation = time_reservation
        self.snapshot = snapshot
        self.kernel_name = kernel_name
        self.warmup_timeout = warmup_timeout
        self.client = client or DatalayerClient(token, run_url, iam_url, runtimes_url=runtimes_url,
                                                retry_deadline=retry_deadline, allow_insecure=allow_insecure)
        # A runtime handed in is deleted on terminate(): without an API key that would fail only then.
        self.delete_given = bool(given and pod_name and delete_given)
        if self.delete_given and not self.client.token:
            raise ValueError(f"dlexec deletes the runtime {pod_name} it was handed when done (as the Datalayer SDK "
                             "does), which needs your Datalayer API key: pass token=, set DATALAYER_API_KEY or run "
                             "`datalayer login`; or pass no pod_name= to only use the runtime")
        self.allow_insecure = allow_insecure  # tokens over plain http:// to other machines (API and ingress)
        self.info = None  # dlexec.datalayer.RuntimeInfo once created or found
        self.pod_name = pod_name
        self.ingress, self.jupyter_token = ingress, jupyter_token
        self.owned = False  # this object deletes the runtime on terminate (it created it, or was handed it)
        self.deleted: bool | None = None  # once terminated: whether the runtime was deleted
        self.kernel: JupyterServerRuntime | None = None
        self._terminated = False
        self._terminate_lock = threading.Lock()
        # Unique per create (worker names such as "dlexec-worker-1" repeat across processes): what
        # finds the runtime by listing when the answer to its create request is lost.
        self.given_name = f"{name}-{secrets.token_hex(4)}"
        self._creating = False  # a create request is in flight (guarded by _terminate_lock)
        self._create_done = threading.Event()  # set once no create request is in flight any more
        self._create_done.set()

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
            self.terminate()  # never leave a paid runtime we created behind a failed start
            raise
        if self.delete_given:
            # Taken over once connected: a runtime handed in that cannot be reached (a wrong ingress,
            # a refused token) is left as it was, not deleted by a failed start.
            self.adopt()

    def adopt(self) -> None:
        """Take over a runtime handed in: :meth:`terminate` (and the exit) will delete it."""
        with self._terminate_lock:
            if self._terminated:
                raise RuntimeStartError(f"runtime {self.pod_name} was terminated while it started")
            self.owned = True
            with _owned_lock:
                _owned[self.pod_name] = self

    def _create(self) -> None:
        """Create the runtime; if :meth:`terminate` came while the request was in flight, delete it."""
        with self._terminate_lock:
            if self._terminated:
                raise RuntimeStartError(f"runtime {self.given_name} was terminated before it was created")
            self._creating = True
            self._create_done.clear()
        with _owned_lock:
            _creating.add(self)
        try:
            try:
                info = self.client.create_runtime(self.environment, self.time_reservation,
                                                  given_name=self.given_name, snapshot=self.snapshot)
            except (DatalayerError, ValueError) as exc:
                raise RuntimeStartError(f"could not create a Datalayer runtime: {exc}") from exc
            with self._terminate_lock:  # one step with terminate(): either it deletes it, or we do
                self._creating = False
                self.info, self.owned = info, True
                self.pod_name, self.ingress, self.jupyter_token = info.pod_name, info.ingress, info.token
                with _owned_lock:
                    _owned[info.pod_name] = self
                terminated = self._terminated
            if terminated:  # terminate() did not wait for the answer: deleting it is up to this thread
                _delete(self)
                raise RuntimeStartError(f"runtime {info.pod_name} was created after terminate(), and deleted")
        finally:
            with self._terminate_lock:
                self._creating = False
            with _owned_lock:
                _creating.discard(self)
            self._create_done.set()
        missing = [field for field in ("ingress", "token") if not getattr(info, field)]
        if missing:  # never format the answer: it holds the runtime's token
            self.terminate()
            raise RuntimeStartError(f"runtime {info.pod_name} was created without {' and '.join(missing)}, "
                                    "so it cannot be used; it was deleted")

    def _connect(self, timeout: float) -> None:
        """Start a kernel on the runtime's Jupyter Server, waiting out its warm-up."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            kernel = JupyterServerRuntime(self.name, self.ingress, self.jupyter_token, self.kernel_name,
                                          allow_insecure=self.allow_insecure, auth="bearer")
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
            with self._terminate_lock:
                terminated = self._terminated
                if not terminated:
                    self.kernel = kernel
            if terminated:  # terminate() came while the kernel started: it did not see this kernel
                kernel.terminate()
                raise RuntimeStartError(f"runtime {self.pod_name} was terminated while its kernel started")
            return

    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        return self._kernel().message(msg_type, content, metadata)

    def send(self, channel: str, msg: dict, buffers=()) -> None:
        self._kernel().send(channel, msg, buffers)

    def interrupt(self) -> None:
        self._kernel().interrupt()

    def restart(self, timeout: float = 60.0) -> None:
        self._kernel().restart(timeout)

    def io_alive(self) -> bool:
        kernel = self.kernel
        return kernel is None or kernel.io_alive()

    def is_alive(self) -> bool:
        return self.kernel is not None and not self._terminated and self.kernel.is_alive()

    def _kernel(self) -> JupyterServerRuntime:
        if self.kernel is None:
            raise RuntimeError(f"runtime {self.id} has no kernel yet")
        return self.kernel

    def terminate(self) -> None:
        """Stop the kernel and delete the runtime. During its create request, only mark it: the
        thread creating it deletes it when the answer arrives (which may take a minute)."""
        with self._terminate_lock:  # a second caller waits until the runtime is really deleted
            if self._terminated:
                return
            self._terminated = True
            if self._creating:
                return
            if self.kernel is not None:
                self.kernel.terminate()
            if self.owned:
                self.deleted = _delete(self)

    def describe(self) -> dict:
        """Facts for users, without the runtime's token (it is ``self.jupyter_token``)."""
        info = self.info
        facts = {
            **super().describe(),
            "pod_name": self.pod_name,
            "ingress": self.ingress,
            "kernel_id": self.kernel.kernel_id if self.kernel else None,
            "environment": self.environment,
        }
        if info is not None:  # the times as the server sent them (the SDK keeps its strings)
            facts.update(uid=info.uid, reservation_id=info.reservation_id, burning_rate=info.burning_rate,
                         started_at=info.raw.get("started_at", info.started_at),
                         expired_at=info.raw.get("expired_at", info.expired_at))
        return facts


def _delete(runtime: DatalayerRuntime) -> bool:
    """Delete a runtime this process created; report it if that fails."""
    pod = runtime.pod_name
    try:
        if not runtime.client.delete_runtime(pod):
            _log.info("dlexec: runtime %s was already gone", pod)
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
    """Delete every runtime this process created, including those whose create request is still
    in flight: their threads delete them when the answer comes, within ``EXIT_CREATE_WAIT``
    seconds; after that they are looked up by name and deleted. Bounded: exit never hangs."""
    with _owned_lock:
        runtimes = list(_owned.values())
        creating = list(_creating)
    for runtime in creating:
        runtime.terminate()  # only marks it: returns at once
    threads = [threading.Thread(target=r.terminate, daemon=True) for r in runtimes]
    for thread in threads:
        _threads.start(thread)
    deadline = time.monotonic() + EXIT_CREATE_WAIT
    for runtime in creating:
        runtime._create_done.wait(max(0.0, deadline - time.monotonic()))
    unanswered = [r for r in creating if not r._create_done.is_set()]
    if unanswered:
        _log.warning("dlexec: %d Datalayer runtime creation(s) still unanswered at exit: looking them up by name",
                     len(unanswered))
    threads += [threading.Thread(target=r.client.abandon_create, args=(r.given_name,), daemon=True)
                for r in unanswered]
    for thread in threads[len(runtimes):]:
        _threads.start(thread)
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
