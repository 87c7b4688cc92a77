"""dlexec.RuntimeService as a drop-in for the Datalayer SDK's (datalayer_core 1.1.x).

The tests use ``RuntimeService`` the way the SDK's users and its own tests do, with only the
import changed, against the local stand-in of the Datalayer API (real Jupyter Servers behind
its ingress, which accepts only the SDK's authentication form). Each test leaves no runtime
running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from dlexec import DatalayerExecutor, RuntimeService, RuntimeStartError
from dlexec.datalayer import DatalayerClient
from dlexec.runtimes import datalayer as datalayer_backend

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(120)

CREATE = r"/api/runtimes/v1/runtimes$"
SDK_URL_FIELDS = ("run_url", "iam_url", "runtimes_url", "spacer_url", "library_url", "manager_url", "ai_agents_url",
                  "ai_inference_url", "growth_url", "success_url", "status_url", "support_url", "mcp_server_url")


@pytest.fixture
def sdk_user(standin, monkeypatch):
    """A user of the SDK: no DLEXEC_* variable, no DATALAYER_* variable; URL and key in the code."""
    for key in ("DLEXEC_BACKEND", "DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN", "DATALAYER_RUN_URL",
                "DATALAYER_IAM_URL", "DATALAYER_RUNTIMES_URL"):
        monkeypatch.delenv(key, raising=False)
    standin.capacity, standin.warmup_502, standin.fail_deletes, standin.create_fault = None, 0, False, None
    standin.snapshot_paths = ("runtime-snapshots", "sandbox-snapshots")
    yield standin
    standin.snapshot_paths = ("runtime-snapshots", "sandbox-snapshots")
    deadline = time.monotonic() + 20
    while standin.live_runtimes() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = standin.live_runtimes()
    for runtime in left:
        standin.expire(runtime["pod_name"])
    assert left == [], "a runtime was left running"
    while datalayer_backend.owned_runtimes() and time.monotonic() < deadline + 10:  # forgotten after the DELETE
        time.sleep(0.05)
    assert datalayer_backend.owned_runtimes() == []


def creates(standin) -> int:
    return len(standin.sent("POST", CREATE))


def ingress_requests(standin) -> list:
    return [r for r in list(standin.requests) if "/jupyter/server/pool/" in r[1]]


# -- backend selection ---------------------------------------------------------------------------

def test_the_seed_form_creates_a_datalayer_runtime(sdk_user):
    standin = sdk_user
    before = creates(standin)
    with RuntimeService("job", environment="python-cpu-env", run_url=standin.url, token=standin.token) as rt:
        assert rt.backend == "datalayer"
        assert rt.pod_name.startswith("runtime-")
        response = rt.execute_code("print(6 * 7)")
        assert response.success and "42" in response.stdout
        assert rt.execute_code("y = x + 1", variables={"x": 1}, output="y") == 2
        assert rt.pod_name in {r.pod_name for r in DatalayerClient(standin.token, standin.url).list_runtimes()}
    assert creates(standin) == before + 1
    assert standin.live_runtimes() == []


@pytest.mark.parametrize("arguments", [
    {"token": "secret-token"},
    {"iam_url": "https://iam.example.com"},
    {"run_url": "https://prod1.datalayer.run"},  # the default's value, but given
    {"environment": "python-gpu-env"},
    {"pod_name": "runtime-x", "ingress": "https://ingress.example.com/x", "jupyter_token": "t"},
])
def test_datalayer_arguments_select_the_datalayer_backend(sdk_user, arguments, monkeypatch):
    monkeypatch.setenv("DATALAYER_API_KEY", sdk_user.token)
    assert RuntimeService("x", **arguments).backend == "datalayer"


def test_no_api_key_is_an_error_at_construction(sdk_user):
    with pytest.raises(ValueError, match="DATALAYER_API_KEY"):
        RuntimeService("x", environment="python-gpu-env")
    with pytest.raises(ValueError, match="runtime-x.*DATALAYER_API_KEY"):  # a given runtime is deleted when done
        RuntimeService("x", pod_name="runtime-x", ingress="https://ingress.example.com/x", jupyter_token="t")
    with pytest.raises(ValueError, match="jupyter_token"):
        RuntimeService("x", ingress="https://ingress.example.com/x", token="k")
    # without pod_name, a given runtime is only used: no key needed
    assert RuntimeService("x", ingress="https://ingress.example.com/x", jupyter_token="t").backend == "datalayer"


def test_without_datalayer_arguments_the_kernel_is_local(sdk_user, monkeypatch):
    assert RuntimeService("x").backend == "local"
    assert RuntimeService("x", environment="python-cpu-env").backend == "local"
    # an API key (or URL) in the environment never starts paid runtimes by itself
    for key, value in sdk_user.env_vars().items():
        monkeypatch.setenv(key, value)
    assert RuntimeService("x").backend == "local"
    monkeypatch.setenv("DLEXEC_BACKEND", "datalayer")
    assert RuntimeService("x").backend == "datalayer"
    assert RuntimeService("x", backend="local", token="secret-token").backend == "local"  # backend= wins


def test_executor_follows_the_same_rule(sdk_user):
    standin = sdk_user
    before = creates(standin)
    with DatalayerExecutor(1, run_url=standin.url, token=standin.token) as ex:
        assert ex._pool.backend == "datalayer"
        assert ex.submit(pow, 2, 5).result() == 32
    assert creates(standin) == before + 1


def test_an_existing_runtime_is_connected_to_and_deleted_on_exit(sdk_user):
    """The form ``DatalayerClient.create_runtime`` builds: connect, run, delete on exit (as the SDK)."""
    standin = sdk_user
    info = DatalayerClient(standin.token, standin.url).create_runtime("python-cpu-env", 5, given_name="mine")
    before = creates(standin)
    rt = RuntimeService(info.given_name, environment=info.environment_name, run_url=standin.url,
                        token=standin.token, pod_name=info.pod_name, ingress=info.ingress,
                        reservation_id=info.reservation_id, uid=info.uid, burning_rate=info.burning_rate,
                        jupyter_token=info.token, started_at=info.raw["started_at"],
                        expired_at=info.raw["expired_at"])
    assert rt.backend == "datalayer"
    with rt:
        assert rt.execute_code("print('on the given runtime')").stdout == "on the given runtime\n"
        assert rt.pod_name == info.pod_name and rt.started_at == info.raw["started_at"]
    assert creates(standin) == before  # connected, not created
    assert info.pod_name not in {r["pod_name"] for r in standin.live_runtimes()}


def test_a_given_runtime_is_deleted_by_terminate_with_the_api_key_from_the_environment(sdk_user, monkeypatch):
    standin = sdk_user
    info = DatalayerClient(standin.token, standin.url).create_runtime("python-cpu-env", 5)
    monkeypatch.setenv("DATALAYER_API_KEY", standin.token)
    monkeypatch.setenv("DATALAYER_RUN_URL", standin.url)
    rt = RuntimeService("given", pod_name=info.pod_name, ingress=info.ingress, jupyter_token=info.token)
    rt.start()
    assert rt.execute_code("1 + 1").success
    assert rt.terminate() is True
    assert standin.live_runtimes() == []


def test_a_given_runtime_that_cannot_be_reached_is_kept_until_terminate(sdk_user):
    standin = sdk_user
    info = DatalayerClient(standin.token, standin.url).create_runtime("python-cpu-env", 5)
    rt = RuntimeService("wrong-token", run_url=standin.url, token=standin.token, pod_name=info.pod_name,
                        ingress=info.ingress, jupyter_token="not-" + info.token, warmup_timeout=5)
    with pytest.raises(RuntimeStartError, match="401"):
        rt.start()
    assert info.pod_name in {r["pod_name"] for r in standin.live_runtimes()}  # a failed start deletes nothing
    assert rt.terminate() is True  # asked for: deleted
    assert standin.live_runtimes() == []


def test_a_given_runtime_never_started_is_deleted_by_terminate(sdk_user):
    standin = sdk_user
    info = DatalayerClient(standin.token, standin.url).create_runtime("python-cpu-env", 5)
    rt = RuntimeService("listed", run_url=standin.url, token=standin.token, pod_name=info.pod_name,
                        ingress=info.ingress, jupyter_token=info.token)
    assert rt.terminate() is True and standin.live_runtimes() == []
    assert rt.terminate() is False


def test_an_executor_on_a_given_runtime_deletes_it_once_at_shutdown(sdk_user):
    standin = sdk_user
    info = DatalayerClient(standin.token, standin.url).create_runtime("python-cpu-env", 5)
    before = creates(standin)
    with DatalayerExecutor(2, run_url=standin.url, token=standin.token, pod_name=info.pod_name,
                           ingress=info.ingress, jupyter_token=info.token) as ex:
        assert sorted(ex.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
        assert [r["pod_name"] for r in standin.live_runtimes()] == [info.pod_name]
    assert creates(standin) == before
    assert standin.live_runtimes() == []


# -- lifecycle -----------------------------------------------------------------------------------

def test_start_stop_and_terminate_return_what_the_sdk_returns(sdk_user):
    standin = sdk_user
    rt = RuntimeService("lifecycle", run_url=standin.url, token=standin.token)
    assert rt.terminate() is False  # never started, nothing handed in: nothing to stop
    rt.start()
    pod = rt.pod_name
    assert pod in {r["pod_name"] for r in standin.live_runtimes()}
    assert rt.stop() is True
    assert rt.terminate() is False  # already stopped
    assert standin.live_runtimes() == []


# -- shapes --------------------------------------------------------------------------------------

def test_execution_response_model_dump(sdk_user):
    standin = sdk_user
    with RuntimeService("shapes", run_url=standin.url, token=standin.token) as rt:
        response = rt.execute_code("print('hi')")
    dump = response.model_dump()
    assert set(dump) == {"success", "message", "execute_response", "stdout", "stderr"}
    assert dump["success"] is True and dump["stdout"] == "hi\n" and dump["stderr"] == ""
    assert dump["execute_response"][0]["output_type"] == "stream"
    assert json.loads(response.model_dump_json()) == dump
    assert set(response.model_dump(include={"success"})) == {"success"}
    assert "stdout" not in response.model_dump(exclude={"stdout"})


def test_model_and_urls_carry_the_sdks_fields(sdk_user, monkeypatch):
    standin = sdk_user
    monkeypatch.setenv("DATALAYER_RUN_URL", standin.url)  # the URL comes from the environment
    monkeypatch.setenv("DLEXEC_BACKEND", "datalayer")
    monkeypatch.setenv("DATALAYER_API_KEY", standin.token)
    with RuntimeService("model", time_reservation=2) as rt:
        model = rt.model
        assert model.token == standin.token and model.jupyter_token
        assert model.runtime["pod_name"] == rt.pod_name
        assert model.credits_limit == pytest.approx(rt.burning_rate * 60 * 2)
        raw = standin.live_runtimes()[0]
        assert rt.started_at == raw["started_at"] and rt.expired_at == raw["expired_at"]  # the server's type
        assert type(rt.expired_at) is type(raw["expired_at"])
        urls = rt.urls
        assert tuple(f.name for f in dataclasses.fields(urls)) == SDK_URL_FIELDS
        assert urls.run_url == standin.url and urls.runtimes_url == standin.url
        shown = repr(model) + str(model) + repr(rt) + repr(urls)
        assert standin.token not in shown and model.jupyter_token not in shown


# -- authentication ------------------------------------------------------------------------------

def test_the_ingress_is_reached_the_sdks_way(sdk_user):
    standin = sdk_user
    start = len(standin.requests)
    with RuntimeService("auth", run_url=standin.url, token=standin.token) as rt:
        assert rt.execute_code("1").success
    seen = [r for r in ingress_requests(standin) if standin.requests.index(r) >= start]
    http = [headers for _, path, _, headers in seen if not path.endswith("/channels")]
    assert http and all(h.get("Authorization", "").startswith("Bearer ") for h in http)
    websocket = [headers for _, path, _, headers in seen if path.endswith("/channels")]
    assert websocket and all("Authorization" not in h for h in websocket)


def test_a_refused_websocket_shows_no_token(sdk_user, caplog):
    standin = sdk_user
    caplog.set_level(logging.DEBUG)
    standin.fail_next("GET", r"/channels$", 403, "refused")
    with pytest.raises(RuntimeStartError) as info:
        RuntimeService("refused", run_url=standin.url, token=standin.token, warmup_timeout=10).start()
    texts = [str(info.value), repr(info.value), caplog.text]
    cause = info.value.__cause__
    while cause is not None:
        texts.append(str(cause) + repr(cause))
        cause = cause.__cause__
    record = [r for r in standin.runtimes.values()][-1]
    assert all(record.token not in text for text in texts), texts
    assert "token=" not in str(info.value)


def test_token_from_the_keyring_that_datalayer_login_writes(sdk_user, monkeypatch):
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    class MemoryKeyring(KeyringBackend):
        priority = 1

        def __init__(self):
            super().__init__()
            self.entries = {}

        def get_password(self, service, username):
            return self.entries.get((service, username))

        def set_password(self, service, username, password):
            self.entries[(service, username)] = password

        def delete_password(self, service, username):
            self.entries.pop((service, username), None)

    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    try:
        memory.set_password(sdk_user.url, "access_token", sdk_user.token)
        assert DatalayerClient(run_url=sdk_user.url).token_source == "keyring"
        with RuntimeService("from-keyring", run_url=sdk_user.url) as rt:
            assert rt.execute_code("1").success
    finally:
        keyring.set_keyring(previous)


# -- newer API paths -----------------------------------------------------------------------------

def test_runtimes_url_is_used_for_the_runtimes_api(sdk_user, monkeypatch):
    standin = sdk_user
    client = DatalayerClient(standin.token, "http://127.0.0.1:9", runtimes_url=standin.url)
    assert [e.name for e in client.list_environments()][:1] == ["python-cpu-env"]
    # the variables: DATALAYER_RUNTIMES_URL before DATALAYER_RUN_URL (an explicit run_url wins over both)
    monkeypatch.setenv("DATALAYER_RUN_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DATALAYER_RUNTIMES_URL", standin.url)
    client = DatalayerClient(standin.token)
    assert client.list_runtimes() == [] and client.urls.runtimes_url == standin.url
    assert client.urls.run_url == "http://127.0.0.1:9"


@pytest.mark.parametrize("served", [("runtime-snapshots",), ("sandbox-snapshots",)])
def test_snapshots_on_either_path(sdk_user, served):
    standin = sdk_user
    standin.snapshot_paths = served
    client = DatalayerClient(standin.token, standin.url)
    with RuntimeService("snap", run_url=standin.url, token=standin.token) as rt:
        snapshot = rt.create_snapshot(name=f"snap-{served[0]}", description="d")
    assert snapshot.name == f"snap-{served[0]}" and snapshot.uid
    assert snapshot.uid in {s.uid for s in client.list_snapshots()}
    assert client.delete_snapshot(snapshot.uid)
    assert snapshot.uid not in {s.uid for s in client.list_snapshots()}


# -- the example: SDK code with only the import changed ----------------------------------------------

def test_the_sdk_example_runs_unchanged(sdk_user, tmp_path):
    standin = sdk_user
    before = creates(standin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLEXEC_", "DATALAYER_"))}
    env.update(PYTHONPATH=str(ROOT), DATALAYER_RUN_URL=standin.url, DATALAYER_API_KEY=standin.token)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "datalayer_sdk_code.py")], capture_output=True,
                            text=True, timeout=110, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "total: 6" in result.stdout and "ZeroDivisionError" in result.stdout
    assert "get_variable: hello" in result.stdout
    assert creates(standin) == before + 1
    assert standin.token not in result.stdout + result.stderr
