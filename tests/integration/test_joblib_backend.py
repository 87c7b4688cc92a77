"""The "datalayer" joblib backend on real local kernels.

Kernels are costly to start, so most tests share one ``parallel_config(backend="datalayer",
n_jobs=2)`` block (the ``block`` fixture), as a program would: the tests that stop its
kernels (timeout, error) come after the ones that reuse them, and the last test ends the
block. Every test also passes on its own.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import traceback

import pytest

joblib = pytest.importorskip("joblib")

from joblib import Parallel, delayed, parallel_config

from dlexec import TaskFuture
from dlexec.joblib_backend import JOBLIB_BACKEND_NAME, register_joblib

from ..conftest import ROOT, wait_gone

pytestmark = pytest.mark.timeout(60)

DatalayerBackend = register_joblib()
MARK = "set-by-the-initializer"


# -- what the tasks run (imported by reference in the kernels) ------------------------------


def mark_kernel(value):
    os.environ["DLEXEC_JOBLIB_TEST_MARK"] = value


def read_mark():
    return os.environ.get("DLEXEC_JOBLIB_TEST_MARK")


def thread_limits():
    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")


def square(x):
    return x * x


def slow_pid(delay=0.3):
    time.sleep(delay)
    return os.getpid()


def sleep_then(delay, value):
    time.sleep(delay)
    return value


def fail_after(delay):
    time.sleep(delay)
    raise KeyError(f"failed after {delay} s")


def nested(n):
    """A Parallel call inside a task: which backend runs it, and in which process."""
    from joblib.parallel import get_active_backend

    inner_backend = type(get_active_backend()[0]).__name__
    pids = Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(n))
    squares = Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))
    return os.getpid(), inner_backend, set(pids), squares


# -- helpers --------------------------------------------------------------------------------


def kernel_pids(parallel=None, n_jobs=2) -> set[int]:
    """The pids of the kernels serving ``parallel`` (or a new ``Parallel()``): both of them."""
    pids: set[int] = set()
    deadline = time.monotonic() + 45
    while len(pids) < n_jobs and time.monotonic() < deadline:
        call = parallel if parallel is not None else Parallel()
        pids |= set(call(delayed(slow_pid)() for _ in range(2 * n_jobs)))
    assert len(pids) == n_jobs and os.getpid() not in pids
    return pids


class Block:
    """An open ``parallel_config(backend="datalayer", ...)`` block that a test can end."""

    def __init__(self, **options):
        self.config = parallel_config(backend=JOBLIB_BACKEND_NAME, **options)  # active from here
        self.backend = self.config.parallel_config["backend"]
        self.open = True

    def close(self):
        if self.open:
            self.open = False
            self.config.__exit__(None, None, None)


@pytest.fixture(scope="module")
def block():
    """One block for the module, with executor options passed through parallel_config."""
    block = Block(n_jobs=2, runtime_backend="local", initializer=mark_kernel, initargs=(MARK,),
                  inner_max_num_threads=2)
    yield block
    block.close()


# -- no kernels -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_import_without_joblib_and_registration():
    code = (
        "import sys\n"
        "sys.modules['joblib'] = None\n"  # as if joblib were not installed
        "import dlexec, dlexec.joblib_backend as jb\n"
        "try:\n    jb.register_joblib()\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr  # dlexec imports without joblib
    assert "ImportError: the 'datalayer' joblib backend needs joblib" in result.stdout
    # with joblib installed, importing dlexec is enough
    registered = subprocess.run(
        [sys.executable, "-c", "import dlexec, joblib; print('datalayer' in joblib.parallel.BACKENDS)"],
        capture_output=True, text=True, env=env, timeout=30, check=False)
    assert registered.stdout.strip() == "True", registered.stderr

    assert register_joblib() is DatalayerBackend  # idempotent
    assert joblib.parallel.BACKENDS["datalayer"] is DatalayerBackend


@pytest.mark.timeout(30)
def test_options_and_n_jobs_without_kernels():
    with pytest.raises(TypeError, match="runtime_backend="):
        DatalayerBackend(backend="jupyter")
    with pytest.raises(TypeError, match="n_jobs="), parallel_config(backend="datalayer", max_workers=3):
        pass
    backend = DatalayerBackend()
    assert backend.effective_n_jobs(-1) == backend.effective_n_jobs(None) == joblib.cpu_count()
    assert backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)
    # n_jobs=1: joblib runs the tasks in this process, as with its own backends
    assert Parallel(n_jobs=1, backend="datalayer")(delayed(os.getpid)() for _ in range(2)) == [os.getpid()] * 2

    # runtime_backend= is DatalayerExecutor's backend=; the other options go to it as they are
    remote = DatalayerBackend(runtime_backend="jupyter", url="http://127.0.0.1:9", token="t", start_timeout=5)
    assert remote.configure(n_jobs=3, parallel=None, verbose=0, max_nbytes=None) == 3
    pool = remote.executor._pool
    assert (pool.backend, pool.max_workers, pool.start_timeout) == ("jupyter", 3, 5)
    assert pool.supervisor.runtime_factory.options == {"url": "http://127.0.0.1:9", "token": "t"}
    remote.terminate()  # not held by a parallel_config block: closed (no kernel was started)
    assert remote.executor is None


# -- one parallel_config block ---------------------------------------------------------------


def test_results_in_order_on_the_kernels(block):
    assert Parallel()(delayed(square)(i) for i in range(40)) == [i * i for i in range(40)]
    # results in submission order even when the first task finishes last
    assert Parallel()([delayed(sleep_then)(0.5, "slow"), delayed(sleep_then)(0, "fast")]) == ["slow", "fast"]
    # the initializer given to parallel_config ran in the kernels
    assert Parallel()(delayed(read_mark)() for _ in range(4)) == [MARK] * 4
    assert read_mark() is None
    # parallel_config(inner_max_num_threads=2) limits the kernels' native thread pools
    assert Parallel()(delayed(thread_limits)() for _ in range(2)) == [("2", "2")] * 2


def test_kernels_reused_by_consecutive_calls(block):
    first = kernel_pids()
    executor = block.backend.executor
    second = set(Parallel()(delayed(slow_pid)() for _ in range(4)))
    third = set(Parallel(n_jobs=2)(delayed(slow_pid)() for _ in range(4)))  # same n_jobs, explicit
    assert second <= first and third <= first
    assert block.backend.executor is executor


def test_generators(block):
    gen = Parallel(return_as="generator")(delayed(square)(i) for i in range(10))
    assert not isinstance(gen, list)
    assert list(gen) == [i * i for i in range(10)]

    kernel_pids()  # both kernels up, so that the two tasks run side by side
    tasks = [delayed(sleep_then)(1.5, "slow"), delayed(sleep_then)(0, "fast")]
    assert list(Parallel(return_as="generator")(tasks)) == ["slow", "fast"]
    assert list(Parallel(return_as="generator_unordered")(tasks)) == ["fast", "slow"]


def test_nested_parallel_runs_sequentially_in_the_kernel(block):
    results = Parallel()(delayed(nested)(n) for n in (3, 4))
    for n, (pid, inner_backend, inner_pids, squares) in zip((3, 4), results):
        assert pid != os.getpid()
        assert inner_backend == "SequentialBackend"
        assert inner_pids == {pid}  # no process started by the nested call
        assert squares == [i * i for i in range(n)]


def test_sklearn_grid_search(block):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = load_iris(return_X_y=True)

    def search():
        return GridSearchCV(LogisticRegression(max_iter=1000), {"C": [0.01, 0.1, 10.0]}, cv=3, n_jobs=2).fit(X, y)

    futures: list[TaskFuture] = []
    submit = block.backend.submit

    def spy(func, callback=None):
        future = submit(func, callback)
        futures.append(future)
        return future

    block.backend.submit = spy  # see that the fits went through the backend, to the kernels
    try:
        remote = search()
    finally:
        del block.backend.submit
    assert futures and all(f.runtime_id and f.exception() is None for f in futures)

    with parallel_config(backend="loky"):  # the default backend
        local = search()
    assert remote.best_params_ == local.best_params_
    assert list(remote.cv_results_["mean_test_score"]) == pytest.approx(list(local.cv_results_["mean_test_score"]))


def test_timeout_stops_the_kernels(block):
    pids = kernel_pids()
    start = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):  # joblib's TimeoutError
        Parallel(timeout=2)(delayed(time.sleep)(30) for _ in range(4))
    assert time.monotonic() - start < 15
    assert wait_gone(pids) == []
    assert block.backend.executor is None


def test_error_aborts_the_other_tasks(block):
    """The first error stops the kernels at once; the next call gets fresh ones (ensure_ready)."""
    with Parallel() as parallel:  # a managed Parallel: joblib asks for the backend to stay usable
        pids = kernel_pids(parallel)
        tasks = [delayed(fail_after)(0.5)] + [delayed(time.sleep)(30) for _ in range(6)]
        start = time.monotonic()
        with pytest.raises(KeyError, match="failed after 0.5 s") as info:
            parallel(tasks)
        assert time.monotonic() - start < 15  # not the 30 s of the sleeping tasks
        frames = traceback.extract_tb(info.value.__traceback__)
        assert frames[-1].name == "fail_after" and frames[-1].filename == __file__
        assert wait_gone(pids) == []  # the sleeping tasks' kernels are gone

        fresh = kernel_pids(parallel)
        assert not fresh & pids
    assert Parallel()(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_direct_parallel_stops_its_kernels_after_the_call():
    pids = set(Parallel(n_jobs=2, backend="datalayer")(delayed(slow_pid)() for _ in range(4)))
    assert pids and os.getpid() not in pids
    assert wait_gone(pids, timeout=5) == []


def test_block_end_stops_the_kernels(block):
    pids = kernel_pids()
    backend = block.backend
    block.close()
    assert joblib.parallel.get_active_backend()[0] is not backend
    assert backend.executor is None
    assert wait_gone(pids, timeout=5) == []
