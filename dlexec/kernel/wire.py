"""What travels between the pool and a kernel's worker, as typed records.

A ``run`` request's content holds ``tasks`` (:class:`Task` rows) and ``blobs``
(:class:`BlobRef` rows), its binary buffers the frames they count, in that order: the
blobs' first, then each task's ``(args, kwargs)``. Each ``dlexec_reply`` holds ``results``
(:class:`TaskResult` rows) and the result frames they count. Records travel as JSON lists
(a named tuple is one) and are read back with ``Record(*row)``. Standard library only:
both the client and the kernel import this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

#: The message types of dlexec's requests (shell), replies (shell) and task stops (control).
REQUEST = "dlexec_request"
REPLY = "dlexec_reply"
CANCEL = "dlexec_cancel"


class BlobRef(NamedTuple):
    """A blob (a callable, a shared object) that the request carries: its key and frame count."""

    key: str
    nframes: int


class Task(NamedTuple):
    """One task of a ``run`` request: ``fn(*args, **kwargs)`` with ``fn`` the blob ``fn_key``."""

    id: int
    nframes: int  # frames of the pickled (args, kwargs)
    timeout: float | None  # seconds, or None
    fn_key: str


class TaskResult(NamedTuple):
    """One task's outcome in a reply. ``status``: ``ok`` (frames: the result), ``error``
    (``info`` and frames: the exception), ``cancelled`` or ``timeout``."""

    id: int
    status: str
    nframes: int
    info: dict | None
    seconds: float  # how long it ran in the kernel
    stdout: str  # what it printed
    stderr: str


def split_frames(frames: Sequence, counts: Iterable[int], offset: int = 0) -> Iterator[Sequence]:
    """The frames of each record in turn, ``counts`` giving how many each one has."""
    for count in counts:
        yield frames[offset: offset + count]
        offset += count


def rows(records: Iterable[Any], record: type) -> list:
    """Rows read from JSON as records of type ``record``."""
    return [record(*row) for row in records]
