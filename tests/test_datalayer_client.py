"""The Datalayer REST client against the local stand-in of the API (one real runtime in all)."""

from __future__ import annotations

import pickle
import time

import pytest
import requests

from dlexec.datalayer import (
    AuthenticationError,
    CapacityError,
    DatalayerClient,
    DatalayerError,
    NotFoundError,
    UnknownNameError,
    _server_message,
    terminate_command,
)
from tests.datalayer_standin import DatalayerStandIn

pytestmark = pytest.mark.timeout(60)
ENV_VARS = ("DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN", "DATALAYER_RUN_URL", "DATALAYER_IAM_URL")


@pytest.fixture(scope="module")
def dl():
    with DatalayerStandIn(token="secret-token") as standin:
        yield standin
        assert standin.live_runtimes() == [], "a test left a runtime running"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, request):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    if "dl" in request.fixturenames:
        standin = request.getfixturevalue("dl")
        yield
        standin.capacity, standin.fail_deletes = None, False
    else:
        yield


def client(dl, **options) -> DatalayerClient:
    return DatalayerClient(dl.token, dl.url, retry_deadline=options.pop("retry_deadline", 2.0), **options)


def sent(dl, since: int, method: str, path_end: str) -> list[tuple]:
    """The requests the stand-in received since index ``since`` with this method and path ending."""
    return [r for r in dl.requests[since:] if r[0] == method and r[1].endswith(path_end)]


def header(request: tuple, name: str) -> str | None:
    return next((v for k, v in request[3].items() if k.lower() == name.lower()), None)


# -- configuration ---------------------------------------------------------------------------------


def test_token_resolution_order(monkeypatch):
    assert DatalayerClient().token is None
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", "external")
    assert (DatalayerClient().token, DatalayerClient().token_source) == ("external", "DATALAYER_EXTERNAL_TOKEN")
    monkeypatch.setenv("DATALAYER_API_KEY", "api-key")
    assert (DatalayerClient().token, DatalayerClient().token_source) == ("api-key", "DATALAYER_API_KEY")
    assert (DatalayerClient("explicit").token, DatalayerClient("explicit").token_source) == ("explicit", "argument")


def test_urls_from_arguments_env_and_default(monkeypatch):
    default = DatalayerClient()
    assert (default.run_url, default.iam_url) == ("https://prod1.datalayer.run", "https://prod1.datalayer.run")
    monkeypatch.setenv("DATALAYER_RUN_URL", "http://run.example/")
    assert (DatalayerClient().run_url, DatalayerClient().iam_url) == ("http://run.example", "http://run.example")
    monkeypatch.setenv("DATALAYER_IAM_URL", "http://iam.example//")
    assert DatalayerClient().iam_url == "http://iam.example"
    explicit = DatalayerClient(run_url="http://a.example/", iam_url="http://b.example/")
    assert (explicit.run_url, explicit.iam_url) == ("http://a.example", "http://b.example")


def test_env_vars_reach_the_server_with_the_expected_headers(dl, monkeypatch):
    monkeypatch.setenv("DATALAYER_RUN_URL", dl.url + "/")
    monkeypatch.setenv("DATALAYER_API_KEY", dl.token)
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", "ignored: the API key comes first")
    before = len(dl.requests)
    assert DatalayerClient().whoami()["handle_s"] == "standin-user"
    [request] = sent(dl, before, "GET", "/api/iam/v1/whoami")
    assert header(request, "Authorization") == f"Bearer {dl.token}"
    assert header(request, "Accept") == "application/json"
    assert header(request, "User-Agent").startswith("dlexec/")
    assert header(request, "X-External-Token") is None


def test_external_token_is_also_sent_as_x_external_token(dl, monkeypatch):
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", dl.token)
    before = len(dl.requests)
    credits = DatalayerClient(run_url=dl.url).credits()
    assert set(credits) == {"credits", "reservations"} and "credits" in credits["credits"]
    [request] = sent(dl, before, "GET", "/usage/credits")
    assert header(request, "X-External-Token") == dl.token == header(request, "Authorization").split()[1]


def test_argument_token_wins_over_env(dl, monkeypatch):
    monkeypatch.setenv("DATALAYER_API_KEY", dl.token)
    with pytest.raises(AuthenticationError):
        DatalayerClient("wrong-token", dl.url).whoami()
    monkeypatch.setenv("DATALAYER_API_KEY", "wrong-token")
    assert DatalayerClient(dl.token, dl.url).whoami()["handle_s"] == "standin-user"


# -- errors ----------------------------------------------------------------------------------------


def test_missing_token_fails_before_any_request(dl):
    before = len(dl.requests)
    with pytest.raises(AuthenticationError, match="no token: set DATALAYER_API_KEY") as info:
        DatalayerClient(run_url=dl.url).list_runtimes()
    assert info.value.status is None and len(dl.requests) == before


def test_refused_token_says_so(dl):
    with pytest.raises(AuthenticationError) as info:
        DatalayerClient("wrong-token", dl.url).whoami()
    error = info.value
    assert (error.status, error.method, error.url) == (401, "GET", f"{dl.url}/api/iam/v1/whoami")
    assert str(error).startswith(f"Datalayer API: GET {dl.url}/api/iam/v1/whoami failed with 401: Invalid or expired")
    assert "token was refused" in str(error) and "DATALAYER_API_KEY" in str(error)


def test_errors_carry_status_and_server_message(dl):
    dl.fail_next("GET", r"/environments$", 500, "database is down")
    before = len(dl.requests)
    with pytest.raises(DatalayerError) as info:
        client(dl).list_environments()
    url = f"{dl.url}/api/runtimes/v1/environments"
    assert str(info.value) == f"Datalayer API: GET {url} failed with 500: database is down"
    assert (info.value.status, info.value.message) == (500, "database is down")
    assert len(sent(dl, before, "GET", "/environments")) == 1  # no retry on 500

    dl.fail_next("POST", r"/runtimes$", 404, "environment 'x' not found")
    with pytest.raises(NotFoundError, match="POST .*/api/runtimes/v1/runtimes failed with 404: environment 'x' not"):
        client(dl).create_runtime("python-cpu-env")
    assert dl.live_runtimes() == []


def test_error_message_uses_errors_and_exception_fields():
    response = requests.Response()
    response.status_code, response.reason = 400, "Bad Request"
    response._content = b'{"success": false, "message": "invalid", "errors": ["a", "b"], "exception": "KeyError"}'
    assert _server_message(response, response.json()) == "invalid - a; b - KeyError"
    response._content = b"<html>proxy error</html>"
    response.headers["Content-Type"] = "text/html"
    assert _server_message(response, {}) == "Bad Request"


def test_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(NotFoundError("gone", status=404, url="http://x/y", method="GET")))
    assert (type(error), error.status) == (NotFoundError, 404)
    assert str(error) == "Datalayer API: GET http://x/y failed with 404: gone"


def test_unknown_environment_lists_the_valid_ones_before_posting(dl):
    before = len(dl.requests)
    with pytest.raises(UnknownNameError, match="unknown environment 'nope'; available: python-cpu-env, python-gpu-env"):
        client(dl).create_runtime("nope")
    assert sent(dl, before, "POST", "/runtimes") == []
    with pytest.raises(ValueError, match="python-gpu-env"):  # a ValueError, as the SDK raised
        client(dl).get_environment("nope")
    assert client(dl).get_environment("python-gpu-env").burning_rate == 0.1


def test_capacity_503_becomes_capacity_error_after_bounded_retries(dl):
    dl.capacity = 0
    before, start = len(dl.requests), time.monotonic()
    with pytest.raises(CapacityError) as info:
        client(dl, retry_deadline=1.2).create_runtime("python-cpu-env")
    elapsed = time.monotonic() - start
    attempts = len(sent(dl, before, "POST", "/runtimes"))
    assert 2 <= attempts <= 3 and elapsed < 3
    assert info.value.status == 503 and "no runtime available" in str(info.value)
    assert f"after {attempts} attempts" in str(info.value)


def test_transient_failures_are_retried(dl):
    before = len(dl.requests)
    dl.fail_next("GET", r"/runtimes$", 502, "bad gateway")
    assert client(dl).list_runtimes() == []
    assert len(sent(dl, before, "GET", "/runtimes")) == 2
    dl.fail_next("DELETE", r"/runtimes/runtime-unknown$", 504, "gateway timeout")
    assert client(dl).delete_runtime("runtime-unknown") is False  # retried, then 404: already gone
    assert len(sent(dl, before, "DELETE", "/runtime-unknown")) == 2
    dl.fail_next("DELETE", r"/runtimes/runtime-unknown$", 503, "unavailable")
    with pytest.raises(DatalayerError, match="failed with 503: unavailable"):  # 503 on DELETE: not retried
        client(dl).delete_runtime("runtime-unknown")


def test_connection_errors_are_reported_briefly():
    with pytest.raises(DatalayerError, match=r"GET http://127.0.0.1:9/api/runtimes/v1/runtimes failed: cannot connect"):
        DatalayerClient("token", "http://127.0.0.1:9", retry_deadline=0.6).list_runtimes()


def test_terminate_command():
    assert terminate_command("runtime-01abc") == "dlexec runtimes terminate runtime-01abc"
    assert terminate_command("odd name") == "dlexec runtimes terminate 'odd name'"


# -- runtimes and snapshots: the one real runtime --------------------------------------------------


def test_runtime_and_snapshot_lifecycle(dl):
    api = client(dl)
    before = len(dl.requests)
    runtime = api.create_runtime("python-cpu-env", time_reservation_minutes=2.5, given_name="client-test")
    try:
        [create] = sent(dl, before, "POST", "/runtimes")
        assert create[2] == {"type": "notebook", "environment_name": "python-cpu-env",
                             "credits_limit": pytest.approx(0.01 * 60 * 2.5), "given_name": "client-test"}
        assert runtime.pod_name.startswith("runtime-") and runtime.given_name == "client-test"
        assert runtime.ingress.startswith(dl.url) and runtime.token and runtime.burning_rate == 0.01
        assert isinstance(runtime.started_at, float) and runtime.expired_at - runtime.started_at == pytest.approx(150)
        assert api.get_runtime(runtime.pod_name).uid == runtime.uid
        assert [r.pod_name for r in api.list_runtimes()] == [runtime.pod_name]
        with pytest.raises(NotFoundError):
            api.get_runtime("runtime-unknown")

        dl.fail_deletes = True
        with pytest.raises(DatalayerError, match="DELETE .* failed with 500") as info:
            api.delete_runtime(runtime.pod_name)
        assert info.value.status == 500
        dl.fail_deletes = False

        before = len(dl.requests)
        snapshot = api.create_snapshot(runtime.pod_name, name="client-snap", stop=True)
        assert sent(dl, before, "POST", "/runtime-snapshots")[0][2] == {
            "pod_name": runtime.pod_name, "name": "client-snap", "description": "client-snap", "stop": True}
        assert (snapshot.name, snapshot.environment) == ("client-snap", "python-cpu-env") and snapshot.uid
        assert api.get_snapshot(snapshot.uid).name == "client-snap"
        assert [s.uid for s in api.list_snapshots()] == [snapshot.uid]
        assert snapshot.to_model().uid == snapshot.uid
        assert api.delete_runtime(runtime.pod_name) is False  # stop=True: the snapshot stopped it

        dl.fail_next("POST", r"/runtimes$", 409, "stop here")  # check what is sent, without a second runtime
        with pytest.raises(DatalayerError, match="failed with 409: stop here"):
            api.create_runtime("python-cpu-env", snapshot="client-snap")
        assert dl.requests[-1][2]["from"] == snapshot.uid
        with pytest.raises(UnknownNameError, match="unknown snapshot 'nope'; available: client-snap"):
            api.create_runtime("python-cpu-env", snapshot="nope")

        assert api.delete_snapshot("client-snap") is True
        with pytest.raises(NotFoundError):
            api.get_snapshot(snapshot.uid)
        with pytest.raises(UnknownNameError):
            api.delete_snapshot("client-snap")
    finally:
        dl.fail_deletes = False
        api.delete_runtime(runtime.pod_name)
    assert dl.live_runtimes() == []


def test_snapshot_that_never_appears_is_an_error(dl, monkeypatch):
    api = client(dl)
    monkeypatch.setattr(api, "list_snapshots", list)
    monkeypatch.setattr(api, "_request", lambda *a, **k: {"success": True, "snapshot": {"uid": "S1"}})
    with pytest.raises(DatalayerError, match="'lost' of runtime-x was accepted but is not listed after 2 attempts"):
        api.create_snapshot("runtime-x", name="lost", poll_attempts=2, poll_interval=0.01)
