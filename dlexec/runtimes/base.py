"""The interface every backend implements: one kernel, reached by Jupyter messages.

A :class:`Runtime` knows how to start a kernel, move Jupyter messages to and from it,
interrupt, restart and stop it, and tell when it died. It knows nothing of tasks,
futures or dlexec's own requests: :mod:`dlexec.channel` builds those on top, the same
way for every backend.
"""

from __future__ import annotations

import abc
from typing import Callable

from ..errors import RuntimeStartError  # noqa: F401 - re-exported for backends

#: ``on_message(channel, msg)``: a deserialized Jupyter message (jupyter-client's dict
#: shape, ``buffers`` included) from the ``shell``, ``iopub`` or ``control`` channel.
MessageHandler = Callable[[str, dict], None]
#: ``on_exit(reason)``: the kernel is gone; ``reason`` says how, for the user.
ExitHandler = Callable[[str], None]


class Runtime(abc.ABC):
    """One kernel. Thread-safe: ``send`` may be called from any thread."""

    #: Backend name: "local", "jupyter" or "datalayer".
    kind: str = ""
    #: Whether the kernel sees this process's files and modules (then none are shipped).
    shares_files: bool = False

    def __init__(self, name: str):
        self.name = name
        self.on_message: MessageHandler = lambda channel, msg: None
        self.on_exit: ExitHandler = lambda reason: None

    @property
    @abc.abstractmethod
    def id(self) -> str:
        """A short identifier for messages and logs (kernel id, pod name...)."""

    @abc.abstractmethod
    def start(self, timeout: float) -> None:
        """Start the kernel and connect to it; raises :class:`RuntimeStartError`."""

    @abc.abstractmethod
    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        """Build a Jupyter message (header with a fresh ``msg_id``) for :meth:`send`."""

    @abc.abstractmethod
    def send(self, channel: str, msg: dict, buffers=()) -> None:
        """Queue a message for the kernel. Thread-safe; never blocks on I/O."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Ask the kernel to raise ``KeyboardInterrupt`` in the code it runs."""

    @abc.abstractmethod
    def restart(self, timeout: float) -> None:
        """Restart the kernel process: a fresh interpreter on the same connection."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop the kernel and free everything it holds. Idempotent, never raises."""

    @abc.abstractmethod
    def is_alive(self) -> bool:
        """Whether the kernel process is still running."""

    def io_alive(self) -> bool:
        """Whether the threads that carry this kernel's messages are running (once started)."""
        return True

    def run_at_start(self, code: Callable[[], str]) -> bool:
        """Offer code that the kernel should run as it starts, before it serves any request
        (called before :meth:`start`; ``code()`` gives its text). True if this backend does
        so, at every start and restart: then dlexec installs its worker without a request."""
        return False

    def worker_settings(self) -> dict:
        """Settings for :func:`dlexec.kernel.worker.install` in this kernel (see there)."""
        return {}

    def describe(self) -> dict:
        """Facts for users: pid, URLs, ids. Backends add what they know."""
        return {"kind": self.kind, "id": self.id, "name": self.name}
