"""A ``run`` reply's results, read into the outcomes of its futures (no lock, no state)."""

from __future__ import annotations

import time
from concurrent.futures import InvalidStateError
from typing import Any

from .. import serialization
from ..kernel.wire import TaskResult, split_frames
from ..tracebacks import rebuild_exception
from .work import WorkItem

#: ``(item, ok, value)``: ok True (value: the result), False (value: the exception) or None (cancelled).
Outcome = tuple


def read_reply(content: dict, frames: list, items: dict[int, WorkItem], runtime_id: str) -> tuple[list[Outcome], float]:
    """The outcomes a reply reports for ``items`` (a batch's unsettled items, by task id), and
    the seconds its tasks ran. Tasks not among them (a late reply from a restarted kernel) are
    skipped; with the final reply, items it did not report fail."""
    done: list[Outcome] = []
    seconds = 0.0
    if content.get("status") != "ok":  # the worker failed outside any task
        error = rebuild_exception(content.get("info") or {}, frames)
        done = [(item, False, error) for item in items.values()]
    else:
        results = [TaskResult(*row) for row in content["results"]]
        for result, result_frames in zip(results, split_frames(frames, (r.nframes for r in results))):
            seconds += result.seconds
            item = items.get(result.id)
            if item is None:
                continue
            future = item.future
            future.stdout, future.stderr, future.run_seconds = result.stdout, result.stderr, result.seconds
            done.append((item, *_outcome(result, result_frames, item, runtime_id)))
    if content.get("final", True):  # anything not reported by now never will be (not with a well-behaved worker)
        reported = {item.id for item, _, _ in done}
        lost = RuntimeError("the runtime did not report the result of this task")
        done.extend((item, False, lost) for item in items.values() if item.id not in reported)
    return done, seconds


def _outcome(result: TaskResult, frames: list, item: WorkItem, runtime_id: str) -> tuple[Any, Any]:
    if result.status == "cancelled":
        return None, None
    if result.status == "timeout":
        return False, TimeoutError(
            f"the task ran longer than its timeout of {item.timeout:g} s on runtime {runtime_id}; it was stopped there")
    if result.status == "ok":
        try:
            return True, serialization.loads(frames)
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: it fails this future, not the thread
            serialization.add_note(exc, f"dlexec: the task's result, sent by runtime {runtime_id}, could not "
                                        "be unpickled here")
            return False, exc
    return False, rebuild_exception(result.info or {}, frames)


def settle(outcomes: list[Outcome]) -> None:
    """Complete the futures (no lock held: their callbacks may call back into the executor)."""
    now = time.time()
    for item, ok, value in outcomes:
        item.future.finished_at = now
        item.release()
        if ok is None:
            item.future._set_cancelled()
        elif ok:
            _set(item.future.set_result, value)
        else:
            _set(item.future.set_exception, value)


def _set(setter, value) -> None:
    try:
        setter(value)
    except InvalidStateError:  # cancelled or settled meanwhile
        pass
