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
from .joblib_backend import register_joblib
from .progress import progress
from .reusable import get_reusable_executor
from .serialization import Shared
from .service import ExecutionResponse, RuntimeService
from .snapshots import RuntimeSnapshotModel
from .stats import ExecutorStats, RuntimeStats

__version__ = "0.1.0"

# The "datalayer" joblib backend is there as soon as dlexec is imported, if joblib is installed.
try:
    register_joblib()
except ImportError:
    pass

__all__ = [
    "AuthenticationError",
    "BrokenProcessPool",
    "CapacityError",
    "DatalayerError",
    "DatalayerExecutor",
    "ExecutionError",
    "ExecutionResponse",
    "ExecutorStats",
    "InitializerFailed",
    "RemoteError",
    "RuntimeService",
    "RuntimeStats",
    "RuntimeSnapshotModel",
    "RuntimeStartError",
    "Shared",
    "TaskFuture",
    "WorkerLostError",
    "get_reusable_executor",
    "progress",
    "register_joblib",
]
