"""Which queued items go to which runtime now: :func:`plan`, a pure function.

A batch holds about ``BATCH_SECONDS`` of work, judged by the tasks' measured durations (one
task until the first result), and never more than the queue's fair share per free slot: one
task when the queue is short or the tasks are long (low latency, little committed work), up
to ``MAX_BATCH`` tiny ones (throughput). A runtime has one batch in flight, or
``PIPELINE_DEPTH`` when tasks are short (the second hides the message latency); longer tasks
wait in the queue for a free runtime, so they run in parallel and stay cancellable
(ProcessPoolExecutor's call queue plays the same role). A *solo* item (one with a timeout, or
one requeued after its runtime died) goes alone, to an idle runtime. When every runtime is
busy and fewer than ``max_workers`` exist, one more starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from .handle import State

#: Batches in flight per kernel for short tasks: one running, one queued behind it.
PIPELINE_DEPTH = 2
#: Most tasks in one message.
MAX_BATCH = 256
#: How much work (by measured task durations) one batch carries.
BATCH_SECONDS = 0.05


class Plan(NamedTuple):
    #: ``(worker, count)``: the next ``count`` items of the queue go to ``worker``, in this order.
    batches: list
    #: Start one more runtime.
    start_worker: bool
    #: Every runtime is busy and no other may start: a new item can only wait.
    saturated: bool


def pipeline_depth(task_seconds: float | None) -> int:
    """Queue work behind a busy runtime only for short tasks, where hiding the latency pays."""
    return PIPELINE_DEPTH if task_seconds is not None and task_seconds < BATCH_SECONDS else 1


def batch_limit(task_seconds: float | None) -> int:
    """The most tasks in one batch: about ``BATCH_SECONDS`` of them (one until measured)."""
    if task_seconds is None:
        return 1
    return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(task_seconds, 1e-6))))


def plan(queue: Sequence, workers: Sequence, task_seconds: float | None, max_workers: int,
         max_tasks_per_child: int | None = None) -> Plan:
    """The batches to send now. ``queue``: items with a ``solo`` flag, first to go first;
    ``workers``: with ``state``, ``inflight`` (batches), ``pipelinable()`` and ``sent``;
    ``task_seconds``: the tasks' average duration so far (None before the first result)."""
    depth = pipeline_depth(task_seconds)
    limit = batch_limit(task_seconds)
    ready = [w for w in workers if w.state is State.READY]
    load = {id(w): len(w.inflight) for w in ready}
    has_solo = {id(w): not w.pipelinable() for w in ready}
    sent = {id(w): w.sent for w in ready}
    retiring: set[int] = set()  # reach max_tasks_per_child with this plan
    batches = []
    index, total = 0, len(queue)
    while index < total:
        if queue[index].solo:  # alone, and only to an idle runtime
            free = [w for w in ready if load[id(w)] == 0 and id(w) not in retiring]
        else:
            free = [w for w in ready if load[id(w)] < depth and not has_solo[id(w)] and id(w) not in retiring]
        if not free:
            break
        slots = sum(depth - load[id(w)] for w in free)
        worker = min(free, key=lambda w: load[id(w)])  # an idle one first
        size = min(limit, math.ceil((total - index) / slots))
        if max_tasks_per_child:
            size = min(size, max_tasks_per_child - sent[id(worker)])
        count = solo = 0
        while index < total and count < size:
            if count and queue[index].solo:
                break
            solo = queue[index].solo
            index += 1
            count += 1
            if solo:
                break
        batches.append((worker, count))
        load[id(worker)] += 1
        has_solo[id(worker)] = has_solo[id(worker)] or bool(solo)
        sent[id(worker)] += count
        if max_tasks_per_child and sent[id(worker)] >= max_tasks_per_child:
            retiring.add(id(worker))
    left = total - index
    starting = sum(1 for w in workers if w.state is State.STARTING)
    active = sum(1 for w in workers if w.state not in (State.STOPPED, State.RETIRING)) - len(retiring)
    return Plan(batches, bool(left) and starting < left and active < max_workers, bool(left) and active >= max_workers)
