"""Calls into work items (in the caller's thread), and the tally of how their futures ended."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures._base import FINISHED
from functools import partial

from .. import serialization
from ..callables import CallableCache
from ..futures import TaskFuture
from ..modules import user_modules
from ..serialization import Blob
from .dispatch import uses_user_modules
from .work import WorkItem


class Intake:
    """Serializes calls (dill, in the submitting thread) and counts outcomes; owns its counts."""

    def __init__(self, interrupt: Callable[[WorkItem], bool]):
        self.interrupt = interrupt  # TaskFuture.interrupt of an item: the pool's
        self.callables = CallableCache()
        self.counts = {"submitted": 0, "done": 0, "failed": 0, "cancelled": 0}
        self._counts_lock = threading.Lock()  # futures' done-callbacks update the counts from any thread
        self._ids = itertools.count(1)

    def callable_blob(self, fn: Callable) -> Blob:
        """``fn`` serialized (once, if it has not changed since the last call)."""
        try:
            return self.callables.blob(fn)
        except Exception as exc:
            raise TypeError(f"cannot serialize {fn!r} with dill: {exc}") from exc

    def items(self, fn_blob: Blob | BaseException, calls: list[tuple[tuple, dict]], timeout: float | None,
              max_retries: int) -> tuple[list[TaskFuture], list[WorkItem]]:
        """A future per call, and the work items of those that could be serialized."""
        futures, items = [], []
        for args, kwargs in calls:
            future = TaskFuture()
            future.add_done_callback(self._count)
            futures.append(future)
            item = self._item(future, fn_blob, args, kwargs, timeout, max_retries)
            if item is not None:
                items.append(item)
        return futures, items

    def _item(self, future: TaskFuture, fn_blob: Blob | BaseException, args: tuple, kwargs: dict,
              timeout: float | None, max_retries: int) -> WorkItem | None:
        """The work item of one call, or None when it cannot be serialized (its future says why)."""
        if isinstance(fn_blob, BaseException):
            future.set_exception(fn_blob)
            return None
        modules: set = set()
        shared: list[Blob] = []
        try:
            frames = serialization.dumps_call(args, kwargs, modules=modules, shared=shared)
        except Exception as exc:  # noqa: BLE001 - as ProcessPoolExecutor: the future carries it
            future.set_exception(exc)
            return None
        blobs = [fn_blob, *shared] if shared else [fn_blob]
        call_modules = user_modules(modules) if modules else None
        uses_modules = any(map(uses_user_modules, blobs)) or bool(call_modules)
        item = WorkItem(next(self._ids), future, frames, blobs, uses_modules, timeout, max_retries, call_modules)
        future._interrupt = partial(self.interrupt, item)
        return item

    def count_submitted(self, n: int) -> None:
        with self._counts_lock:
            self.counts["submitted"] += n

    def _count(self, future: TaskFuture) -> None:
        state = future._state  # final when callbacks run: no need for the future's lock
        outcome = "done" if state == FINISHED and future._exception is None else (
            "failed" if state == FINISHED else "cancelled")
        with self._counts_lock:
            self.counts[outcome] += 1

    def tally(self) -> dict:
        with self._counts_lock:
            return dict(self.counts)
