"""dlexec: run ``concurrent.futures`` code on Jupyter kernels, local or remote.

``DatalayerExecutor`` is a drop-in ``ProcessPoolExecutor`` whose workers are kernels;
``RuntimeService`` drives one runtime directly (the Datalayer runtime API). Backends:
local kernels (the default), any Jupyter Server, Datalayer runtimes.
"""

from concurrent.futures.process import BrokenProcessPool

from .errors import (
    AuthenticationError,
    CapacityError,
    DatalayerError,
    ExecutionError,
    InitializerFailed,
    RemoteError,
    RuntimeStartError,
    WorkerLostError,
)
from .executor import DatalayerExecutor
from .futures import TaskFuture
from .service import ExecutionResponse, RuntimeService
from .snapshots import RuntimeSnapshotModel

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BrokenProcessPool",
    "CapacityError",
    "DatalayerError",
    "DatalayerExecutor",
    "ExecutionError",
    "ExecutionResponse",
    "InitializerFailed",
    "RemoteError",
    "RuntimeService",
    "RuntimeSnapshotModel",
    "RuntimeStartError",
    "TaskFuture",
    "WorkerLostError",
]
