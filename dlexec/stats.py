"""What an executor has done and what it costs: ``DatalayerExecutor.stats()``, and its view.

Runtime-seconds run from the request that created a runtime to the moment it was
stopped (or now); credits are ``burning_rate`` (credits per second, from the runtime's
environment) times runtime-seconds, for the runtimes that have a rate (Datalayer's).

:func:`executor_html` is the HTML of the notebook view (see :mod:`dlexec.view`): it shows
only counts, states, runtime ids and function names, never an address or a token.
"""

from __future__ import annotations

import html
import threading
import time
from concurrent.futures._base import FINISHED
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuntimeStats:
    """One runtime of the pool, running or stopped."""

    id: str
    state: str  # starting, ready, restarting, retiring or stopped
    tasks: int  # results it returned
    busy_seconds: float  # time spent running tasks
    runtime_seconds: float  # from creation to stop (or now)
    credits: float | None  # burning_rate x runtime_seconds; None where runtimes are free
    running: int = 0  # tasks sent to it and not finished


@dataclass(frozen=True)
class ExecutorStats:
    """Counts of tasks, and the runtimes that ran them."""

    submitted: int
    pending: int  # queued, not yet sent to a runtime
    running: int  # sent to a runtime, not finished
    done: int  # finished with a result
    failed: int  # finished with an exception
    cancelled: int
    runtimes: tuple[RuntimeStats, ...] = field(default=())

    @property
    def busy_seconds(self) -> float:
        return sum(r.busy_seconds for r in self.runtimes)

    @property
    def runtime_seconds(self) -> float:
        return sum(r.runtime_seconds for r in self.runtimes)

    @property
    def credits(self) -> float | None:
        """Credits consumed by the paid runtimes; None if none is paid."""
        paid = [r.credits for r in self.runtimes if r.credits is not None]
        return sum(paid) if paid else None

    @property
    def utilization(self) -> float:
        """Busy time over runtime time: how well the runtimes paid for were used."""
        return self.busy_seconds / self.runtime_seconds if self.runtime_seconds else 0.0

    def summary(self) -> str:
        text = (f"{self.submitted} submitted: {self.pending} pending, {self.running} running, "
                f"{self.done} done, {self.failed} failed, {self.cancelled} cancelled; "
                f"{len(self.runtimes)} runtimes, {self.runtime_seconds:.1f} runtime-s, "
                f"{self.busy_seconds:.1f} s busy")
        if self.credits is not None:
            text += f", {self.credits:.2f} credits"
        return text


class MapProgress:
    """The progress of one ``map`` call, counted in remote calls (tasks: one per chunk).

    ``track`` is the done callback of each of its futures; ``close`` is called when its
    result iterator ends (consumed, closed or collected). ``total`` is None while unknown
    (an iterable without a length, submitted as results are consumed).
    """

    def __init__(self, label: str, total: int | None, chunksize: int = 1):
        self.label, self.total, self.chunksize = label, total, chunksize
        self.submitted = self.done = self.failed = self.cancelled = 0
        self.started_at, self.finished_at = time.monotonic(), None
        self.closed = False
        self._lock = threading.Lock()

    def track(self, future) -> None:
        """A done callback: count the outcome (never raises into the thread that finished it).

        It runs for every task of a map: it reads the future's final state without taking its
        lock (as the executor's own counter does), and takes its own only to count."""
        try:
            with self._lock:
                if future._state != FINISHED:
                    self.cancelled += 1
                elif future._exception is not None:
                    self.failed += 1
                else:
                    self.done += 1
                if self.total is not None and self.finished_at is None:
                    self._check_finished()
        except BaseException:  # noqa: BLE001 - a view's counter must not break the pool
            pass

    def add_submitted(self, count: int) -> None:
        with self._lock:
            self.submitted += count

    def close(self) -> None:
        """The results are no longer iterated: what was not submitted never will be."""
        with self._lock:
            self.closed = True
            if self.total is None or self.submitted < self.total:
                self.total = self.submitted
            self._check_finished()

    def _check_finished(self) -> None:
        if self.finished_at is None and self.total is not None and self.finished_count >= self.total:
            self.finished_at = time.monotonic()

    @property
    def finished_count(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at


BAR_COLORS = {"done": "#4caf50", "failed": "#e53935", "cancelled": "#9e9e9e"}


def _map_row(m: MapProgress) -> str:
    """One map: its function, a bar (when its size is known) and its counts."""
    total = m.total
    counts = f"{m.finished_count}/{total}" if total is not None else f"{m.finished_count}"
    counts += " tasks" if m.chunksize == 1 else f" tasks (chunks of {m.chunksize})"
    details = [f"{m.done} done"] + [f"{n} {what}" for what, n in (("failed", m.failed),
                                                                  ("cancelled", m.cancelled)) if n]
    if not m.finished:
        running = (total if total is not None else m.submitted) - m.finished_count
        if running > 0:
            details.append(f"{running} to go")
    bar = ""
    if total:
        segments = "".join(
            f'<div title="{what}" style="width:{100 * n / total:.2f}%;background:{BAR_COLORS[what]}"></div>'
            for what, n in (("done", m.done), ("failed", m.failed), ("cancelled", m.cancelled)) if n)
        bar = ('<div class="dlexec-bar" style="display:inline-flex;vertical-align:middle;width:12em;height:0.9em;'
               f'background:#e0e0e0;border-radius:2px;overflow:hidden">{segments}</div> ')
    state = "finished" if m.finished else "running"
    cell = '<td style="padding:0 1em 0 0">'
    return (f'<tr class="dlexec-map">{cell}map({html.escape(m.label)})</td>{cell}{bar}{html.escape(counts)}</td>'
            f"{cell}{html.escape(', '.join(details))}</td>{cell}{m.seconds:.1f} s {state}</td></tr>")


def executor_html(title: str, stats: ExecutorStats, maps: tuple[MapProgress, ...] = ()) -> str:
    """The notebook view of an executor: its state, task counts, its maps and runtimes."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            r.id, r.state, r.running, r.tasks, f"{r.busy_seconds:.2f}", f"{r.runtime_seconds:.1f}",
            "" if r.credits is None else f"{r.credits:.2f}")) + "</tr>"
        for r in stats.runtimes if r.state != "stopped"
    )
    stopped = sum(1 for r in stats.runtimes if r.state == "stopped")
    counts = (f"{stats.submitted} submitted &middot; {stats.pending} pending &middot; {stats.running} running "
              f"&middot; {stats.done} done &middot; {stats.failed} failed &middot; {stats.cancelled} cancelled")
    usage = f"{stats.runtime_seconds:.1f} runtime-s, {stats.busy_seconds:.1f} s busy"
    if stats.credits is not None:
        usage += f", {stats.credits:.2f} credits"
    if stopped:
        usage += f" ({stopped} stopped runtime{'s' if stopped > 1 else ''} included)"
    map_rows = "".join(_map_row(m) for m in maps)
    map_table = f'<table class="dlexec-maps"><tbody>{map_rows}</tbody></table>' if map_rows else ""
    table = ("<table><thead><tr><th>runtime</th><th>state</th><th>running</th><th>tasks</th><th>busy s</th>"
             f"<th>runtime s</th><th>credits</th></tr></thead><tbody>{rows}</tbody></table>") if rows else ""
    return (f'<div class="dlexec-view"><strong>{html.escape(title)}</strong><br>{counts}<br>{usage}'
            f"{map_table}{table}</div>")
