"""What a request prints and how it is answered: the kernel side of a ``dlexec_reply``."""

from __future__ import annotations

import sys
import threading

from .. import serialization
from .wire import REPLY


class CapturedOutput:
    """Keeps what each task prints (for ``TaskFuture.stdout``/``stderr``), while letting it
    through to the kernel's own streams, which show it live on the client.

    ``printed`` counts the characters that the thread running the request wrote to stdout
    and stderr (other threads' output goes out under their own parent message): a reply
    says how much, and the client holds the results until that much output has arrived
    (it travels on IOPub, the reply on the shell channel, and either may come first).

    ``streams``: what holds the ``stdout``/``stderr`` to tee, swapped while capturing (the
    ``sys`` module by default; an in-process fake runtime passes one per kernel).
    """

    def __init__(self, keep: bool = True, streams=None):
        self.streams = sys if streams is None else streams
        self.parts = {"stdout": [], "stderr": []} if keep else {"stdout": None, "stderr": None}
        self.printed = [0, 0]  # characters written to stdout, stderr by the request's thread, in all
        self.unflushed = False  # something was printed since the last reply

    def __enter__(self):
        self.thread = threading.get_ident()
        streams = self.streams
        self.saved = streams.stdout, streams.stderr
        streams.stdout = _Tee(streams.stdout, self.parts["stdout"], self, 0)
        streams.stderr = _Tee(streams.stderr, self.parts["stderr"], self, 1)
        return self

    def __exit__(self, *exc_info):
        self.streams.stdout, self.streams.stderr = self.saved

    def start(self):
        self.parts["stdout"].clear()
        self.parts["stderr"].clear()

    def stop(self):
        return "".join(self.parts["stdout"]), "".join(self.parts["stderr"])

    def take_unflushed(self) -> bool:
        unflushed, self.unflushed = self.unflushed, False
        return unflushed


class _Tee:
    def __init__(self, stream, parts: list, owner: CapturedOutput, index: int):
        self._stream, self._parts, self._owner, self._index = stream, parts, owner, index

    def write(self, text):
        if self._parts is not None:
            self._parts.append(text)
        self._owner.unflushed = True
        written = self._stream.write(text)
        if type(text) is str and threading.get_ident() == self._owner.thread:
            self._owner.printed[self._index] += len(text)
        return written

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Reply:
    """Sends ``dlexec_reply`` messages to one request, on the shell channel."""

    def __init__(self, session, stream, idents, parent):
        self.session, self.stream, self.idents, self.parent = session, stream, idents, parent

    def send(self, content, buffers=(), flush=True, printed=None):
        # Let the task's prints go out first. Only if there are any: a flush waits for a
        # round trip to the kernel's IOPub thread, a quarter of a trivial task's time.
        for out in (sys.stdout, sys.stderr) if flush else ():
            try:
                out.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream: nothing to flush
                pass
        if printed and (printed[0] or printed[1]):  # the client waits for this much output first
            content["printed"] = list(printed)
        layout, buffers = serialization.pack(buffers)
        if layout:
            content["layout"] = layout
        if "digests" in self.parent["content"]:  # the client checks them (serialization.digests)
            content["digests"] = serialization.digests(buffers)
        self.session.send(self.stream, REPLY, content, parent=self.parent, ident=self.idents, buffers=buffers)
