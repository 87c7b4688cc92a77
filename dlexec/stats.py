"""What an executor has done and what it costs: ``DatalayerExecutor.stats()``.

Runtime-seconds run from the request that created a runtime to the moment it was
stopped (or now); credits are ``burning_rate`` (credits per second, from the runtime's
environment) times runtime-seconds, for the runtimes that have a rate (Datalayer's).
"""

from __future__ import annotations

import html
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


def executor_html(title: str, stats: ExecutorStats) -> str:
    """The notebook view of an executor: its state, task counts and runtimes."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            r.id, r.state, r.tasks, f"{r.busy_seconds:.2f}", f"{r.runtime_seconds:.1f}",
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
    table = ("<table><thead><tr><th>runtime</th><th>state</th><th>tasks</th><th>busy s</th>"
             f"<th>runtime s</th><th>credits</th></tr></thead><tbody>{rows}</tbody></table>") if rows else ""
    return (f"<div><strong>{html.escape(title)}</strong><br>{counts}<br>{usage}{table}</div>")
