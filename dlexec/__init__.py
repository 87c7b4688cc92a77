"""dlexec: run ``concurrent.futures`` code on Jupyter kernels, local or remote.

``DatalayerExecutor`` is a drop-in ``ProcessPoolExecutor`` whose workers are kernels;
``RuntimeService`` drives one runtime directly (the Datalayer runtime API). Backends:
local kernels (the default), any Jupyter Server, Datalayer runtimes.

``import dlexec`` imports nothing else: each name below is imported from its module on
first use (PEP 562), so a program pays only for what it uses. The ``"datalayer"`` joblib
backend is registered as soon as joblib is imported, before or after dlexec
(:mod:`dlexec._joblib_hook`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "AuthenticationError": "errors",
    "BrokenProcessPool": "errors",
    "CapacityError": "errors",
    "DatalayerError": "errors",
    "ExecutionError": "errors",
    "InitializerFailed": "errors",
    "NotFoundError": "errors",
    "RemoteError": "errors",
    "RuntimeStartError": "errors",
    "TerminatedBySignal": "errors",
    "UnknownNameError": "errors",
    "WorkerLostError": "errors",
    "DatalayerClient": "datalayer",
    "DatalayerExecutor": "executor",
    "TaskFuture": "futures",
    "progress": "_progress",
    "register_joblib": "joblib_backend",
    "get_reusable_executor": "reusable",
    "Shared": "serialization",
    "ExecutionResponse": "service",
    "RuntimeService": "service",
    "Runtime": "runtimes.base",
    "RuntimeSnapshotModel": "snapshots",
    "ExecutorStats": "stats",
    "RuntimeStats": "stats",
}

#: Submodules reachable as attributes (``dlexec.runtimes``...) before anything imported them.
_SUBMODULES = frozenset({
    "bootstrap", "callables", "channel", "cli", "datalayer", "errors", "execution", "executor", "futures",
    "joblib_backend", "joblib_batches", "kernel", "models", "modules", "pool", "reusable", "runtimes", "secrets",
    "serialization", "service", "session", "snapshots", "spec", "stats", "tracebacks", "urls", "view",
})


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


from . import _joblib_hook  # noqa: E402 - after __getattr__: the hook may run at once (joblib already imported)

_joblib_hook.install()

__all__ = [
    "AuthenticationError",
    "BrokenProcessPool",
    "CapacityError",
    "DatalayerClient",
    "DatalayerError",
    "DatalayerExecutor",
    "ExecutionError",
    "ExecutionResponse",
    "ExecutorStats",
    "InitializerFailed",
    "NotFoundError",
    "RemoteError",
    "Runtime",
    "RuntimeService",
    "RuntimeSnapshotModel",
    "RuntimeStartError",
    "RuntimeStats",
    "Shared",
    "TaskFuture",
    "TerminatedBySignal",
    "UnknownNameError",
    "WorkerLostError",
    "get_reusable_executor",
    "progress",
    "register_joblib",
]
