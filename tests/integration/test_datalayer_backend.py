"""The Datalayer backend, against the local stand-in of the Datalayer API.

Every runtime the stand-in creates is a real Jupyter Server behind a reverse proxy (the
runtime's ``ingress``), so these tests run real kernels; the stand-in only replaces the
control plane, which cannot be reached from here.
"""

from __future__ import annotations

import os
import signal
import time
import warnings

import pytest

import dlexec
from dlexec import DatalayerExecutor, RuntimeService, RuntimeStartError, WorkerLostError
from dlexec.datalayer import DatalayerClient
from dlexec.runtimes import datalayer as datalayer_backend

from ..conftest import kernel_pids
from .test_leaks import PRELUDE, _read_until, _start, exited

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def datalayer_env(standin, monkeypatch):
    """The environment a user sets to run unchanged code on Datalayer."""
    for key, value in standin.env_vars().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DLEXEC_BACKEND", "datalayer")
    standin.capacity, standin.warmup_502, standin.fail_deletes = None, 0, False
    yield standin
    standin.capacity, standin.warmup_502, standin.fail_deletes = None, 0, False


def triple(x):
    return 3 * x


def pid():
    return os.getpid()


def _created(standin) -> list[dict]:
    return [body for method, path, body, _ in standin.requests if method == "POST" and path.endswith("/runtimes")]


def test_unchanged_executor_code_runs_on_datalayer_runtimes(datalayer_env):
    standin = datalayer_env
    before = len(_created(standin))
    with DatalayerExecutor(2) as ex:  # DLEXEC_BACKEND and DATALAYER_* select the backend
        assert list(ex.map(triple, range(8))) == [3 * x for x in range(8)]
        assert ex.submit(lambda: "by value").result() == "by value"
        pods = {f.runtime_id.split("runtime ")[1].rstrip(")") for f in [ex.submit(triple, 1)]}
        pods |= {w.session.facts["pod_name"] for w in ex._pool.workers if w.session and w.session.facts.get("pod_name")}
        assert pods and {r["pod_name"] for r in standin.live_runtimes()} >= pods  # (a 2nd may be starting)
    created = _created(standin)[before:]
    assert created and all(body["environment_name"] == "python-cpu-env" for body in created)
    # credits_limit = burning_rate (credits/s) x 60 x time_reservation (minutes, default 10)
    rate = next(e["burning_rate"] for e in standin.environments if e["name"] == "python-cpu-env")
    assert created[0]["credits_limit"] == pytest.approx(rate * 60 * 10)
    assert standin.live_runtimes() == []


def print_and_return(i):
    print(f"task {i} says hello")
    return i


def test_task_output_comes_before_its_result_on_datalayer_runtimes(datalayer_env, capsys):
    """Output (IOPub) and results (shell) share one WebSocket through the runtime's ingress;
    what a task printed is on stdout when its future completes (README: Output)."""
    for attempt in range(2):  # a runtime takes seconds to start here: the many first tasks are in test_output.py
        with DatalayerExecutor(1) as ex:
            capsys.readouterr()
            assert ex.submit(print, "printed remotely", attempt).result() is None
            assert f"printed remotely {attempt}\n" in capsys.readouterr().out, f"attempt {attempt}"
            out = ""
            for i, result in enumerate(ex.map(print_and_return, range(200))):
                out += capsys.readouterr().out
                assert result == i and f"task {i} says hello\n" in out, f"task {i}: the result came first"


def test_explicit_arguments_win_over_the_environment(datalayer_env, monkeypatch):
    monkeypatch.setenv("DATALAYER_API_KEY", "a-wrong-key")
    with DatalayerExecutor(1, environment="python-gpu-env", time_reservation=2, token="secret-token") as ex:
        assert ex.submit(triple, 2).result() == 6
    body = _created(datalayer_env)[-1]
    assert body["environment_name"] == "python-gpu-env"
    rate = next(e["burning_rate"] for e in datalayer_env.environments if e["name"] == "python-gpu-env")
    assert body["credits_limit"] == pytest.approx(rate * 60 * 2)


def test_runtime_service_on_datalayer(datalayer_env):
    with RuntimeService("seed-api", backend="datalayer", time_reservation=1) as rt:
        assert rt.pod_name.startswith("runtime-") and rt.ingress.startswith(datalayer_env.url)
        assert rt.burning_rate > 0 and float(rt.expired_at) > float(rt.started_at)
        assert rt.jupyter_token and rt.uid
        response = rt.execute_code("import os\nprint('remote', 6 * 7)")
        assert response.success and response.stdout == "remote 42\n"
        assert rt.execute_code("y = x + 1", variables={"x": 41}, output="y") == 42
        assert not rt.execute_code("1/0").success
        pod = rt.pod_name
    assert pod not in {r["pod_name"] for r in datalayer_env.live_runtimes()}


def test_snapshot_then_start_from_it(datalayer_env):
    with RuntimeService("to-snapshot", backend="datalayer") as rt:
        pod = rt.pod_name
        snapshot = rt.create_snapshot(name="my-snap", description="for the test")
    assert snapshot.name == "my-snap" and snapshot.uid
    assert pod not in {r["pod_name"] for r in datalayer_env.live_runtimes()}  # stop=True
    with RuntimeService("from-snapshot", backend="datalayer", snapshot="my-snap") as rt:
        assert rt.execute_code("1").success
    assert _created(datalayer_env)[-1]["from"] == snapshot.uid
    assert DatalayerClient().delete_snapshot(snapshot.uid)


def test_unknown_environment_lists_the_valid_ones(datalayer_env):
    with pytest.raises(RuntimeStartError, match="python-cpu-env") as info:
        RuntimeService("x", backend="datalayer", environment="no-such-env").start()
    assert "no-such-env" in str(info.value)
    assert datalayer_env.live_runtimes() == []


def test_a_refused_token_says_so(datalayer_env, monkeypatch):
    monkeypatch.setenv("DATALAYER_API_KEY", "wrong")
    with DatalayerExecutor(1) as ex:
        future = ex.submit(triple, 1)
        with pytest.raises(WorkerLostError, match="401") as info:
            future.result()
    assert "DATALAYER_API_KEY" in str(info.value)


def test_no_capacity_is_a_clear_error_after_bounded_retries(datalayer_env):
    datalayer_env.capacity = 0
    started = time.monotonic()
    with pytest.raises(RuntimeStartError, match="503") as info:
        RuntimeService("x", backend="datalayer", retry_deadline=2).start()
    assert "no runtime available" in str(info.value)
    assert time.monotonic() - started < 30


def test_ingress_warm_up_is_waited_out(datalayer_env):
    datalayer_env.warmup_502 = 3
    with RuntimeService("warming", backend="datalayer") as rt:
        assert rt.execute_code("'up'").success


def test_a_runtime_that_cannot_be_reached_is_deleted(datalayer_env):
    datalayer_env.warmup_502 = 10_000  # its ingress never comes up
    with pytest.raises(RuntimeStartError, match="did not accept a kernel"):
        RuntimeService("unreachable", backend="datalayer", warmup_timeout=3).start()
    assert datalayer_env.live_runtimes() == []
    assert datalayer_backend.owned_runtimes() == []


def test_a_runtime_that_cannot_be_deleted_is_reported_with_the_command(datalayer_env):
    rt = RuntimeService("undeletable", backend="datalayer").start()
    pod = rt.pod_name
    datalayer_env.fail_deletes = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rt.terminate()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(pod in m and f"dlexec runtimes terminate {pod}" in m for m in messages), messages
    datalayer_env.fail_deletes = False
    assert DatalayerClient().delete_runtime(pod)


def test_an_expired_runtime_fails_its_tasks_clearly(datalayer_env):
    with DatalayerExecutor(1) as ex:
        assert ex.submit(triple, 1).result() == 3
        pod = ex._pool.workers[0].session.facts["pod_name"]
        running = ex.submit(time.sleep, 30)
        time.sleep(0.5)
        datalayer_env.expire(pod)
        with pytest.raises(WorkerLostError, match=pod):
            running.result(timeout=60)


def nap(seconds, value):
    time.sleep(seconds)
    return value


def test_runtimes_about_to_expire_get_no_new_work_and_are_replaced(datalayer_env):
    # A 24 s reservation gets no new work in its last 12 s (a margin is capped at half the
    # reservation): 12 s of work needs a second runtime; no task is lost.
    before = len(_created(datalayer_env))
    with DatalayerExecutor(1, time_reservation=0.4, expiry_margin=20) as ex:
        futures = [ex.submit(nap, 0.5, i) for i in range(24)]
        assert [f.result(timeout=150) for f in futures] == list(range(24))
        assert len({f.runtime_id for f in futures}) >= 2
    assert len(_created(datalayer_env)) - before >= 2


def test_a_task_cut_short_by_expiry_runs_again_elsewhere(datalayer_env):
    # No margin: the runtime (15 s) expires under a running task, which is not lost and
    # does not count as a failure (max_retries=0 would otherwise break the pool).
    with DatalayerExecutor(1, time_reservation=0.25, expiry_margin=0) as ex:
        futures = [ex.submit(nap, 4, i) for i in range(4)]
        assert [f.result(timeout=150) for f in futures] == list(range(4))
        assert len({f.runtime_id for f in futures}) >= 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_killing_the_client_deletes_its_runtimes(datalayer_env, tmp_path, signum):
    process = _start(PRELUDE + """
ex = DatalayerExecutor(2)
show(ex)
futures = [ex.submit(time.sleep, 60) for _ in range(2)]
print("READY", flush=True)
time.sleep(120)
""", tmp_path)
    try:
        lines = _read_until(process, ("READY",), timeout=120)
        assert len(kernel_pids("\n".join(lines))) == 2
        assert len(datalayer_env.live_runtimes()) == 2
        process.send_signal(signum)
        err = exited(process, 60)
    finally:
        process.kill()
    assert datalayer_env.live_runtimes() == [], err


def test_versions_must_match(monkeypatch):
    from dlexec.session import check_versions

    with pytest.raises(RuntimeStartError, match="Python 3.1") as info:
        check_versions({"python": [3, 1, 0], "dill": "0.4.1"}, "rt")
    assert "cannot be loaded across Python versions" in str(info.value)
    import dill
    import sys

    with pytest.warns(RuntimeWarning, match="dill 0.0.1"):
        check_versions({"python": list(sys.version_info[:3]), "dill": "0.0.1"}, "rt")
    check_versions({"python": list(sys.version_info[:3]), "dill": dill.__version__}, "rt")


def test_package_exports_the_datalayer_backend():
    assert "datalayer" in dlexec.runtimes.BACKENDS
