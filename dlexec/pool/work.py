"""What the pool queues and sends: a :class:`WorkItem` per call, a :class:`Batch` per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..futures import TaskFuture
    from ..serialization import Blob
    from .handle import WorkerHandle


class WorkItem:
    """A task: its future, its serialized call, its settings, and where it stands.

    Owned by the pool (changed under its lock), except ``frames``/``blobs``, which the thread
    that settles its future drops."""

    __slots__ = ("blobs", "deaths", "frames", "future", "id", "max_retries", "modules", "requeued", "sent_at",
                 "solo", "stop_requested", "timeout", "uses_user_modules", "worker")

    def __init__(self, id: int, future: TaskFuture, frames: list, blobs: list[Blob], uses_user_modules: bool,
                 timeout: float | None, max_retries: int, modules: set[str] | None = None):
        self.id, self.future, self.frames = id, future, frames
        self.blobs = blobs  # the callable's first, then the Shared objects in the arguments
        self.uses_user_modules = uses_user_modules
        self.modules = modules  # the user modules the arguments refer to (to ship)
        self.timeout, self.max_retries = timeout, max_retries
        self.deaths: list[str] = []  # how the runtimes it was running on died
        self.requeued = False  # back in the queue after its runtime died or restarted (its future runs)
        self.solo = timeout is not None  # sent alone, to an idle kernel
        self.sent_at: float | None = None  # time.monotonic() when sent
        self.worker: WorkerHandle | None = None  # where it is in flight
        self.stop_requested: float | None = None  # time.monotonic() of interrupt()

    def release(self) -> None:
        """Its future is settled: drop the payload (a retry would have needed it)."""
        self.frames = self.blobs = self.worker = None


class Batch:
    """Items sent to one kernel in one request, by task id (removed as their futures settle)."""

    __slots__ = ("items",)

    def __init__(self, items: list[WorkItem]):
        self.items = {item.id: item for item in items}
