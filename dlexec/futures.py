"""``TaskFuture``: a ``concurrent.futures.Future`` that knows where and when its task ran."""

from __future__ import annotations

from concurrent.futures import Future


class TaskFuture(Future):
    """The future of one task submitted to a :class:`dlexec.DatalayerExecutor`.

    Besides the standard ``Future`` API it records ``runtime_id`` (the runtime that ran
    the task), and ``started_at``/``finished_at`` (``time.time()`` on this machine when
    the task was sent and when its result arrived).
    """

    def __init__(self) -> None:
        super().__init__()
        self.runtime_id: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def __repr__(self) -> str:
        text = super().__repr__()
        return text[:-1] + f" on {self.runtime_id}>" if self.runtime_id else text
