"""The live notebook view of an executor: ``display(executor)`` (or ``executor`` last in a cell).

In a Jupyter kernel the view is an ipywidgets ``HTML`` widget when ipywidgets is installed,
and otherwise an HTML output shown with a display id (``display(..., display_id=True)``),
which Jupyter front ends update in place without widgets. Either way one thread per
executor (a *monitor*) renders the executor's state (:func:`dlexec.stats.executor_html`)
and updates the views it shows:

* at most ``UPDATE_HZ`` times a second while the executor changes (tasks queued or running,
  runtimes starting, counts moving), and every ``IDLE_SECONDS`` otherwise (runtime-seconds
  and credits still grow); only when the HTML changed;
* it reads the executor's counters (``stats()``, the maps' progress), taking the executor's
  lock only for that read, and never runs in the executor's own threads (maps count their
  tasks in a done callback that only increments counters);
* each step catches everything (``BaseException``): a failing view is logged once, the
  other views are still updated, and the monitor retries at the idle pace (it gives up
  after ``MAX_FAILURES`` failures in a row); it never raises into anything;
* it stops after a last update once the executor is shut down and its runtimes stopped (also
  when the executor is garbage-collected, which shuts it down), or when every widget it
  updates is closed. It is a daemon thread, and a bounded number of views (``MAX_VIEWS``,
  the latest) are kept up to date.

Outside a notebook kernel, ``display(executor)`` shows the same HTML once (and its text).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Iterator

from . import _threads

from .stats import MapProgress, executor_html

UPDATE_HZ = 4
IDLE_SECONDS = 5.0
MAX_VIEWS = 4
#: Finished maps kept in the view, and maps in all (the latest).
FINISHED_MAPS = 3
MAX_MAPS = 10
#: Failed updates in a row after which a monitor gives up (it logs the first failure).
MAX_FAILURES = 20

_log = logging.getLogger("dlexec.view")
_lock = threading.Lock()
_maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> [MapProgress]
_monitors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> _Monitor


# -- what the view shows -----------------------------------------------------------------------


def pool_state(pool) -> str:
    if pool.broken and not pool.killed:
        return "broken"
    return "shut down" if pool.shutting_down else "running"


def render(pool) -> str:
    """The HTML of the view of the executor whose pool is ``pool``."""
    title = f"DatalayerExecutor({pool.max_workers}, backend={pool.backend!r}): {pool_state(pool)}"
    return executor_html(title, pool.stats(), maps_of(pool))


def render_text(pool) -> str:
    return f"DatalayerExecutor({pool.max_workers}, backend={pool.backend!r}): {pool_state(pool)}; " + \
        pool.stats().summary()


def map_progress(fn: Callable, total: int | None, chunksize: int) -> MapProgress:
    """The progress record of a new map of ``fn`` (``total`` tasks, if known)."""
    label = getattr(fn, "__qualname__", None) or type(fn).__name__  # a name, never a repr (no arguments)
    return MapProgress(str(label), total, chunksize)


def tracked(pool, results: Iterator, record: MapProgress) -> Iterator:
    """Show ``record`` in the pool's view, and close it when ``results`` (its map's result
    iterator) end: consumed, closed or garbage-collected."""
    with _lock:
        maps = _maps.get(pool, [])
        finished = [m for m in maps if m.finished][-(FINISHED_MAPS - 1):] if FINISHED_MAPS > 1 else []
        _maps[pool] = ([m for m in maps if not m.finished or m in finished] + [record])[-MAX_MAPS:]
    return _closing(results, record)


def maps_of(pool) -> tuple[MapProgress, ...]:
    with _lock:
        maps = list(_maps.get(pool, ()))
    finished = [m for m in maps if m.finished][-FINISHED_MAPS:]
    return tuple(m for m in maps if not m.finished or m in finished)


def _closing(results: Iterator, record: MapProgress) -> Iterator:
    try:
        yield from results
    finally:
        record.close()


# -- showing it -------------------------------------------------------------------------------


def display(pool) -> None:
    """Show the view of ``pool`` in the current IPython front end (``_ipython_display_``)."""
    from IPython.display import display as show

    from ._progress import _in_notebook, notebook_widgets

    html, text = render(pool), render_text(pool)
    if not _in_notebook() or _finished(pool):
        show({"text/html": html, "text/plain": text}, raw=True)
        return
    if notebook_widgets():
        import ipywidgets

        widget = ipywidgets.HTML(value=html)
        show(widget)
        view: _View = _WidgetView(widget)
    else:
        handle = show({"text/html": html, "text/plain": text}, raw=True, display_id=True)
        view = _HandleView(handle)
    _monitor(pool).add(pool, view, html)


def _finished(pool) -> bool:
    """Shut down, and done stopping its runtimes: nothing will change any more."""
    if not pool.shutting_down:
        return False
    finisher = pool._finisher
    return finisher is None or not finisher.is_alive()


class _View:
    def update(self, html: str, text: str) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return False


class _WidgetView(_View):
    def __init__(self, widget):
        self.widget = widget

    def update(self, html: str, text: str) -> None:
        self.widget.value = html

    @property
    def closed(self) -> bool:
        return getattr(self.widget, "comm", None) is None


class _HandleView(_View):
    def __init__(self, handle):
        self.handle = handle

    def update(self, html: str, text: str) -> None:
        self.handle.update({"text/html": html, "text/plain": text}, raw=True)


def _monitor(pool) -> _Monitor:
    with _lock:
        monitor = _monitors.get(pool)
        if monitor is None:
            monitor = _monitors[pool] = _Monitor()  # only its thread refers to the pool, while it runs
    return monitor


class _Monitor:
    """The thread that keeps the views of one executor up to date (see the module)."""

    def __init__(self):
        self.views: list[_View] = []
        self.html: str | None = None  # the last HTML sent
        self.updates = 0  # how many times the views were updated
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.failures = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add(self, pool, view: _View, html: str) -> None:
        with self._lock:
            self.views = (self.views + [view])[-MAX_VIEWS:]
            self.html = self.html or html
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, args=(pool,), name="dlexec-view", daemon=True)
                _threads.start(self._thread)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end (after the executor's shutdown,
        its last update sent); True if it has."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.alive

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop updating the views now (they keep what they show)."""
        self._stop.set()
        return self.join(timeout)

    def _run(self, pool) -> None:
        last_signature, last_render, failing = None, 0.0, 0
        while not self._stop.is_set():
            final = False
            try:
                final = _finished(pool)
                signature = _signature(pool)
                now = time.monotonic()
                if final or signature != last_signature or now - last_render >= IDLE_SECONDS:
                    last_signature, last_render = signature, now
                    self._push(render(pool), render_text(pool), final)
                if final or self._all_closed():
                    return
                failing = 0
            except BaseException as exc:  # noqa: BLE001 - a view never breaks anything
                self.failures += 1
                failing += 1
                if self.failures == 1:
                    _log.warning("dlexec: updating the notebook view failed (%s); retrying every %g s",
                                 exc, IDLE_SECONDS, exc_info=True)
                if final or failing >= MAX_FAILURES:
                    return
                self._stop.wait(IDLE_SECONDS)
                continue
            self._stop.wait(1 / UPDATE_HZ)

    def _push(self, html: str, text: str, final: bool) -> None:
        if html == self.html and not final:
            return
        if final and _interpreter_exiting():
            return  # the kernel is going away: nobody to show it to
        with self._lock:
            views = list(self.views)
        failed = None
        for view in views:
            try:
                if not view.closed:
                    view.update(html, text)
            except BaseException as exc:  # noqa: BLE001 - the other views are still updated
                failed = exc
        self.html = html
        self.updates += 1
        if failed is not None:
            raise failed

    def _all_closed(self) -> bool:
        with self._lock:
            return bool(self.views) and all(view.closed for view in self.views)


def _signature(pool) -> tuple:
    """What changes when the executor does work: a cheap read, to decide whether to render."""
    with pool.lock:
        busy = bool(pool.pending) or any(w.inflight or w.state != "ready" for w in pool.workers)
        counts = tuple(pool.counts.values())
    maps = tuple((m.finished_count, m.finished) for m in maps_of(pool))
    # While busy, runtime and busy seconds move: a unique value makes every step render.
    return (counts, maps, pool.shutting_down, bool(pool.broken), time.monotonic() if busy else None)


def _interpreter_exiting() -> bool:
    from . import executor

    return bool(executor._global_shutdown)


def monitor_of(executor: Any) -> _Monitor | None:
    """The monitor of an executor's views, if it has one (for tests and debugging)."""
    with _lock:
        return _monitors.get(executor._pool)
