"""What the backends that own a kernel's connection share: one ``terminate()``, and why the kernel ended."""

from __future__ import annotations

import threading


class TerminateOnce:
    """``terminate()`` stops the kernel once (``_terminate``, which subclasses write); a second
    caller waits until the kernel is really gone, later ones return at once. ``_stopping`` is set
    under ``_lock``, which the subclass also takes when it records ``_exit_reason``."""

    _stopping: bool
    _exit_reason: str | None

    def _init_terminate_once(self) -> None:
        self._stopping = False
        self._exit_reason = None
        self._lock = threading.Lock()
        self._terminate_lock = threading.Lock()

    @property
    def exit_reason(self) -> str | None:
        """Why the kernel ended by itself (death, lost connection), or None."""
        return self._exit_reason

    def terminate(self) -> None:
        with self._terminate_lock:  # a second caller waits until the kernel is really gone
            with self._lock:
                if self._stopping:
                    return
                self._stopping = True
            self._terminate()

    def _terminate(self) -> None:
        raise NotImplementedError
