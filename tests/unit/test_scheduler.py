"""The scheduling policy, as a pure function: no kernel, no thread, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlexec.pool.handle import State
from dlexec.pool.scheduler import BATCH_SECONDS, MAX_BATCH, PIPELINE_DEPTH, batch_limit, plan


@dataclass
class Item:
    solo: bool = False


@dataclass(eq=False)
class Worker:
    state: State = State.READY
    inflight: list = field(default_factory=list)
    sent: int = 0
    solo_inflight: bool = False

    def pipelinable(self) -> bool:
        return not self.solo_inflight


def queue(n: int, solo_at=()) -> list[Item]:
    return [Item(solo=i in solo_at) for i in range(n)]


def sizes(p) -> list[int]:
    return [count for _, count in p.batches]


def test_one_task_per_batch_until_durations_are_known():
    workers = [Worker(), Worker()]
    p = plan(queue(10), workers, None, max_workers=2)
    assert sizes(p) == [1, 1]  # one each, nothing queued behind them (long tasks stay cancellable)
    assert {id(w) for w, _ in p.batches} == {id(w) for w in workers}
    assert not p.start_worker and p.saturated


def test_short_tasks_are_batched_to_the_fair_share_and_pipelined():
    workers = [Worker(), Worker()]
    p = plan(queue(40), workers, 0.001, max_workers=2)
    # 2 workers x PIPELINE_DEPTH slots: batches of ceil(left / free slots), in turn, idle ones first
    assert PIPELINE_DEPTH == 2 and sizes(p) == [10, 10, 10, 10]
    assert sum(sizes(p)) == 40


def test_a_batch_holds_about_batch_seconds_of_work():
    assert batch_limit(None) == 1
    assert batch_limit(BATCH_SECONDS / 10) == 10
    assert batch_limit(1e-9) == MAX_BATCH
    assert batch_limit(10.0) == 1
    p = plan(queue(1000), [Worker()], BATCH_SECONDS / 10, max_workers=1)
    assert sizes(p) == [10, 10]  # two batches in flight, each ~BATCH_SECONDS


def test_long_tasks_wait_for_a_free_runtime():
    busy, idle = Worker(inflight=[object()]), Worker()
    p = plan(queue(5), [busy, idle], 1.0, max_workers=2)
    assert [(w is idle, n) for w, n in p.batches] == [(True, 1)]


def test_a_solo_item_goes_alone_to_an_idle_runtime():
    busy, idle = Worker(inflight=[object()]), Worker()
    p = plan(queue(4, solo_at={0}), [busy, idle], 0.001, max_workers=2)
    assert p.batches[0] == (idle, 1)
    # the rest may queue behind the busy runtime, never behind the solo one
    assert all(w is busy for w, _ in p.batches[1:]) and sum(sizes(p)) == 4


def test_a_batch_stops_before_a_solo_item():
    p = plan(queue(6, solo_at={3}), [Worker(), Worker()], 0.001, max_workers=2)
    # items 0-1, then 2 alone (cut before the solo item 3), which waits for an idle runtime
    assert sizes(p) == [2, 1]


def test_no_work_behind_a_solo_item_in_flight():
    worker = Worker(inflight=[object()], solo_inflight=True)
    p = plan(queue(3), [worker], 0.001, max_workers=1)
    assert p.batches == [] and p.saturated


def test_only_ready_runtimes_get_work_and_one_more_starts_when_all_are_busy():
    starting = Worker(state=State.STARTING)
    p = plan(queue(3), [starting], None, max_workers=4)
    assert p.batches == [] and p.start_worker and not p.saturated
    p = plan(queue(1), [starting], None, max_workers=4)
    assert not p.start_worker  # one item, one runtime on its way: enough
    p = plan(queue(3), [Worker(state=State.RETIRING), Worker(state=State.RESTARTING)], None, max_workers=2)
    assert p.batches == [] and p.start_worker  # a retiring runtime does not count


def test_max_tasks_per_child_caps_the_batch_and_retires_the_runtime():
    worker = Worker(sent=3)
    p = plan(queue(10), [worker], 0.001, max_workers=1, max_tasks_per_child=5)
    assert sizes(p) == [2]  # then it retires: no second batch, and a new runtime may start
    assert p.start_worker and not p.saturated


def test_an_empty_queue_plans_nothing():
    p = plan([], [Worker()], 0.001, max_workers=1)
    assert p == ([], False, False)
