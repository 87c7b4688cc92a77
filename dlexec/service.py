"""``RuntimeService``: the seed document's runtime API, over any backend.

A :class:`RuntimeService` owns one runtime (one kernel): it starts it, runs code and
files in it, moves variables in and out with dill (binary message buffers, one message
each way), snapshots it and terminates it. It is a drop-in for the Datalayer SDK's
``RuntimeService`` (``datalayer_core`` 1.1.x): same arguments, lifecycle and shapes
(``ExecutionResponse.model_dump()``, ``model``, ``urls``). Unlike the SDK, a kernel error
makes ``success`` False, ``stdout`` and ``stderr`` are separate, a timeout interrupts the
kernel, and ``execute_file`` runs ``.py`` files and notebooks cell by cell.

It is a facade over one :class:`~dlexec.session.KernelSession` (what a pool's worker holds
too); :meth:`RuntimeService.runtime_factory` gives a pool its runtimes with the same
arguments.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from . import serialization, snapshots
from .channel import KernelChannel
from .errors import ExecutionError, RuntimeStartError
from .execution import code_cells, run_cells
from .kernel.wire import split_frames
from .models import ExecutionResponse, RuntimeModel
from .modules import user_modules
from .runtimes import DEFAULT_ENVIRONMENT, prepare
from .runtimes.base import Runtime
from .session import KernelSession
from .snapshots import RuntimeSnapshotModel
from .spec import DEFAULT_RUN_URL, RuntimeSpec
from .urls import DatalayerURLs

__all__ = ["DEFAULT_RUN_URL", "ExecutionResponse", "RuntimeModel", "RuntimeService"]


class RuntimeService:
    """One runtime: start it, run code in it, move variables, snapshot, terminate.

    The arguments are the seed API's (the Datalayer SDK's). Where the kernel runs:
    ``backend=`` if given; else Datalayer if a Datalayer argument is given (``run_url``,
    ``iam_url``, ``token``, an ``environment`` other than the default, or ``pod_name``/
    ``ingress``/``jupyter_token`` of an existing runtime, which is then connected to, not
    created); else ``$DLEXEC_BACKEND``; else a local kernel. ``snapshot`` starts the
    runtime from a snapshot; ``ship_modules`` (True, False or a list of top-level packages)
    says which of your modules may be sent to a remote runtime that lacks them (see
    :mod:`dlexec.modules`); other keyword arguments go to the backend (for ``datalayer``:
    ``runtimes_url``, ``warmup_timeout``...; for ``local``: ``kernel_name``,
    ``extra_arguments``, ``env``, ``cwd``).

    The runtime starts on ``__enter__``, :meth:`start`, or the first call that needs it.
    :meth:`terminate` (or :meth:`stop`, or leaving the ``with`` block) stops it and deletes
    a Datalayer runtime, whether dlexec created it or was handed it (``pod_name``), as the
    SDK does; garbage collection and interpreter exit do the same for a started one.
    """

    def __init__(
        self,
        name: str,
        environment: str = DEFAULT_ENVIRONMENT,
        time_reservation: float = 10.0,
        run_url: str = DEFAULT_RUN_URL,
        iam_url: str | None = None,
        token: str | None = None,
        pod_name: str | None = None,
        ingress: str | None = None,
        reservation_id: str | None = None,
        uid: str | None = None,
        burning_rate: float | None = None,
        jupyter_token: str | None = None,
        started_at: str | None = None,
        expired_at: str | None = None,
        *,
        backend: str | None = None,
        snapshot: str | None = None,
        start_timeout: float = 60.0,
        **runtime_options: Any,
    ):
        self._spec = RuntimeSpec(
            name, environment, time_reservation, run_url, iam_url, token, pod_name, ingress, reservation_id, uid,
            burning_rate, jupyter_token, started_at, expired_at, backend=backend, snapshot=snapshot,
            runtime_options=runtime_options)
        self._model = self._spec.model
        self._backend = self._spec.backend
        self._start_timeout = start_timeout
        self._session: KernelSession | None = None
        self._finalizer: weakref.finalize | None = None
        self._starting = False  # start() is building the runtime
        self._terminated = False  # terminate() was called during that: start() gives up
        self._state_lock = threading.Lock()

    @classmethod
    def runtime_factory(cls, backend: str | None, options: dict) -> _Runtimes:
        """The runtimes a pool builds with these options, as ``RuntimeService(name,
        backend=backend, **options)`` would build its own: a callable ``(name) -> Runtime``.

        The options are checked now, without starting anything: a TypeError or ValueError
        names the option, as the first runtime's start would, but at once."""
        for reserved in ("name", "backend", "start_timeout"):
            if reserved in options:
                raise TypeError(f"{reserved!r} is not a runtime option here: the executor sets it for each runtime "
                                "(use DatalayerExecutor's own argument, if it has one)")
        probe = cls("dlexec-options-check", backend=backend, **options)
        if probe._backend != "datalayer" and probe._spec.runtime_factory is None:  # (Datalayer's: checked)
            probe._spec.new_runtime(probe.name).terminate()  # never started: this only frees what the constructor holds
        return _Runtimes(backend, options)

    # -- properties (the seed's) ------------------------------------------------------------

    model = property(lambda self: self._model, doc="All configuration and state, as a RuntimeModel.")
    name = property(lambda self: self._model.name)
    environment = property(lambda self: self._model.environment)
    pod_name = property(lambda self: self._model.pod_name)
    ingress = property(lambda self: self._model.ingress)
    jupyter_token = property(lambda self: self._model.jupyter_token)
    reservation_id = property(lambda self: self._model.reservation_id)
    uid = property(lambda self: self._model.uid)
    burning_rate = property(lambda self: self._model.burning_rate)
    started_at = property(lambda self: self._model.started_at)
    expired_at = property(lambda self: self._model.expired_at)
    backend = property(lambda self: self._backend, doc="Where the kernel runs: 'local', ...")

    @property
    def urls(self) -> DatalayerURLs:
        """The Datalayer URLs this runtime uses (from the arguments, else ``$DATALAYER_*_URL``), in
        the SDK's shape (13 fields, with ``runtimes_url``)."""
        return self._spec.urls

    @property
    def session(self) -> KernelSession:
        """The session with the kernel (starts the runtime if needed)."""
        self._ensure_started()
        return self._session  # type: ignore[return-value]

    @property
    def channel(self) -> KernelChannel:
        """The message channel to the kernel (starts the runtime if needed)."""
        return self.session.channel

    @property
    def is_started(self) -> bool:
        return self._session is not None

    def is_alive(self) -> bool:
        return self._session is not None and self._session.is_alive()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else ("stopped" if self.is_started else "not started")
        return f"<RuntimeService {self.name!r} backend={self._backend} uid={self.uid} {state}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RuntimeService:
        """Start the runtime and wait until it is ready; raises :class:`RuntimeStartError`."""
        if self._session is not None:
            return self
        with self._state_lock:
            self._starting, self._terminated = True, False
        runtime = self._spec.new_runtime(self.name)
        session = KernelSession(runtime, self._start_timeout, self._spec.ship_modules)
        with self._state_lock:
            self._starting = False
            if self._terminated:  # terminate() came while this start was building the runtime
                runtime.terminate()
                raise RuntimeStartError(f"runtime {self.name!r} was terminated before it started")
            # Registered before starting, so that a kernel is never left behind by a failed start.
            self._runtime = runtime
            self._finalizer = weakref.finalize(self, runtime.terminate)
        session.start()
        self._session = session
        self._describe(runtime, session)
        if self._spec.snapshot and runtime.kind == "local":  # a Datalayer runtime started from it already
            restore_snapshot(session, self._spec.snapshot)
        return self

    def _describe(self, runtime: Runtime, session: KernelSession) -> None:
        """Fill the model with what the started runtime says of itself."""
        facts = session.facts
        model = self._model
        for field in ("pod_name", "ingress", "reservation_id", "burning_rate", "expired_at"):
            if facts.get(field) is not None:
                setattr(model, field, facts[field])
        # Not in describe(), which users print: a secret is read from the runtime itself.
        model.jupyter_token = getattr(runtime, "jupyter_token", None) or model.jupyter_token
        info = getattr(runtime, "info", None)
        if info is not None:  # the server's RUNTIME object (the SDK keeps it; it holds the token)
            model.runtime = dict(info.raw)
        model.uid = facts.get("uid") or model.uid or facts.get("kernel_id") or facts.get("id")
        model.started_at = facts.get("started_at") or model.started_at or str(time.time())
        model.kernel_id, model.kernel_client = facts.get("kernel_id"), session.channel
        model.credits_per_second = model.burning_rate

    def restart(self) -> None:
        """Restart the kernel (a fresh interpreter: its variables are gone) and prepare it again."""
        self.session.restart()

    def _ensure_started(self) -> None:
        if self._session is None:
            self.start()

    def terminate(self) -> bool:
        """Stop the runtime and wait until it is gone; on Datalayer, delete it, whether dlexec
        created it or was handed it (``pod_name``), as the SDK does. A paid runtime whose create
        request is still in flight is deleted as soon as that request answers.

        Returns True if it was stopped (on Datalayer: and deleted, or already gone); False if
        there was nothing to stop (never started, already terminated) or the deletion failed
        (reported with the command that deletes it). A runtime handed in and never started is
        deleted too (the SDK leaves it running and returns False)."""
        with self._state_lock:
            started = self._finalizer is not None
            if not started:
                self._terminated = self._starting  # a start under way gives up
                given = not self._starting and self._spec.handed_in() and self._spec.claim_given()
        if not started:
            return self._spec.delete_given() if given else False
        first = self._finalizer.detach() is not None
        self._runtime.terminate()  # idempotent; a concurrent call waits for the first
        if self._session is not None:
            self._session.channel.close()
        self._model.kernel_client, self._model.kernel_id = None, None
        deleted = getattr(self._runtime, "deleted", None)
        if first and deleted is None and getattr(self._runtime, "delete_given", False) and self._spec.claim_given():
            # A runtime handed in whose start failed (it was not taken over): deleted now, on request.
            return self._spec.delete_given()
        return first and deleted is not False

    def stop(self) -> bool:
        """The same as :meth:`terminate` (the SDK's later versions call it ``stop``)."""
        return self.terminate()

    def __enter__(self) -> RuntimeService:
        return self.start()

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        self.terminate()

    # -- code -------------------------------------------------------------------------------

    def execute_code(self, code: str, variables: dict[str, Any] | None = None, output: str | None = None,
                     debug: bool = False, timeout: float | None = 10.0):
        """Run ``code`` with IPython; returns an :class:`ExecutionResponse`.

        ``variables`` are set first; if ``output`` names a variable, its value is returned
        instead (and a failed execution raises :class:`ExecutionError`). On ``timeout``
        seconds the kernel is interrupted and the response says so (``success`` False).
        """
        self._ensure_started()
        if variables:
            self.set_variables(variables)
        return self._finish(run_cells(self._session, [code], timeout), output, debug)

    def execute_file(self, path: str | Path, variables: dict[str, Any] | None = None, output: str | None = None,
                     debug: bool = False, timeout: float | None = 10.0):
        """Run a ``.py`` file, or a notebook's code cells in order (stopping at the first error).

        ``timeout`` applies to each cell.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        self._ensure_started()
        if variables:
            self.set_variables(variables)
        return self._finish(run_cells(self._session, code_cells(path), timeout), output, debug)

    def execute(self, code_or_path: str | Path, variables: dict[str, Any] | None = None, output: str | None = None,
                debug: bool = False, timeout: float | None = 10.0):
        """:meth:`execute_file` if ``code_or_path`` is an existing file, else :meth:`execute_code`."""
        if isinstance(code_or_path, Path) or _is_file(code_or_path):
            return self.execute_file(code_or_path, variables, output, debug, timeout)
        return self.execute_code(code_or_path, variables, output, debug, timeout)

    def _finish(self, response: ExecutionResponse, output: str | None, debug: bool):
        if debug:
            response.echo()
        if output is None:
            return response
        if not response.success:
            raise ExecutionError(f"the code failed, so {output!r} was not read: {response.message}", response)
        return self.get_variable(output)

    # -- variables --------------------------------------------------------------------------

    def set_variable(self, name: str, value: Any) -> None:
        """Set one variable in the runtime's namespace."""
        self.set_variables({name: value})

    def set_variables(self, variables: dict[str, Any]) -> None:
        """Set variables in the runtime's namespace: one message, values as dill buffers."""
        modules: set = set()
        frames_by_name = {name: serialization.dumps(value, modules=modules) for name, value in _checked(variables)}
        set_variables(self.session, frames_by_name, user_modules(modules))

    def modules_to_ship(self, names) -> list:
        """Sources of the user modules that ``names`` need and the runtime lacks (see KernelSession)."""
        return self.session.modules_to_ship(names)

    def get_variable(self, name: str) -> Any:
        """A variable's value from the runtime, or None if it is not defined."""
        content, frames = self.session.call("get", {"name": name})
        if content.get("status") == "missing":
            return None
        _raise_for(content)
        return serialization.loads(frames)

    # -- snapshots ---------------------------------------------------------------------------

    def create_snapshot(self, name: str | None = None, description: str | None = None,
                        stop: bool = True) -> RuntimeSnapshotModel:
        """Save the runtime's variables (all that dill can serialize) as a snapshot.

        Modules, IPython's own names and names starting with ``_`` are left out; what
        could not be serialized is listed in ``metadata["skipped"]``. With ``stop`` the
        runtime is terminated afterwards.
        """
        runtime = self.session.runtime
        if runtime.kind == "datalayer":  # the platform snapshots the whole runtime
            snapshot = runtime.client.create_snapshot(runtime.pod_name, name, description, stop=stop)
            if stop:
                self.terminate()
            return snapshot.to_model()
        model = capture_snapshot(self.session, name, description, self.environment)
        if stop:
            self.terminate()
        return model



class _Runtimes:
    """``(name) -> Runtime``: a pool's runtimes, built as ``RuntimeService(name, backend, **options)``
    builds its own (same checks, same settings); ``setup(session)`` prepares a started one."""

    def __init__(self, backend: str | None, options: dict):
        self.backend, self.options = backend, options
        self.kind = resolve_kind(backend, options)

    def __call__(self, name: str) -> Runtime:
        return (service := RuntimeService(name, backend=self.backend, **self.options))._spec.new_runtime(service.name)

    def setup(self, session: KernelSession) -> None:
        snapshot = self.options.get("snapshot")
        if snapshot and session.runtime.kind == "local":
            restore_snapshot(session, snapshot)


def resolve_kind(backend: str | None, options: dict) -> str:
    if options.get("runtime_factory") is not None:
        return getattr(options["runtime_factory"], "kind", None) or "custom"
    return prepare(backend, options)


def set_variables(session: KernelSession, frames_by_name: dict[str, list], modules: set[str] | None = None) -> None:
    """One ``set`` request; ``modules`` names the modules the values refer to (to ship)."""
    names, frames = [], []
    for name, value_frames in frames_by_name.items():
        names.append([name, len(value_frames)])
        frames.extend(value_frames)
    content = {"names": names}
    if modules:
        content["modules"] = session.modules_to_ship(modules)
    reply, _ = session.call("set", content, frames)
    _raise_for(reply)


def capture_snapshot(session: KernelSession, name: str | None, description: str | None,
                     environment: str) -> RuntimeSnapshotModel:
    """Save the runtime's variables as a local snapshot."""
    if name:
        snapshots.check_name(name)  # before the kernel does the work
    content, frames = session.call("snapshot")
    _raise_for(content)
    names = content["names"]
    variables = dict(zip((var for var, _ in names), split_frames(frames, (count for _, count in names))))
    return snapshots.save(name, description, environment, variables, content.get("skipped") or {})


def restore_snapshot(session: KernelSession, name: str) -> None:
    """Set the variables of a local snapshot in the runtime."""
    set_variables(session, snapshots.load_variables(snapshots.get(name)))


def _checked(variables: dict[str, Any]):
    for name, value in variables.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"variable names must be Python identifiers, not {name!r}")
        yield name, value


def _raise_for(content: dict) -> None:
    if content.get("status") == "ok":
        return
    info = content.get("info") or {}
    raise ExecutionError(f"the runtime could not do it: {info.get('type')}: {info.get('message')}\n"
                         f"{info.get('text', '')}".rstrip())


def _is_file(text: str) -> bool:
    try:
        return "\n" not in text and len(text) < 4096 and os.path.isfile(text)
    except (OSError, ValueError):
        return False
