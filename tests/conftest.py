"""Fixtures: real local kernels, started few and shared, and process checks for leak tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dlexec

ROOT = Path(__file__).resolve().parent.parent

# A command started in the background by a non-interactive shell (`cmd &` in a script, as CI
# and scripts do) inherits SIGINT ignored, and so would every script the tests start and then
# interrupt: Python installs its KeyboardInterrupt handler only where SIGINT is not ignored.
# Give the tests' processes what a terminal gives them (the process exits on SIGINT as before).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _dump_pools(signum, frame):
    """``kill -USR1 <pytest pid>``: the state of every live pool, on stderr (for a hang)."""
    from dlexec.pool.pool import live_pools

    for pool in list(live_pools):
        sys.stderr.write(pool.debug_state() + "\n")
    sys.stderr.flush()


signal.signal(signal.SIGUSR1, _dump_pools)
EXIT_DEADLINE = 300  # seconds the test process may take to exit after the last test


def pytest_sessionfinish(session, exitstatus):
    """A process that does not exit after its tests is a bug (an unjoined thread, a blocked
    finalizer): dump every thread's stack and fail, rather than hang until CI's deadline."""
    import faulthandler

    faulthandler.dump_traceback_later(EXIT_DEADLINE, exit=True)


@pytest.fixture(scope="module")
def executor():
    """One two-kernel executor shared by a test module (kernels are costly to start).

    It uses the backend that ``$DLEXEC_BACKEND`` selects (see ``backend`` in test modules
    that run on several).
    """
    with dlexec.DatalayerExecutor(max_workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def runtime():
    """One RuntimeService shared by a test module."""
    with dlexec.RuntimeService("test-runtime") as rt:
        yield rt


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def wait_gone(pids, timeout: float = 10.0) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive:
            time.sleep(0.1)
    return alive


def run_script(code: str, tmp_path: Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` as a script in a fresh interpreter, with dlexec importable."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path, **kwargs)


def kernel_pids(text: str) -> list[int]:
    """Pids printed by a script as lines ``PID <n>``."""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("PID ")]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterServer:
    """A real ``jupyter server`` on 127.0.0.1 with a token, in its own process group."""

    def __init__(self, root: Path, token: str = "dlexec-test-token"):
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> JupyterServer:
        import requests

        command = [
            sys.executable, "-m", "jupyter_server",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            "--ServerApp.allow_root=True",
            f"--IdentityProvider.token={self.token}", "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.tornado_settings={'websocket_max_message_size': 1073741824}",
        ]
        self.log = open(self.root / "jupyter-server.log", "wb")  # noqa: SIM115
        # The server's kernels do not get this checkout on their path: the user's modules
        # (the tests) must reach them the way they reach a remote runtime.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DLEXEC_", "PYTHONPATH"))}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {(self.root / 'jupyter-server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/api/status", headers=self.headers, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("jupyter server did not start")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def kernels(self) -> list[dict]:
        import requests

        return requests.get(f"{self.url}/api/kernels", headers=self.headers, timeout=10).json()

    def stop(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its kernels
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory):
    """One Jupyter Server for the whole session (kernels are started and deleted per test)."""
    server = JupyterServer(tmp_path_factory.mktemp("jupyter-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["local", "jupyter"])
def backend(request, tmp_path_factory):
    """Run a test module once per backend, selected the way users do: environment variables."""
    patch = pytest.MonkeyPatch()
    if request.param == "jupyter":
        server = request.getfixturevalue("jupyter_server")
        patch.setenv("DLEXEC_BACKEND", "jupyter")
        patch.setenv("DLEXEC_JUPYTER_URL", server.url)
        patch.setenv("DLEXEC_JUPYTER_TOKEN", server.token)
    else:
        patch.delenv("DLEXEC_BACKEND", raising=False)
    yield request.param
    patch.undo()
    if request.param == "jupyter":  # the module's executors deleted every kernel they started
        deadline = time.monotonic() + 15
        while server.kernels() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.kernels() == [], "kernels left on the Jupyter Server"


@pytest.fixture(scope="module")
def standin():
    """A local stand-in of the Datalayer API (its runtimes are real Jupyter Servers), per module."""
    from .datalayer_standin import DatalayerStandIn

    with DatalayerStandIn(token="secret-token") as dl:
        yield dl
        assert dl.live_runtimes() == [], "a test left a runtime running"
