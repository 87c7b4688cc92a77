"""SIGTERM for programs with remote kernels: exit through the cleanups, not at once.

Python's default SIGTERM action ends the process immediately, skipping ``atexit`` and
every ``finally``: kernels on a Jupyter Server and paid Datalayer runtimes would be left
running. The first executor or RuntimeService with a remote backend installs a handler
(from the main thread, and only if the program has none of its own) that raises
:class:`~dlexec.errors.TerminatedBySignal`, a ``SystemExit``: the program unwinds, the
executors stop their kernels at once, and the runtimes are deleted.
"""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import TerminatedBySignal

_installed = False


def install_sigterm_handler() -> None:
    """Install the handler once, if this is the main thread and SIGTERM has its default action."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        pass


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    print("dlexec: SIGTERM received: stopping the remote kernels", file=sys.stderr)
    raise TerminatedBySignal(128 + signum)
