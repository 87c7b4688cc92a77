"""``get_reusable_executor``: one warm executor per program, as loky's.

A notebook or a script that maps in a loop gets the same executor, and so the same
running kernels, at every call: the first result comes in milliseconds rather than the
second a kernel takes to start. Runtimes idle for ``timeout`` seconds are stopped, and
started again when work comes back.
"""

from __future__ import annotations

import threading
from typing import Any

from .executor import DatalayerExecutor
from .runtimes import resolve_backend

_lock = threading.Lock()
_executor: DatalayerExecutor | None = None
_arguments: dict | None = None


def get_reusable_executor(max_workers: int | None = None, *, timeout: float | None = 300,
                          kill_workers: bool = False, reuse: bool | str = "auto",
                          **executor_options: Any) -> DatalayerExecutor:
    """The program's reusable :class:`DatalayerExecutor`, started on first use.

    Called again with the same arguments, it returns the same executor, unless that one
    was shut down or broke. With other arguments (or ``reuse=False``) the previous
    executor is shut down (waiting for its work, or at once with ``kill_workers=True``)
    and a new one is made; a change of ``max_workers`` alone resizes it instead.
    ``timeout``: seconds after which an idle runtime is stopped (None: never).
    ``executor_options`` are :class:`DatalayerExecutor`'s.
    """
    global _executor, _arguments
    if max_workers is None:
        from loky import cpu_count

        max_workers = cpu_count()
    elif max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    if reuse not in (True, False, "auto"):
        raise ValueError(f"reuse must be True, False or 'auto', not {reuse!r}")
    arguments = {"timeout": timeout, "backend": resolve_backend(executor_options.pop("backend", None)),
                 **executor_options}
    with _lock:
        executor = _executor
        usable = executor is not None and not executor._pool.broken and not executor._pool.shutting_down
        if usable and reuse and _same(arguments, _arguments):
            if executor.max_workers != max_workers:
                executor._resize(max_workers)
            return executor
        if executor is not None:
            if kill_workers:
                executor.kill_workers()
            else:
                executor.shutdown(wait=True)
        options = dict(arguments)
        _executor = DatalayerExecutor(max_workers, idle_timeout=options.pop("timeout"), **options)
        _arguments = arguments
        return _executor


def _same(a: dict, b: dict | None) -> bool:
    try:
        return b is not None and a == b
    except Exception:  # noqa: BLE001 - options that cannot be compared are not the same
        return False
