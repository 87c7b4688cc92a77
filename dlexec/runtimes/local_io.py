"""The I/O thread of a local kernel: the one thread that touches its ZeroMQ sockets.

ZeroMQ sockets are not thread-safe, so :class:`KernelIO` owns them: it sends what
:meth:`KernelIO.send` queued (any thread may queue; a pipe wakes the thread), delivers what
arrives, and checks every ``POLL_MS`` ms whether the kernel process ended. How it ended,
and what that means for the kernel, is the runtime's business (``on_end``).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

import zmq

from .. import _threads

_log = logging.getLogger("dlexec")
POLL_MS = 100  # how often the I/O thread checks that the kernel process is alive


class KernelIO:
    """One kernel's sockets (``{"shell": ..., "control": ..., "iopub": ...}``) and the thread that
    serves them. Callbacks, all called from that thread: ``on_message(channel, msg)`` per message;
    ``exit_code()``, the kernel process's exit code once it ended (None while it runs or restarts);
    ``stopping()``, whether the runtime is being terminated; ``on_end(code, error)`` once, when the
    thread ends: with the exit code, or the exception that stopped it, or neither (terminated)."""

    def __init__(self, name: str, session, sockets: dict, *, label: Callable[[], str],
                 on_message: Callable[[str, dict], None], exit_code: Callable[[], int | None],
                 stopping: Callable[[], bool], on_end: Callable[[int | None, BaseException | None], None]):
        self._session = session
        self._sockets = sockets
        self._label, self._on_message, self._exit_code = label, on_message, exit_code
        self._stopping, self._on_end = stopping, on_end
        self._outbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"dlexec-io-{name}", daemon=True)

    def start(self) -> None:
        _threads.start(self._thread)

    def send(self, channel: str, parts: list, copy: bool) -> None:
        """Queue serialized message parts for ``channel``; thread-safe, never blocks."""
        self._outbox.append((channel, parts, copy))
        self.wake()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Wake the thread (which sees ``stopping()``), wait for it, and close the wake pipe."""
        if self._thread is not threading.current_thread():
            self.wake()
            self._thread.join(timeout=timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (the thread has plenty to wake it) or already closed
            pass

    def _run(self) -> None:
        code = error = None
        try:
            code = self._loop()
        except BaseException as exc:  # noqa: BLE001 - reported as the kernel's end (on_end)
            error = exc
        finally:
            for sock in self._sockets.values():
                sock.close(linger=0)
        self._on_end(code, error)

    def _loop(self) -> int | None:
        """Serve the sockets until ``stopping()`` (None) or the kernel process ends (its exit code)."""
        poller = zmq.Poller()
        by_socket = {}
        for channel, sock in self._sockets.items():
            poller.register(sock, zmq.POLLIN)
            by_socket[sock] = channel
        poller.register(self._wake_r, zmq.POLLIN)
        next_check = 0.0
        while not self._stopping():
            events = dict(poller.poll(POLL_MS))
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
            while self._outbox:
                channel, parts, copy = self._outbox.popleft()
                self._sockets[channel].send_multipart(parts, copy=copy)
            for sock, channel in by_socket.items():
                if sock in events:
                    self._drain(sock, channel)
            now = time.monotonic()
            if now >= next_check or not events:
                next_check = now + POLL_MS / 1000
                code = self._exit_code()
                if code is not None:
                    for sock, channel in by_socket.items():  # what it said before dying
                        self._drain(sock, channel)
                    return code
        return None

    def _drain(self, sock, channel: str) -> None:
        session = self._session
        while True:
            try:
                _idents, msg = session.recv(sock, mode=zmq.NOBLOCK, content=True, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:
                raise  # the socket itself failed: the loop ends, and says why
            except Exception:  # noqa: BLE001 - a bad message (a wrong signature...) is dropped
                _log.warning("dlexec: dropped a malformed %s message from kernel %s", channel, self._label(),
                             exc_info=True)
                continue
            if msg is None:
                return
            try:
                self._on_message(channel, msg)
            except BaseException:  # noqa: BLE001 - a handler's failure must not stop the I/O thread
                _log.exception("dlexec: error while handling a %s message", channel)
