"""``DatalayerExecutor``: ``ProcessPoolExecutor``'s API with Jupyter kernels as workers.

Data flow (one task, left to right and back)::

  caller's thread          dlexec.pool (under the pool's lock)              a runtime's I/O thread
  ---------------          ------------------------------------             ----------------------
  submit(fn, *args)  -->   WorkItem --> pending --> scheduler.plan() --> KernelSession.request
  (dill: fn once per       (future,     (deque)     (pure: batches per     (session.py; channel.py
   version, args per call)  frames)                  free runtime)           routes) =====> kernel:
                                                                             dlexec.kernel.worker
  future.result()   <--    results.settle() <-- results.read_reply() <===== runs the batch,
                           (outside the lock)   (TaskResult records)        replies per FLUSH

* ``submit`` serializes the call in the caller's thread (a failure is set on the future, as
  ProcessPoolExecutor does) and queues a :class:`~dlexec.pool.work.WorkItem`.
* :meth:`Pool.dispatch <dlexec.pool.pool.Pool.dispatch>` runs whenever something changes (a
  submit, a runtime ready, a reply, a death): :func:`~dlexec.pool.scheduler.plan` says which
  items go to which runtime (batch sizes from measured durations) and whether to start one
  more; each batch goes as one ``run`` request. An item sent is RUNNING: no longer cancellable.
* The :class:`~dlexec.pool.supervisor.Supervisor` starts runtimes (lazily, in parallel, from
  the runtime factory), runs the initializer, restarts a runtime whose task will not stop,
  retires idle, expiring and surplus ones, and handles deaths: with ``max_retries=0`` a death
  breaks the pool, as a dead process breaks a ProcessPoolExecutor (every pending future fails
  with :class:`~dlexec.errors.WorkerLostError`, a ``BrokenProcessPool``); with retries its
  tasks run elsewhere.
* ``shutdown``, garbage collection of the executor and interpreter exit let the pending work
  finish, then stop every runtime; a ``KeyboardInterrupt`` in a ``with`` block stops them at once.

The runtimes come from a factory (``runtime_factory=``, else the backend's, built as
:class:`~dlexec.RuntimeService` builds its own), so the pool never imports a backend.
"""

from __future__ import annotations

import itertools
import math
import numbers
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor
from concurrent.futures.process import _chain_from_iterable_of_lists, _get_chunks, _process_chunk
from functools import partial
from typing import Any, Callable

from . import view
from .errors import TerminatedBySignal
from .futures import TaskFuture
from .modules import check_ship_modules
from .pool.pool import Pool, live_pools
from .serialization import Shared
from .service import RuntimeService
from .stats import ExecutorStats

#: Calls that map submits at a time (one pass of the lock and the scheduler each).
MAP_GROUP = 64

_global_shutdown = False


def _python_exit() -> None:
    """At interpreter exit, finish the pending work and stop the kernels (as ProcessPoolExecutor).

    Unless the program is ending on Ctrl-C or SIGTERM: then the kernels are stopped at once.
    """
    global _global_shutdown
    _global_shutdown = True
    interrupted = TerminatedBySignal.raised or isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for pool in list(live_pools):
        if interrupted:
            pool.kill()
        else:
            pool.shutdown(wait=True)


# Runs before non-daemon threads are joined and before atexit, like concurrent.futures.
threading._register_atexit(_python_exit)


def _map(executor, fn: Callable, calls, timeout: float | None, buffersize: int | None, progress=None):
    """``Executor.map`` of Python 3.14 (with ``buffersize``), ``fn`` serialized once; its tasks
    counted in ``progress`` (a :class:`~dlexec.stats.MapProgress`, for the notebook view)."""
    end_time = None if timeout is None else timeout + time.monotonic()
    pool, settings = executor._pool, executor._task_settings
    blob = _blob(pool, fn)

    def submit(group):
        futures = pool.submit_many(blob, group, *settings, global_shutdown=_global_shutdown)
        if progress is not None:
            progress.add_submitted(len(futures))
            for future in futures:
                future.add_done_callback(progress.track)
        return futures

    if buffersize:
        first = [(args, {}) for args in itertools.islice(calls, buffersize)]
        fs = deque(submit(first) if first else ())
    else:
        fs = []
        while group := [(args, {}) for args in itertools.islice(calls, MAP_GROUP)]:
            fs.extend(submit(group))
    # A result iterator does not keep the executor alive (nor options(), the executor's).
    executor_ref = weakref.ref(getattr(executor, "_executor", executor))

    def result_iterator():
        try:
            fs.reverse()  # pop() from the end: the first submitted first
            while fs:
                if buffersize and executor_ref() is not None and (args := next(calls, None)) is not None:
                    fs.appendleft(submit([(args, {})])[0])
                if end_time is None:
                    yield _result_or_cancel(fs.pop())
                else:
                    yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
        finally:
            for future in fs:
                future.cancel()

    return result_iterator()


def _result_or_cancel(future, timeout=None):
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # no reference kept to a result the caller may drop


def _common_length(iterables) -> int | None:
    try:
        return min(len(iterable) for iterable in iterables)
    except (TypeError, ValueError):  # not all sized, or no iterables
        return None


def _seconds(name: str, value, *, optional: bool = False, zero: bool = False) -> float | None:
    """A duration option as a float: a real number, > 0 (>= 0 if ``zero``), or None if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or _is_decimal(value)):
        kind = "a number of seconds" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, not {value!r}")
    return seconds


def _is_decimal(value) -> bool:
    return type(value).__name__ == "Decimal" and type(value).__module__ in ("decimal", "_decimal", "_pydecimal")


class DatalayerExecutor(Executor):
    """A ``ProcessPoolExecutor`` whose workers are Jupyter kernels (runtimes).

    The arguments are ``ProcessPoolExecutor``'s; ``mp_context`` is accepted and ignored
    (kernels are not multiprocessing children). The keyword-only options choose the
    backend (``"local"``, the default, or ``$DLEXEC_BACKEND``), how long a runtime may
    take to start, and pass backend settings on (for ``local``: ``kernel_name``,
    ``extra_arguments``, ``env``, ``cwd``).

    Callables, arguments and results travel with dill; remote exceptions are re-raised
    with their remote traceback; a runtime that dies breaks the pool with a
    :class:`~dlexec.errors.WorkerLostError` (a ``BrokenProcessPool``).

    ``task_timeout``, ``max_retries`` and ``interrupt_grace``: see :meth:`options` and
    :meth:`TaskFuture.interrupt`. ``expiry_margin``: seconds before a paid runtime's
    reservation ends from which it gets no new work. ``idle_timeout``: seconds after which
    a runtime with nothing to do is stopped (a new one starts when work comes).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str | None = None,
        start_timeout: float = 60.0,
        task_timeout: float | None = None,
        max_retries: int = 0,
        interrupt_grace: float = 5.0,
        expiry_margin: float = 60.0,
        idle_timeout: float | None = None,
        runtime_factory: Callable | None = None,
        **runtime_options: Any,
    ):
        if max_workers is None:
            from loky import cpu_count

            max_workers = cpu_count()
        elif not isinstance(max_workers, numbers.Integral) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an integer, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        start_timeout = _seconds("start_timeout", start_timeout)
        if runtime_factory is not None and not callable(runtime_factory):
            raise TypeError("runtime_factory must be a callable (name) -> dlexec.runtimes.Runtime")
        task_timeout = _seconds("task_timeout", task_timeout, optional=True)
        interrupt_grace = _seconds("interrupt_grace", interrupt_grace, zero=True)
        expiry_margin = _seconds("expiry_margin", expiry_margin, zero=True)
        idle_timeout = _seconds("idle_timeout", idle_timeout, optional=True)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError("max_retries must be an integer >= 0")
        if runtime_factory is not None:
            factory, backend = runtime_factory, getattr(runtime_factory, "kind", None) or "custom"
        else:
            # Checked now, not in a worker thread at the first task; Datalayer arguments select
            # Datalayer, as for RuntimeService.
            factory = RuntimeService.runtime_factory(backend, runtime_options)
            backend = factory.kind
        ship_modules = check_ship_modules(runtime_options.get("ship_modules", True))
        given = None
        if backend == "datalayer" and runtime_options.get("delete_given", True) and all(
                runtime_options.get(key) for key in ("pod_name", "ingress", "jupyter_token")):
            # A runtime handed in: every worker starts a kernel on it, and the executor (not the
            # first worker to stop) deletes it at shutdown, as RuntimeService.terminate() would.
            given = RuntimeService("dlexec-given-runtime", backend=backend, **runtime_options)
            factory = RuntimeService.runtime_factory(backend, {**runtime_options, "delete_given": False})
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._pool = Pool(max_workers, factory, backend=backend,
                          initializer=None if initializer is None else (initializer, tuple(initargs)),
                          max_tasks_per_child=max_tasks_per_child, start_timeout=start_timeout,
                          ship_modules=ship_modules, task_timeout=task_timeout, max_retries=max_retries,
                          interrupt_grace=interrupt_grace, expiry_margin=expiry_margin, idle_timeout=idle_timeout)
        self._pool.given_runtime = given
        # Garbage collection lets the pending work finish, then stops the kernels.
        self._finalizer = weakref.finalize(self, self._pool.shutdown, False)

    @property
    def max_workers(self) -> int:
        return self._max_workers

    #: (timeout, max_retries) of the tasks submitted through this object: the defaults.
    _task_settings: tuple = (None, None)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in a runtime; returns a :class:`TaskFuture`."""
        pool = self._pool
        pool.check_open(_global_shutdown)
        return pool.submit_many(_blob(pool, fn), [(args, kwargs)], *self._task_settings,
                                global_shutdown=_global_shutdown)[0]

    def map(self, fn: Callable, *iterables, timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None, progress: bool | dict = False):
        """As ``ProcessPoolExecutor.map`` (Python 3.14's, with ``buffersize``): results in order.

        ``fn`` is serialized once for the whole call. ``chunksize``: items per remote call.
        ``buffersize``: at most that many calls submitted ahead of the results consumed, so
        that an endless iterable works. ``progress=True`` shows a progress bar when run in a
        terminal or a notebook (a dict: options for :func:`dlexec.progress`).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        total = _common_length(iterables)
        record = view.map_progress(fn, None if total is None else -(-total // chunksize), chunksize)
        if chunksize > 1:
            fn, iterables = partial(_process_chunk, fn), (_get_chunks(*iterables, chunksize=chunksize),)
        results = view.tracked(self._pool, _map(self, fn, zip(*iterables), timeout, buffersize, record), record)
        if chunksize > 1:
            results = _chain_from_iterable_of_lists(results)
        if progress:
            from ._progress import progress as show

            results = show(results, total=total, **(progress if isinstance(progress, dict) else {}))
        return results

    def share(self, obj: Any) -> Shared:
        """``obj`` to be sent once per runtime rather than with every task that uses it.

        Pass the returned :class:`~dlexec.Shared` to ``submit`` or ``map`` in place of
        ``obj``, as an argument or inside one; the task receives ``obj`` (one copy per
        runtime, shared by its tasks: treat it as read-only).
        """
        return Shared(obj)

    def options(self, *, timeout: float | None = None, max_retries: int | None = None) -> _Options:
        """The same ``submit`` and ``map``, with these settings for the tasks sent through them.

        ``timeout``: seconds a task may run; past that it is stopped and its future raises
        ``TimeoutError``. ``max_retries``: how many dying runtimes a task survives (it is
        resubmitted to another one). Unset ones keep the executor's defaults. The view shares
        the executor's runtimes: leaving a ``with`` block over it does not shut them down.
        """
        return _Options(self, timeout, max_retries)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``ProcessPoolExecutor.shutdown``; afterwards no kernel of this executor runs.

        The executors that :meth:`options` returns share it: shutting one down shuts all."""
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, TerminatedBySignal)):
            self._pool.kill()  # Ctrl-C or SIGTERM: do not wait for the remote work
        else:
            self.shutdown(wait=True)
        return False

    def terminate_workers(self) -> None:
        """As Python 3.14's ``ProcessPoolExecutor.terminate_workers``: stop every runtime now.

        Queued tasks are cancelled, running ones fail with
        :class:`~dlexec.errors.WorkerLostError` (a ``BrokenProcessPool``), and the executor
        is shut down. Kernels are stopped and remote runtimes deleted before it returns.
        """
        self._pool.kill()

    def kill_workers(self) -> None:
        """As Python 3.14's ``ProcessPoolExecutor.kill_workers``: here the same as
        :meth:`terminate_workers` (a kernel is always stopped with SIGKILL, after the task
        interrupt that :meth:`TaskFuture.interrupt` gives the gentle way)."""
        self._pool.kill()

    def _resize(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._pool.resize(max_workers)

    def stats(self) -> ExecutorStats:
        """Tasks submitted, pending, running, done, failed and cancelled, and each runtime's
        tasks, busy time, runtime-seconds and credits (see :mod:`dlexec.stats`)."""
        return self._pool.stats()

    def _state(self) -> str:
        pool = self._pool
        if pool.broken and not pool.killed:
            return "broken"
        return "shut down" if pool.shutting_down else "running"

    def __repr__(self) -> str:
        stats = self._pool.stats()
        ready = sum(1 for r in stats.runtimes if r.state in ("ready", "retiring"))
        text = (f"<DatalayerExecutor {self._pool.backend} {self._state()}: {ready}/{self._max_workers} runtimes ready, "
                f"{stats.running} running, {stats.pending} pending, {stats.done} done, {stats.failed} failed")
        if stats.credits is not None:
            text += f", {stats.credits:.2f} credits"
        return text + ">"

    def _repr_html_(self) -> str:
        return view.render(self._pool)

    def _ipython_display_(self) -> None:
        """In a notebook: the live view (see :mod:`dlexec.view`)."""
        view.display(self._pool)


class _Options(Executor):
    """``executor.options(...)``: submit and map with per-call task settings."""

    def __init__(self, executor: DatalayerExecutor, timeout: float | None, max_retries: int | None):
        timeout = _seconds("timeout", timeout, optional=True)
        if max_retries is not None and (not isinstance(max_retries, int) or isinstance(max_retries, bool)
                                        or max_retries < 0):
            raise ValueError("max_retries must be an integer >= 0, or None")
        self._executor = executor
        self._pool = executor._pool
        self._task_settings = (timeout, max_retries)

    submit = DatalayerExecutor.submit
    map = DatalayerExecutor.map
    share = DatalayerExecutor.share

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the executor down (this view shares its runtimes)."""
        self._executor.shutdown(wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type, exc_val, exc_tb):
        """Leaving a ``with`` block over a view leaves the executor, which owns the runtimes, running."""
        return False


def _blob(pool: Pool, fn: Callable):
    """``fn`` serialized, or the exception that says why it cannot be (each future raises it,
    as ProcessPoolExecutor's would)."""
    try:
        return pool.callable_blob(fn)
    except Exception as exc:  # noqa: BLE001
        return exc
