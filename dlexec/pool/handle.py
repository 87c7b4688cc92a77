"""``WorkerHandle``: one runtime of the pool, as the pool sees it.

Owned by the pool: every field is changed under the pool's lock, except ``session``, set
once by the thread that starts the runtime.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import TYPE_CHECKING

from .. import _threads
from ..stats import RuntimeStats

if TYPE_CHECKING:
    from ..session import KernelSession
    from .work import Batch, WorkItem

#: Blobs (callables, shared objects) a runtime keeps: past either bound, it starts afresh.
BLOB_CACHE_ITEMS = 256
BLOB_CACHE_BYTES = 1 << 30


class State(str, enum.Enum):
    """Where a runtime of the pool stands: STARTING -> READY (<-> RESTARTING) -> RETIRING -> STOPPED.

    A RETIRING runtime gets no new work and stops once its batches are done."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    RETIRING = "retiring"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class WorkerHandle:
    """One runtime of the pool: its session, its state, its batches in flight, its blob cache."""

    def __init__(self, name: str):
        self.name = name
        self.session: KernelSession | None = None
        self.created_at = time.time()
        self.stopped_at: float | None = None
        self.idle_since = time.monotonic()
        self.tasks = 0  # results returned
        self.busy_seconds = 0.0  # spent running tasks
        self._state = State.STARTING
        self.inflight: set[Batch] = set()
        self.sent = 0  # tasks sent, for max_tasks_per_child
        self.thread: threading.Thread | None = None  # the thread that starts it
        self.expires_at: float | None = None  # epoch seconds, for runtimes with a reservation
        self.expiry_margin = 0.0  # seconds before expires_at from which it gets no new work
        self.blobs: dict[str, int] = {}  # key -> size of the blobs the kernel holds
        self.blob_bytes = 0

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value
        if value is State.STOPPED and self.stopped_at is None:
            self.stopped_at = time.time()

    @property
    def runtime_id(self) -> str:
        session = self.session
        return session.id if session is not None and session.started else self.name

    def items(self) -> list[WorkItem]:
        """The items in flight on this runtime."""
        return [item for batch in self.inflight for item in batch.items.values()]

    def pipelinable(self) -> bool:
        """Whether a batch may queue behind the ones in flight (none of them is solo)."""
        return not any(item.solo for batch in self.inflight for item in batch.items.values())

    def stats(self) -> RuntimeStats:
        seconds = (self.stopped_at or time.time()) - self.created_at
        facts = self.session.facts if self.session is not None else {}
        rate = facts.get("burning_rate")
        return RuntimeStats(self.runtime_id, self.state.value, self.tasks, self.busy_seconds, seconds,
                            None if rate is None else float(rate) * seconds,
                            sum(len(batch.items) for batch in self.inflight))

    def retire(self) -> bool:
        """Mark it stopped and stop its runtime in the background. False if it was already
        stopped (then nothing is done: every path that stops a runtime comes here once)."""
        if self.state is State.STOPPED:
            return False
        self.state = State.STOPPED
        if self.session is not None:
            _threads.start(threading.Thread(target=self.session.terminate, name=f"{self.name}-stop", daemon=True))
        return True

    # -- the blob cache: what the kernel holds ----------------------------------------------

    def forget_blobs(self) -> None:
        self.blobs.clear()
        self.blob_bytes = 0

    def blobs_to_send(self, items: list[WorkItem], content: dict, fresh: bool) -> list:
        """The frames of the blobs the batch needs and the kernel lacks (``content`` says which).

        ``fresh`` (a user module changed), or a cache grown past its bounds: the kernel drops
        what it holds first, and everything the batch needs is sent again.
        """
        needed = {blob.key: blob for item in items for blob in item.blobs}
        missing = [blob for key, blob in needed.items() if key not in self.blobs]
        size = sum(blob.nbytes for blob in missing)
        if fresh or len(self.blobs) + len(missing) > BLOB_CACHE_ITEMS or self.blob_bytes + size > BLOB_CACHE_BYTES:
            content["drop_blobs"] = True
            self.forget_blobs()
            missing = list(needed.values())
            size = sum(blob.nbytes for blob in missing)
        frames = []
        for blob in missing:
            self.blobs[blob.key] = blob.nbytes
            frames.extend(blob.frames)
        self.blob_bytes += size
        if missing:
            content["blobs"] = [[blob.key, len(blob.frames)] for blob in missing]
        return frames
