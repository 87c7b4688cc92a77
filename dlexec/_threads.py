"""Starting dlexec's threads so that signals stay with the main thread.

Linux gives a signal sent to the process (Ctrl-C's SIGINT, a SIGTERM) to any thread that does
not block it. Python runs its handlers in the main thread only, and a main thread blocked in
``future.result()`` or ``time.sleep()`` is woken only if the signal was given to it: when one of
dlexec's threads (a kernel's I/O thread, say) took it, Ctrl-C did nothing until the wait ended.
So every thread dlexec starts blocks SIGINT and SIGTERM (as libzmq's own threads block every
signal), and the kernel gives them to the main thread. A process inherits the mask of the
thread that starts it, so kernels are started with :func:`signals_unblocked` (a kernel is
interrupted with SIGINT).
"""

from __future__ import annotations

import contextlib
import signal
import threading

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start(thread: threading.Thread) -> threading.Thread:
    """Start ``thread`` with SIGINT and SIGTERM blocked in it (it inherits the mask it starts with)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: signals go to the main thread anyway
        thread.start()
        return thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal that came meanwhile is delivered now
    return thread


def spawn(target, *args, name: str | None = None) -> threading.Thread:
    """A started daemon thread running ``target(*args)``, signals blocked (see :func:`start`)."""
    return start(threading.Thread(target=target, args=args, name=name, daemon=True))


@contextlib.contextmanager
def signals_unblocked():
    """SIGINT and SIGTERM unblocked in this thread meanwhile: for starting a child process,
    which inherits the mask (a local kernel must receive SIGINT, its interrupt)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
