"""No kernel outlives the program that started it, however that program ends.

Each test runs a script in a fresh interpreter that prints its kernels' pids, ends it
one way or another, and checks that every one of those kernels is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ..conftest import ROOT, kernel_pids, run_script, wait_gone

pytestmark = pytest.mark.timeout(120)

PRELUDE = """
import faulthandler, os, signal, sys, time
from dlexec import DatalayerExecutor

def _dump_pools(signum, frame):  # kill -USR1: the pools' state, for a test that hangs
    from dlexec.pool.pool import live_pools
    for pool in list(live_pools):
        sys.stderr.write(pool.debug_state() + chr(10))

signal.signal(signal.SIGUSR1, _dump_pools)
faulthandler.register(signal.SIGUSR2, all_threads=True)  # kill -USR2: every thread's stack

def pid():
    time.sleep(0.3)
    return os.getpid()

def show(ex):
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < ex.max_workers and time.monotonic() < deadline:  # until every kernel is up
        pids |= {f.result() for f in [ex.submit(pid) for _ in range(2 * ex.max_workers)]}
    for p in sorted(pids):
        print("PID", p, flush=True)
"""


def test_exit_without_shutdown_finishes_pending_work_then_stops_kernels(tmp_path):
    result = run_script(
        PRELUDE
        + """
def mark(path, i):
    time.sleep(0.3)
    open(os.path.join(path, f"done-{i}"), "w").close()

ex = DatalayerExecutor(2)
show(ex)
futures = [ex.submit(mark, os.getcwd(), i) for i in range(6)]
print("EXITING", flush=True)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    pids = kernel_pids(result.stdout)
    assert len(pids) == 2
    assert sorted(p.name for p in tmp_path.glob("done-*")) == [f"done-{i}" for i in range(6)]
    assert wait_gone(pids, timeout=5) == []


def test_uncaught_exception_in_with_block_stops_kernels(tmp_path):
    result = run_script(
        PRELUDE
        + """
with DatalayerExecutor(2) as ex:
    show(ex)
    raise RuntimeError("the user's bug")
""",
        tmp_path,
    )
    assert result.returncode == 1 and "the user's bug" in result.stderr
    pids = kernel_pids(result.stdout)
    assert pids and wait_gone(pids, timeout=5) == []


def test_garbage_collected_executor_stops_kernels(tmp_path):
    # The script keeps running afterwards: the kernels must go with the executor, not with it.
    process = _start(PRELUDE + """
import gc
from tests.conftest import wait_gone
ex = DatalayerExecutor(2)
show(ex)
pids = [w.session.runtime.pid for w in ex._pool.workers]
del ex
gc.collect()
print("GONE" if wait_gone(pids, timeout=10) == [] else "ALIVE", flush=True)
time.sleep(60)
""", tmp_path)
    try:
        assert _read_until(process, ("GONE", "ALIVE"))[-1] == "GONE"
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_kernels_go_away_when_the_client_is_killed(tmp_path, signum):
    process = _start(PRELUDE + """
ex = DatalayerExecutor(2)
show(ex)
print("READY", flush=True)
time.sleep(120)
""", tmp_path)
    try:
        lines = _read_until(process, ("READY",))
        pids = kernel_pids("\n".join(lines))
        assert len(pids) == 2
        process.send_signal(signum)
        process.wait(timeout=30)
    finally:
        process.kill()
    # the kernels notice that their parent is gone (jupyter-client's JPY_PARENT_PID)
    assert wait_gone(pids, timeout=15) == []


def test_ctrl_c_while_waiting_stops_remote_work_and_kernels(tmp_path):
    process = _start(PRELUDE + """
with DatalayerExecutor(2) as ex:
    show(ex)
    futures = [ex.submit(time.sleep, 60) for _ in range(4)]
    print("WAITING", flush=True)
    futures[0].result()
""", tmp_path)
    try:
        lines = _read_until(process, ("WAITING",))
        pids = kernel_pids("\n".join(lines))
        assert len(pids) == 2
        process.send_signal(signal.SIGINT)
        err = exited(process, 30)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in err
    assert wait_gone(pids, timeout=5) == []


def test_ctrl_c_interrupts_result_when_another_thread_received_it(tmp_path):
    # Linux gives a process's SIGINT to any thread that does not block it, and Python acts on it
    # only in the main thread, once that wakes. The main thread blocks SIGINT here, so that the
    # user's thread is the one that gets it (as happened at random to dlexec's own threads, which
    # now block it): result() still raises KeyboardInterrupt, not after the 60 s task.
    process = _start(PRELUDE + """
import signal, threading
with DatalayerExecutor(1) as ex:
    show(ex)
    future = ex.submit(time.sleep, 60)
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    print("WAITING", flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    future.result()
""", tmp_path)
    try:
        lines = _read_until(process, ("WAITING",))
        pids = kernel_pids("\n".join(lines))
        err = exited(process, 30)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in err
    assert wait_gone(pids, timeout=5) == []


def test_dlexec_threads_leave_signals_to_the_main_thread():
    import signal
    import threading

    from dlexec import _threads

    masks = []
    thread = _threads.spawn(lambda: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, ())))
    thread.join(10)
    assert {signal.SIGINT, signal.SIGTERM} <= masks[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the caller's mask is restored
    assert threading.current_thread() is threading.main_thread()


def test_kernels_get_sigint_and_sigterm_though_dlexec_threads_block_them():
    # A process inherits the signal mask of the thread that starts it: a kernel started from a
    # dlexec thread must not inherit SIGINT blocked (its interrupt) nor SIGTERM (its shutdown).
    import signal

    from dlexec import DatalayerExecutor

    with DatalayerExecutor(1, max_tasks_per_child=1) as ex:
        for _ in range(2):  # the second task runs in the kernel that replaced the first
            masked = ex.submit(signal.pthread_sigmask, signal.SIG_BLOCK, ()).result()
            assert not {signal.SIGINT, signal.SIGTERM} & masked


def _start(code: str, tmp_path) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)


def exited(process: subprocess.Popen, timeout: float) -> str:
    """The stderr of a script started with PRELUDE once it has exited; if it does not within
    ``timeout``, the test fails with its pools' state and every thread's stack."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1)
        process.send_signal(signal.SIGUSR2)
        time.sleep(1)
        process.kill()
        err = process.communicate()[1]
        pytest.fail(f"the script did not exit within {timeout:g} s; its stderr:\n{err[-6000:]}")


def _read_until(process: subprocess.Popen, markers: tuple[str, ...], timeout: float = 60) -> list[str]:
    import threading

    lines: list[str] = []
    done = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() in markers:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout) or not lines or lines[-1] not in markers:
        process.kill()
        raise AssertionError(f"the script did not get to {markers}: {lines}\n{process.stderr.read()}")
    return lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_killing_the_client_deletes_its_kernels_on_a_jupyter_server(jupyter_server, tmp_path, signum, monkeypatch):
    monkeypatch.setenv("DLEXEC_BACKEND", "jupyter")
    monkeypatch.setenv("DLEXEC_JUPYTER_URL", jupyter_server.url)
    monkeypatch.setenv("DLEXEC_JUPYTER_TOKEN", jupyter_server.token)
    before = {k["id"] for k in jupyter_server.kernels()}  # other tests' kernels may still be going
    process = _start(PRELUDE + """
ex = DatalayerExecutor(2)
show(ex)
futures = [ex.submit(time.sleep, 60) for _ in range(2)]
print("READY", flush=True)
time.sleep(120)
""", tmp_path)
    try:
        _read_until(process, ("READY",))
        ours = {k["id"] for k in jupyter_server.kernels()} - before
        assert len(ours) == 2
        process.send_signal(signum)
        err = exited(process, 60)
    finally:
        process.kill()
    assert ours & {k["id"] for k in jupyter_server.kernels()} == set(), err


def test_a_stopped_kernel_leaves_no_sockets_or_files_open(tmp_path):
    # Left to the garbage collector, a kernel manager's ZeroMQ context can block forever in
    # zmq_ctx_term (it did at interpreter exit in CI); so everything is closed when stopped.
    result = run_script(
        """
        import gc, os, time
        from dlexec.runtimes.local import LocalRuntime

        def start_and_stop():
            runtime = LocalRuntime("fds")
            runtime.start()
            runtime.terminate()

        start_and_stop()  # the first one creates what is shared (the ZeroMQ context)
        gc.disable()  # nothing is closed by collecting reference cycles
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            start_and_stop()
        # ZeroMQ releases a closed socket's descriptors in its own thread, a moment later
        # (longer on a loaded machine): wait for that, within bounds.
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < deadline:
            time.sleep(0.1)
        print("LEAKED", len(os.listdir("/proc/self/fd")) - before)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "LEAKED 0" in result.stdout, result.stdout
