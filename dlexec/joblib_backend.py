"""A joblib parallel backend named ``"datalayer"``: ``joblib.Parallel`` on Jupyter kernels.

``import dlexec`` registers it when joblib is imported, before or after dlexec, without
importing joblib itself (see :mod:`dlexec._joblib_hook`; ``dlexec.register_joblib()`` does
it explicitly, idempotent); then select it as any joblib backend::

    import joblib
    import dlexec  # noqa: F401 - makes backend="datalayer" known to joblib

    with joblib.parallel_config(backend="datalayer", n_jobs=8):
        results = joblib.Parallel()(joblib.delayed(simulate)(p) for p in params)

Libraries that use joblib internally (scikit-learn's ``GridSearchCV(n_jobs=...)``,
``cross_validate``, ensembles...) run their work on the kernels too, unchanged.

Options
-------
Every keyword of ``parallel_config(backend="datalayer", ...)`` that joblib does not use
itself goes to :class:`~dlexec.DatalayerExecutor`: ``initializer``, ``initargs``,
``max_tasks_per_child``, ``start_timeout`` and the backend settings (``url``, ``token``,
``environment``, ``time_reservation``, ``kernel_name``, ``env``, ``cwd``...). The same
keywords are accepted by ``Parallel(backend="datalayer", ...)``.

**Where the kernels run: ``runtime_backend=``.** joblib takes the ``backend`` keyword of
``parallel_config`` for itself (it is ``"datalayer"``, the name of this joblib backend),
so DatalayerExecutor's ``backend`` option is spelled ``runtime_backend`` here::

    with joblib.parallel_config(backend="datalayer", n_jobs=8, runtime_backend="jupyter",
                                url="https://jupyter.example.com", token="..."):
        ...

``runtime_backend`` is ``"local"`` (ipykernels on this machine), ``"jupyter"`` or
``"datalayer"`` (Datalayer cloud runtimes); without it ``$DLEXEC_BACKEND`` decides, then
``local``, exactly as for ``DatalayerExecutor``. Passing ``backend=`` or ``max_workers=``
to :class:`DatalayerBackend` is a ``TypeError`` that says what to write instead.

``n_jobs`` is the number of kernels (``max_workers``). Negative values count from the CPU
count of this machine as joblib does (``-1``: one kernel per CPU); left unset it is ``-1``
(as for joblib's dask backend), not 1, because ``n_jobs=1`` makes joblib run every task
in the calling process, without the backend.

Lifetime of the kernels
-----------------------
Kernels start lazily, at the first task, and are reused:

* within one ``parallel_config(backend="datalayer", ...)`` block, every ``Parallel`` call
  (and every scikit-learn fit) uses the same kernels; they are stopped when the block ends
  (or at the end of a call still running then, such as a ``return_as="generator"`` that is
  consumed after the block). A call with another ``n_jobs`` or other options gets new kernels;
* ``Parallel(backend="datalayer", ...)`` used alone stops its kernels at the end of the
  call, ``with Parallel(backend="datalayer", ...) as parallel:`` at the end of the block;
* an instance of :class:`DatalayerBackend` created by hand and passed to
  ``parallel_config(backend=instance)`` keeps its kernels until :meth:`DatalayerBackend.close`,
  garbage collection or interpreter exit.

When a task fails, a ``Parallel(timeout=...)`` expires or the caller is interrupted,
joblib aborts the call: the tasks not started are cancelled and the kernels are stopped at
once (running tasks are not waited for). A later call gets fresh kernels.

Results, errors, generators
---------------------------
Results come back in order; ``return_as="generator"`` and ``"generator_unordered"`` and
``Parallel(timeout=...)`` (which raises joblib's ``TimeoutError``, a
``multiprocessing.TimeoutError``) work. A task's exception is raised with its own type,
and its traceback ends with the remote function's frames. A kernel that dies fails the
call with :class:`dlexec.WorkerLostError` (a ``BrokenProcessPool``).

A ``Parallel`` call made inside a task runs sequentially in that task's kernel (joblib's
``SequentialBackend``), so nested parallelism never starts kernels from kernels.

Local kernels get the thread limits joblib gives its loky workers: ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``... set to ``cpu_count() // n_jobs`` unless
this process sets them, or to ``parallel_config(inner_max_num_threads=...)``. Remote
kernels keep their own environment (``inner_max_num_threads`` is ignored there, with a
warning).

joblib runs a batch of tasks as a ``joblib.parallel.BatchedCalls``, which travels by
reference: the kernels need joblib installed (local kernels use this Python, so they have
it), as they need every library the tasks use.
Batch sizes
-----------
With ``Parallel(batch_size="auto")`` (the default), batches are sized from what the kernels
measure, and more of them are kept in flight than joblib's default: see :mod:`dlexec.joblib_batches`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import warnings
from typing import Any

from . import _threads
from .joblib_batches import (  # noqa: F401 - the batching names, re-exported
    _JOBLIB_PRE_DISPATCH,
    BATCH_ROUND_TRIPS,
    MAX_BATCH_SECONDS,
    MAX_BATCH_SIZE,
    MIN_BATCH_SECONDS,
    PRE_DISPATCH,
    _BatchStats,
    batch_length,
    batch_size_for,
    submit_batch,
)

#: The name the backend is registered under: ``parallel_config(backend="datalayer")``.
JOBLIB_BACKEND_NAME = "datalayer"

#: What joblib passes to ``configure`` for its own backends; not executor options.
_JOBLIB_KEYWORDS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose",
                              "context", "idle_worker_timeout"})

_backend_class: type | None = None
_class_lock = threading.Lock()


def _import_joblib():
    try:
        from joblib import parallel
    except ImportError as exc:
        raise ImportError("the 'datalayer' joblib backend needs joblib: pip install joblib") from exc
    return parallel


def register_joblib() -> type:
    """Register the ``"datalayer"`` joblib backend (idempotent); returns its class.

    Raises ``ImportError`` if joblib is not installed.
    """
    parallel = _import_joblib()
    cls = _get_backend_class()
    if parallel.BACKENDS.get(JOBLIB_BACKEND_NAME) is not cls:
        parallel.register_parallel_backend(JOBLIB_BACKEND_NAME, cls)
    return cls


def __getattr__(name: str):
    # DatalayerBackend subclasses joblib's classes: it is built on first use, so that
    # importing this module (and dlexec) does not import joblib.
    if name == "DatalayerBackend":
        return _get_backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get_backend_class() -> type:
    global _backend_class
    with _class_lock:
        if _backend_class is None:
            _backend_class = _make_backend_class()
        return _backend_class


def _same_options(a: dict, b: dict) -> bool:
    """Whether two option dicts are the same (values compared by identity, then equality)."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if value is other:
            continue
        try:
            if not bool(value == other):
                return False
        except Exception:  # noqa: BLE001 - e.g. arrays: not comparable, so not the same
            return False
    return True


def _stop_now(executor) -> None:
    """Cancel what has not started, stop every kernel at once and wait until they are gone."""
    executor.shutdown(wait=False, cancel_futures=True)
    kill = getattr(getattr(executor, "_pool", None), "kill", None)
    if kill is not None:
        kill()  # fails the running futures and stops the kernels; returns when they are gone
    else:  # pragma: no cover - an executor without the private kill: wait for the running tasks
        executor.shutdown(wait=True)


def _make_backend_class() -> type:
    _import_joblib()
    # From joblib.parallel, not joblib: this runs as soon as joblib.parallel is imported
    # (dlexec._joblib_hook), while the joblib package is still importing it.
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        cpu_count,
        parallel_config,
    )

    class DatalayerBackend(AutoBatchingMixin, ParallelBackendBase):
        """joblib backend whose workers are the kernels of a :class:`dlexec.DatalayerExecutor`.

        ``runtime_backend`` chooses where the kernels run (DatalayerExecutor's ``backend``);
        the other keywords are DatalayerExecutor's options. See :mod:`dlexec.joblib_backend`.
        """

        default_n_jobs = -1
        supports_retrieve_callback = True
        supports_inner_max_num_threads = True
        supports_sharedmem = False
        uses_threads = False

        def __init__(self, nesting_level=None, inner_max_num_threads=None, *, runtime_backend=None,
                     **executor_options: Any):
            _check_options(executor_options)
            super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
            self._options = {"runtime_backend": runtime_backend, **executor_options}
            self._lock = threading.RLock()
            self._executor = None
            self._executor_key = None  # (n_jobs, options) the executor was made for
            self._wanted = None  # (n_jobs, options) of the last configure: for a fresh executor
            self._calls = 0  # Parallel calls between start_call and stop_call
            self._aborted = False  # abort_everything ran; cleared when a call starts
            self._stats = _BatchStats()
            self._pre_dispatch_of = None  # the Parallel whose pre_dispatch start_call changed
            self.parallel = None
            # Created by parallel_config(backend="datalayer", ...): reused until that block ends.
            self._in_block = _attach_to_config_block(self, parallel_config)

        # -- joblib's backend API --------------------------------------------------------

        def effective_n_jobs(self, n_jobs):
            """The number of kernels for ``n_jobs`` (negative: counted from this machine's CPUs)."""
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                n_jobs = self.default_n_jobs
            n_jobs = int(n_jobs)
            if n_jobs < 0:
                n_jobs = max(cpu_count() + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
            """Make (or reuse) the executor for this ``Parallel`` call; returns ``n_jobs``."""
            n_jobs = self.effective_n_jobs(n_jobs)
            if n_jobs == 1:  # as joblib's own backends: one job runs in this process
                raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
            options = dict(self._options)
            extra = {k: v for k, v in backend_kwargs.items() if k not in _JOBLIB_KEYWORDS}
            _check_options(extra)
            options.update(extra)
            self.parallel = parallel
            with self._lock:
                self._wanted = (n_jobs, options)
                self._aborted = False
                self._ensure_executor()
            return n_jobs

        def compute_batch_size(self):
            """Tasks per batch (``Parallel(batch_size="auto")``), from what the kernels measured:
            see :func:`batch_size_for`."""
            return self._stats.batch_size()

        def batch_completed(self, batch_size, duration):
            """Unused: joblib's duration counts the time a batch waited; the kernels' own is used."""

        def reset_batch_stats(self):
            super().reset_batch_stats()
            self._stats.new_call()

        def start_call(self):
            self._stats.new_call()
            # Read by joblib right after this: more batches in flight (see PRE_DISPATCH).
            parallel = self.parallel
            if getattr(parallel, "pre_dispatch", None) == _JOBLIB_PRE_DISPATCH:
                parallel.pre_dispatch = PRE_DISPATCH
                self._pre_dispatch_of = parallel
            with self._lock:
                self._aborted = False
                self._ensure_executor()  # after an abort, in the caller's thread
                self._calls += 1

        def stop_call(self):
            parallel, self._pre_dispatch_of = self._pre_dispatch_of, None
            if parallel is not None and parallel.pre_dispatch == PRE_DISPATCH:
                parallel.pre_dispatch = _JOBLIB_PRE_DISPATCH  # the Parallel object as the caller made it
            with self._lock:
                self._calls = max(0, self._calls - 1)

        def submit(self, func, callback=None):
            """Run one batch of tasks in a kernel; returns its :class:`dlexec.TaskFuture`."""
            from .futures import TaskFuture

            with self._lock:
                executor = None if self._aborted else self._ensure_executor()
            if executor is None:  # a dispatch racing an abort: the result is not wanted
                future = TaskFuture()
                future.cancel()
            else:
                try:
                    future = submit_batch(executor, func)
                except Exception as exc:  # noqa: BLE001 - shut down or broken: report it through joblib
                    future = TaskFuture()
                    if self._aborted:
                        future.cancel()
                    else:
                        future.set_running_or_notify_cancel()
                        future.set_exception(exc)
            # Before joblib's callback, which dispatches the next batch with a size from these figures.
            future.add_done_callback(functools.partial(self._stats.record, tasks=batch_length(func)))
            if callback is not None:
                future.add_done_callback(_done_callback(callback))
            return future

        def retrieve_result_callback(self, future):
            """The batch's results, or its exception raised."""
            result = future.result()
            return result[0] if getattr(future, "_dlexec_timed", False) else result

        def terminate(self):
            """End of a ``Parallel`` call: keep the kernels if its ``parallel_config`` block goes on."""
            self.reset_batch_stats()
            with self._lock:
                keep = self._in_block or self._calls > 0
            if not keep:
                self.close()

        def abort_everything(self, ensure_ready=True):
            """Cancel the pending tasks and stop the kernels at once; a fresh executor (and
            fresh kernels) serves the next call if ``ensure_ready``."""
            with self._lock:
                executor, self._executor, self._executor_key = self._executor, None, None
                self._aborted = True
            if executor is not None:
                _stop_now(executor)
            # ensure_ready: start_call, configure or submit makes the new executor (kernels are lazy)

        def get_nested_backend(self):
            """``Parallel`` inside a task runs sequentially in the task's kernel."""
            return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

        # -- dlexec ----------------------------------------------------------------------

        @property
        def executor(self):
            """The current :class:`dlexec.DatalayerExecutor`, or None when no kernel is kept."""
            return self._executor

        def close(self) -> None:
            """Stop the kernels now (after the tasks submitted so far). The backend stays
            usable: a later call starts new kernels."""
            with self._lock:
                executor, self._executor, self._executor_key = self._executor, None, None
            if executor is not None:
                executor.shutdown(wait=True)

        def _config_block_ended(self) -> None:
            with self._lock:
                self._in_block = False
                busy = self._calls > 0
            if not busy:  # else the running call's terminate() closes it
                self.close()

        def _ensure_executor(self):
            """The executor for the last configure (lock held), made if there is none that fits."""
            if self._wanted is None:
                raise RuntimeError("the datalayer joblib backend was not configured")
            n_jobs, options = self._wanted
            executor = self._executor
            if executor is not None:
                pool = getattr(executor, "_pool", None)
                usable = not (getattr(pool, "broken", None) or getattr(pool, "shutting_down", False))
                key = self._executor_key
                if usable and key[0] == n_jobs and _same_options(key[1], options):
                    return executor
                executor.shutdown(wait=False)  # other settings, or broken: finish and stop
            self._executor = self._new_executor(n_jobs, options)
            self._executor_key = (n_jobs, options)
            return self._executor

        def _new_executor(self, n_jobs: int, options: dict):
            from .executor import DatalayerExecutor
            from .runtimes import resolve_backend

            options = dict(options)
            runtime_backend = resolve_backend(options.pop("runtime_backend", None))
            if runtime_backend == "local":
                limits = self._prepare_worker_env(n_jobs)
                env = dict(os.environ) if options.get("env") is None else dict(options["env"])
                # the thread limits yield to the environment's own, unless asked for explicitly
                options["env"] = {**limits, **env} if self.inner_max_num_threads is None else {**env, **limits}
            elif self.inner_max_num_threads is not None:
                warnings.warn(
                    f"inner_max_num_threads is not applied to {runtime_backend!r} runtimes: set "
                    "OMP_NUM_THREADS and the like in the runtime's environment instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return DatalayerExecutor(max_workers=n_jobs, backend=runtime_backend, **options)

        def __repr__(self) -> str:
            settings = ", ".join(f"{k}={v!r}" for k, v in self._options.items() if v is not None)
            return f"DatalayerBackend({settings})"

    DatalayerBackend.__module__ = __name__
    DatalayerBackend.__qualname__ = "DatalayerBackend"
    return DatalayerBackend


def _check_options(options: dict) -> None:
    if "backend" in options:
        raise TypeError(
            "the datalayer joblib backend takes runtime_backend= ('local', 'jupyter' or 'datalayer') "
            "for where the kernels run: joblib's backend= names the joblib backend"
        )
    if "max_workers" in options:
        raise TypeError("the datalayer joblib backend takes n_jobs= for the number of kernels, not max_workers=")


def _attach_to_config_block(backend, parallel_config) -> bool:
    """If ``backend`` is being made by ``parallel_config(backend="datalayer", ...)``, close its
    kernels when that block ends: the block's ``unregister`` (called by ``__exit__``) is
    wrapped on that instance only. joblib has no hook for the end of a block, and its
    config holds the backend object for the whole block, so this is where reuse ends."""
    frame = sys._getframe(2)
    try:
        for _ in range(5):
            if frame is None:
                return False
            if frame.f_code.co_name == "_check_backend":
                owner = frame.f_locals.get("self")
                if isinstance(owner, parallel_config):
                    break
            frame = frame.f_back
        else:
            return False
    finally:
        del frame
    original = owner.unregister

    def unregister():
        try:
            original()
        finally:
            backend._config_block_ended()

    owner.unregister = unregister
    return True


def _done_callback(callback):
    """Wrap joblib's completion callback for a TaskFuture.

    * A cancelled future's callbacks run while the executor holds its lock; joblib's
      callback takes the ``Parallel``'s lock, which a thread dispatching a new batch may
      hold while it waits for the executor's: run it in a thread of its own.
    * joblib drops the traceback of the exception it retrieves (``e.__traceback__ = None``),
      which for a dlexec future holds the remote frames: put them back, under the
      ``Parallel``'s lock so that the caller cannot re-raise the exception before.
    """

    def done(future):
        if future.cancelled():
            _threads.start(threading.Thread(target=callback, args=(future,), name="dlexec-joblib-cancel", daemon=True))
            return
        exc = future.exception()
        if exc is None:
            callback(future)
            return
        remote_tb = exc.__traceback__
        lock = getattr(getattr(callback, "parallel", None), "_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            callback(future)
            if exc.__traceback__ is None and remote_tb is not None:
                exc.__traceback__ = remote_tb

    return done


__all__ = ["JOBLIB_BACKEND_NAME", "DatalayerBackend", "register_joblib"]  # noqa: F822 - DatalayerBackend: __getattr__
