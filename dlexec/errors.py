"""Every error dlexec raises, in one place.

The executor's errors subclass the standard library's, so that code written for
``ProcessPoolExecutor`` (``except BrokenProcessPool``, ``except BrokenExecutor``) keeps
working.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class RuntimeStartError(RuntimeError):
    """A runtime (kernel) could not be started, reached or prepared for dlexec.

    ``status`` is the HTTP status that refused it, if any; ``unreachable`` says that no
    server answered at all.
    """

    def __init__(self, message: str, *, status: int | None = None, unreachable: bool = False):
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable


class TerminatedBySignal(SystemExit):
    """Raised in the main thread on SIGTERM when paid runtimes are running, so that the
    program exits through its cleanups (which delete them) instead of dying at once.

    ``TerminatedBySignal.raised`` stays True afterwards: exit handlers then stop the
    runtimes at once rather than wait for pending work.
    """

    raised = False

    def __init__(self, code: int):
        super().__init__(code)
        TerminatedBySignal.raised = True


class WorkerLostError(BrokenProcessPool):
    """The runtime running a task died (crash, ``os._exit``, out of memory, deleted).

    ``runtime_id`` names the runtime and ``reason`` says how it ended, with the last
    lines the kernel printed when they are known.
    """

    def __init__(self, message: str, runtime_id: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.runtime_id = runtime_id
        self.reason = reason


class InitializerFailed(BrokenProcessPool):
    """The executor's ``initializer`` raised in a runtime; the pool is not usable anymore."""


class RemoteError(Exception):
    """An exception raised remotely that could not be rebuilt here.

    It keeps what can always travel: the remote type's name, its message and the
    formatted remote traceback (``traceback_text``). The traceback of this exception
    shows the remote frames.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "", reason: str = ""):
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.reason = reason

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.reason:
            text += f" ({self.reason})"
        return text


class ExecutionError(RuntimeError):
    """Code run by :class:`dlexec.RuntimeService` failed where a value was expected.

    ``response`` is the :class:`dlexec.ExecutionResponse` with the outputs and error.
    """

    def __init__(self, message: str, response=None):
        super().__init__(message)
        self.response = response


# -- the Datalayer REST API (dlexec.datalayer) ---------------------------------------------


class DatalayerError(RuntimeError):
    """A Datalayer API request failed.

    ``status`` is the HTTP status (None when no answer came), ``message`` what the server
    said (its ``message``, ``errors`` and ``exception`` fields), ``url`` and ``method`` the
    request.
    """

    hint = ""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 method: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url
        self.method = method
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        if self.method and self.url:
            status = f" with {self.status}" if self.status is not None else ""
            text = f"Datalayer API: {self.method} {self.url} failed{status}: {self.message}"
        else:
            text = f"Datalayer API: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def __reduce__(self):
        return self.__class__, (self.message,), self.__dict__


class AuthenticationError(DatalayerError):
    """No token, or the token was refused (401/403)."""

    hint = "the token was refused; set a valid API key in DATALAYER_API_KEY, or pass token= / --token"


class NotFoundError(DatalayerError):
    """The resource does not exist (404)."""


class UnknownNameError(NotFoundError, ValueError):
    """An environment or snapshot name this account does not have; the message lists the valid ones."""


class CapacityError(DatalayerError):
    """No runtime available: runtime creation kept answering 503."""
