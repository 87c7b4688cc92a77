"""The fast paths of a cold start: what ``import dlexec`` imports, the joblib backend registered
without importing joblib, and local kernels that install the worker as they start.

No timing is asserted: these tests check that the fast paths behave as the slow ones did.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

import dlexec
from dlexec import DatalayerExecutor, RuntimeStartError, WorkerLostError
from dlexec.runtimes.local import LocalRuntime

from ..conftest import run_script, wait_gone

pytestmark = pytest.mark.timeout(90)

#: What ``import dlexec`` must not import (they cost from 10 ms to 0.1 s each).
HEAVY = ("joblib", "numpy", "requests", "urllib3", "jupyter_client", "zmq", "tqdm", "nbformat", "IPython", "dill",
         "tblib", "websockets", "loky", "platformdirs", "keyring", "asyncio")


def _run(code: str, tmp_path, **kwargs):
    result = run_script(textwrap.dedent(code), tmp_path, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- import dlexec ------------------------------------------------------------------------------


def test_import_dlexec_imports_nothing_heavy(tmp_path):
    out = _run(f"""
        import sys
        import dlexec
        print(sorted(name for name in {HEAVY!r} if name in sys.modules))
        print(sorted(name for name in sys.modules if name.startswith("dlexec.")))
        """, tmp_path)
    heavy, submodules = out.splitlines()
    assert heavy == "[]"
    assert submodules == "['dlexec._joblib_hook']"


def test_public_names_resolve_on_first_use(tmp_path):
    out = _run("""
        import dlexec, concurrent.futures.process
        for name in dlexec.__all__:
            assert getattr(dlexec, name) is not None, name
            assert name in dir(dlexec), name
        assert dlexec.BrokenProcessPool is concurrent.futures.process.BrokenProcessPool
        assert issubclass(dlexec.WorkerLostError, dlexec.BrokenProcessPool)
        assert "BROKEN" not in dir(dlexec)
        try:
            dlexec.no_such_name
        except AttributeError as exc:
            print("AttributeError:", exc)
        import dlexec._progress  # the submodule: the package's name stays the function
        assert callable(dlexec.progress) and not isinstance(dlexec.progress, type(dlexec))
        assert dlexec.runtimes.BACKENDS == ("local", "jupyter", "datalayer")  # a submodule on first use
        from dlexec import DatalayerExecutor, RuntimeService, Shared, TaskFuture  # noqa: F401
        """, tmp_path)
    assert "AttributeError: module 'dlexec' has no attribute 'no_such_name'" in out


def test_a_local_runtime_service_does_not_import_the_rest_client(tmp_path):
    out = _run("""
        import sys
        import dlexec
        service = dlexec.RuntimeService("probe")  # built, not started
        print(service.urls.run_url, service.model.run_url)
        print([name for name in ("requests", "urllib3", "dlexec.datalayer") if name in sys.modules])
        """, tmp_path)
    urls, imported = out.splitlines()
    assert urls == "https://prod1.datalayer.run https://prod1.datalayer.run"
    assert imported == "[]"


# -- the joblib backend, registered when joblib is imported -----------------------------------


@pytest.mark.parametrize("order", ["dlexec first", "joblib first"])
def test_joblib_finds_the_backend_whichever_is_imported_first(tmp_path, order):
    imports = "import dlexec\nimport joblib" if order == "dlexec first" else "import joblib\nimport dlexec"
    out = _run(f"""
        import sys
        {imports.splitlines()[0]}
        {imports.splitlines()[1]}
        from joblib import Parallel, parallel_backend, parallel_config
        from joblib.parallel import BACKENDS, get_active_backend
        from dlexec.joblib_backend import DatalayerBackend
        assert BACKENDS["datalayer"] is DatalayerBackend
        with parallel_config(backend="datalayer", n_jobs=2, runtime_backend="local"):
            assert type(get_active_backend()[0]) is DatalayerBackend
        with parallel_backend("datalayer", n_jobs=2):
            assert type(get_active_backend()[0]) is DatalayerBackend
        assert type(Parallel(backend="datalayer", n_jobs=2)._backend) is DatalayerBackend
        # the hook is gone and joblib.parallel keeps its own loader
        assert not [f for f in sys.meta_path if type(f).__module__ == "dlexec._joblib_hook"]
        import joblib.parallel
        assert type(joblib.parallel.__loader__).__module__ != "dlexec._joblib_hook"
        assert joblib.parallel.__spec__.loader is joblib.parallel.__loader__
        print("ok")
        """, tmp_path)
    assert out.strip() == "ok"


def test_joblib_imports_even_if_the_registration_fails(tmp_path):
    out = _run("""
        import dlexec, dlexec.joblib_backend as jb
        def broken():
            raise RuntimeError("registration failed")
        jb.register_joblib = broken
        import joblib
        print("imported", "datalayer" in joblib.parallel.BACKENDS)
        """, tmp_path)
    assert out.strip() == "imported False"


# -- local kernels: the worker installed as the kernel starts ----------------------------------


def answer():
    return 42


def kernel_facts():
    import sys

    here = os.path.dirname(os.path.abspath(dlexec.runtimes.local.__file__))
    import debugpy  # the launcher hides it from ipykernel only: tasks can import it

    return {"debugpy": debugpy.__name__, "runtimes_dir_on_path": any(os.path.abspath(p) == here for p in sys.path if p),
            "argv0": os.path.basename(sys.argv[0]) if sys.argv else None, "pid": os.getpid()}


def test_the_default_kernel_answers_with_the_worker_installed_at_start():
    with DatalayerExecutor(1) as ex:
        future = ex.submit(answer)
        assert future.result(timeout=60) == 42
        assert future.run_seconds is not None and 0 <= future.run_seconds < future.finished_at - future.started_at
        session = ex._pool.workers[0].session
        info = session.info
        assert info["status"] == "ok" and info["python"] == list(sys.version_info[:3]) and info["dill"]
        assert session.installed_at_start
        facts = ex.submit(kernel_facts).result(timeout=30)
    assert facts["debugpy"] == "debugpy" and not facts["runtimes_dir_on_path"]


def test_a_named_kernel_spec_installs_the_worker_by_a_request():
    for runtime, at_start in ((LocalRuntime("named", kernel_name="python3"), False),
                              (LocalRuntime("own", extra_arguments=["--IPKernelApp.exec_files=mine.py"]), False),
                              (LocalRuntime("default"), True)):
        assert runtime.run_at_start(lambda: "") is at_start
        runtime.terminate()  # never started: frees its wake-up pipe
    with DatalayerExecutor(1, kernel_name="python3") as ex:
        assert ex.submit(answer).result(timeout=60) == 42
        assert not ex._pool.workers[0].session.installed_at_start


def test_a_kernel_that_cannot_install_the_worker_says_why_at_once(tmp_path):
    """dill that cannot be imported in the kernel: the first request is answered with the error."""
    (tmp_path / "dill.py").write_text("raise ImportError('this dill is broken on purpose')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    with DatalayerExecutor(1, env=env, start_timeout=60) as ex:
        future = ex.submit(answer)
        with pytest.raises(WorkerLostError) as info:
            future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeStartError)
    assert "could not install the dlexec worker" in str(cause)
    assert "ImportError: this dill is broken on purpose" in str(cause)
    assert "did not answer" not in str(cause)


def test_the_version_check_still_refuses_a_kernel(monkeypatch):
    import dlexec.session

    seen = []

    def refuse(info, runtime_id):
        seen.append(info)
        raise RuntimeStartError(f"runtime {runtime_id} runs Python 2.7 (a test)")

    monkeypatch.setattr(dlexec.session, "check_versions", refuse)
    with DatalayerExecutor(1) as ex:
        with pytest.raises(WorkerLostError, match="runs Python 2.7"):
            ex.submit(answer).result(timeout=60)
    assert seen and seen[0]["python"] == list(sys.version_info[:3])
    assert not wait_gone([seen[0]["pid"]])  # the refused kernel is stopped


def stubborn_busy(seconds):
    """Ignores SIGINT: an interrupt cannot stop it, its kernel is restarted."""
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end = time.time() + seconds
    while time.time() < end:
        pass


def where():
    return os.getpid(), os.getcwd()


def test_a_restarted_kernel_gets_the_worker_again_from_its_startup_file(tmp_path, monkeypatch):
    """The restarted kernel installs the worker from its startup file, with the settings as
    they are at the restart (here, the client's new working directory)."""
    import time
    from concurrent.futures import CancelledError

    with DatalayerExecutor(1, interrupt_grace=0.5) as ex:
        first_pid, _ = ex.submit(where).result(timeout=60)
        (tmp_path / "later").mkdir()
        monkeypatch.chdir(tmp_path / "later")
        deaf = ex.submit(stubborn_busy, 60)
        deadline = time.monotonic() + 30
        while not deaf.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # it runs in the kernel, SIGINT ignored
        deaf.interrupt()
        with pytest.raises(CancelledError):
            deaf.result(timeout=60)
        second_pid, cwd = ex.submit(where).result(timeout=60)
        assert ex._pool.workers[0].session.installed_at_start
    assert second_pid != first_pid and os.path.basename(cwd) == "later"
    assert not wait_gone([first_pid, second_pid])
