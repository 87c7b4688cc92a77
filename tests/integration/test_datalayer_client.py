"""The Datalayer REST client against the local stand-in of the API (one real runtime in all)."""

from __future__ import annotations

import pickle
import socket
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
    terminate_command,
)
from dlexec.datalayer.transport import _server_message

pytestmark = pytest.mark.timeout(60)
ENV_VARS = ("DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN", "DATALAYER_RUN_URL", "DATALAYER_IAM_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, request):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    if "standin" in request.fixturenames:
        standin = request.getfixturevalue("standin")
        yield
        standin.capacity, standin.fail_deletes = None, False
    else:
        yield


def client(standin, **options) -> DatalayerClient:
    return DatalayerClient(standin.token, standin.url, retry_deadline=options.pop("retry_deadline", 2.0), **options)


def sent(standin, since: int, method: str, path_end: str) -> list[tuple]:
    """The requests the stand-in received since index ``since`` with this method and path ending."""
    return [r for r in standin.requests[since:] if r[0] == method and r[1].endswith(path_end)]


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


def test_env_vars_reach_the_server_with_the_expected_headers(standin, monkeypatch):
    monkeypatch.setenv("DATALAYER_RUN_URL", standin.url + "/")
    monkeypatch.setenv("DATALAYER_API_KEY", standin.token)
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", "ignored: the API key comes first")
    before = len(standin.requests)
    assert DatalayerClient().whoami()["handle_s"] == "standin-user"
    [request] = sent(standin, before, "GET", "/api/iam/v1/whoami")
    assert header(request, "Authorization") == f"Bearer {standin.token}"
    assert header(request, "Accept") == "application/json"
    assert header(request, "User-Agent").startswith("dlexec/")
    assert header(request, "X-External-Token") is None


def test_external_token_is_also_sent_as_x_external_token(standin, monkeypatch):
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", standin.token)
    before = len(standin.requests)
    credits = DatalayerClient(run_url=standin.url).credits()
    assert set(credits) == {"credits", "reservations"} and "credits" in credits["credits"]
    [request] = sent(standin, before, "GET", "/usage/credits")
    assert header(request, "X-External-Token") == standin.token == header(request, "Authorization").split()[1]


def test_argument_token_wins_over_env(standin, monkeypatch):
    monkeypatch.setenv("DATALAYER_API_KEY", standin.token)
    with pytest.raises(AuthenticationError):
        DatalayerClient("wrong-token", standin.url).whoami()
    monkeypatch.setenv("DATALAYER_API_KEY", "wrong-token")
    assert DatalayerClient(standin.token, standin.url).whoami()["handle_s"] == "standin-user"


# -- errors ----------------------------------------------------------------------------------------


def test_missing_token_fails_before_any_request(standin):
    before = len(standin.requests)
    with pytest.raises(AuthenticationError, match="no token: set DATALAYER_API_KEY") as info:
        DatalayerClient(run_url=standin.url).list_runtimes()
    assert info.value.status is None and len(standin.requests) == before


def test_refused_token_says_so(standin):
    with pytest.raises(AuthenticationError) as info:
        DatalayerClient("wrong-token", standin.url).whoami()
    error = info.value
    assert (error.status, error.method, error.url) == (401, "GET", f"{standin.url}/api/iam/v1/whoami")
    assert str(error).startswith(f"Datalayer API: GET {standin.url}/api/iam/v1/whoami failed with 401: Invalid or expired")
    assert "token was refused" in str(error) and "DATALAYER_API_KEY" in str(error)


def test_errors_carry_status_and_server_message(standin):
    standin.fail_next("GET", r"/environments$", 500, "database is down")
    before = len(standin.requests)
    with pytest.raises(DatalayerError) as info:
        client(standin).list_environments()
    url = f"{standin.url}/api/runtimes/v1/environments"
    assert str(info.value) == f"Datalayer API: GET {url} failed with 500: database is down"
    assert (info.value.status, info.value.message) == (500, "database is down")
    assert len(sent(standin, before, "GET", "/environments")) == 1  # no retry on 500

    standin.fail_next("POST", r"/runtimes$", 404, "environment 'x' not found")
    with pytest.raises(NotFoundError, match="POST .*/api/runtimes/v1/runtimes failed with 404: environment 'x' not"):
        client(standin).create_runtime("python-cpu-env")
    assert standin.live_runtimes() == []


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


def test_unknown_environment_lists_the_valid_ones_before_posting(standin):
    before = len(standin.requests)
    with pytest.raises(UnknownNameError, match="unknown environment 'nope'; available: python-cpu-env, python-gpu-env"):
        client(standin).create_runtime("nope")
    assert sent(standin, before, "POST", "/runtimes") == []
    with pytest.raises(ValueError, match="python-gpu-env"):  # a ValueError, as the SDK raised
        client(standin).get_environment("nope")
    assert client(standin).get_environment("python-gpu-env").burning_rate == 0.1


def test_capacity_503_becomes_capacity_error_after_bounded_retries(standin):
    standin.capacity = 0
    before, start = len(standin.requests), time.monotonic()
    with pytest.raises(CapacityError) as info:
        client(standin, retry_deadline=1.2).create_runtime("python-cpu-env")
    elapsed = time.monotonic() - start
    attempts = len(sent(standin, before, "POST", "/runtimes"))
    assert 2 <= attempts <= 3 and elapsed < 3
    assert info.value.status == 503 and "no runtime available" in str(info.value)
    assert f"after {attempts} attempts" in str(info.value)


def test_transient_failures_are_retried(standin):
    before = len(standin.requests)
    standin.fail_next("GET", r"/runtimes$", 502, "bad gateway")
    assert client(standin).list_runtimes() == []
    assert len(sent(standin, before, "GET", "/runtimes")) == 2
    standin.fail_next("DELETE", r"/runtimes/runtime-unknown$", 504, "gateway timeout")
    assert client(standin).delete_runtime("runtime-unknown") is False  # retried, then 404: already gone
    assert len(sent(standin, before, "DELETE", "/runtime-unknown")) == 2
    standin.fail_next("DELETE", r"/runtimes/runtime-unknown$", 503, "unavailable")
    with pytest.raises(DatalayerError, match="failed with 503: unavailable"):  # 503 on DELETE: not retried
        client(standin).delete_runtime("runtime-unknown")


def test_connection_errors_are_reported_briefly():
    with pytest.raises(DatalayerError, match=r"^Datalayer API: GET http://127.0.0.1:9/api/runtimes/v1/runtimes "
                                              r"failed: nothing is listening at 127.0.0.1:9 \(connection refused\)"):
        DatalayerClient("token", "http://127.0.0.1:9", retry_deadline=0.6).list_runtimes()


def test_a_host_that_does_not_resolve_fails_at_once_not_after_retries():
    # A name that does not resolve is a wrong URL or no network, not a passing fault: the
    # CLI's `whoami` used to retry it for 28 s. (".invalid" never resolves: RFC 6761.)
    started = time.monotonic()
    with pytest.raises(DatalayerError, match="cannot resolve the host nonexistent.invalid") as info:
        DatalayerClient("token", "https://nonexistent.invalid").whoami()
    assert time.monotonic() - started < 5
    assert "attempts" not in str(info.value) and "DATALAYER_RUN_URL" in str(info.value)


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(15)
def test_a_refused_connection_fails_at_once_not_after_retries():
    # Nothing listening (a wrong port, a service that is down) is not a passing fault either:
    # a GET used to retry it for the whole 30 s retry deadline.
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(DatalayerError, match=f"nothing is listening at 127.0.0.1:{port}") as info:
        DatalayerClient("token", f"http://127.0.0.1:{port}", allow_insecure=True).list_runtimes()
    assert time.monotonic() - started < 5
    assert "attempts" not in str(info.value) and "DATALAYER_RUN_URL" in str(info.value)
    assert "token" not in str(info.value).replace("the token", "")


def test_a_delete_still_retries_a_refused_connection():
    # Deleting a runtime this process owns is the one call worth waiting for: the API was up when
    # the runtime was created, and a runtime left running is billed.
    port = closed_port()
    with pytest.raises(DatalayerError, match="after [2-9] attempts"):
        DatalayerClient("token", f"http://127.0.0.1:{port}", allow_insecure=True,
                        retry_deadline=1.2).delete_runtime("runtime-x")


def test_terminate_command():
    assert terminate_command("runtime-01abc") == "dlexec runtimes terminate runtime-01abc"
    assert terminate_command("odd name") == "dlexec runtimes terminate 'odd name'"


# -- runtimes and snapshots: the one real runtime --------------------------------------------------


def test_runtime_and_snapshot_lifecycle(standin):
    api = client(standin)
    before = len(standin.requests)
    runtime = api.create_runtime("python-cpu-env", time_reservation_minutes=2.5, given_name="client-test")
    try:
        [create] = sent(standin, before, "POST", "/runtimes")
        assert create[2] == {"type": "notebook", "environment_name": "python-cpu-env",
                             "credits_limit": pytest.approx(0.01 * 60 * 2.5), "given_name": "client-test"}
        assert runtime.pod_name.startswith("runtime-") and runtime.given_name == "client-test"
        assert runtime.ingress.startswith(standin.url) and runtime.token and runtime.burning_rate == 0.01
        assert isinstance(runtime.started_at, float) and runtime.expired_at - runtime.started_at == pytest.approx(150)
        assert api.get_runtime(runtime.pod_name).uid == runtime.uid
        assert [r.pod_name for r in api.list_runtimes()] == [runtime.pod_name]
        with pytest.raises(NotFoundError):
            api.get_runtime("runtime-unknown")

        standin.fail_deletes = True
        with pytest.raises(DatalayerError, match="DELETE .* failed with 500") as info:
            api.delete_runtime(runtime.pod_name)
        assert info.value.status == 500
        standin.fail_deletes = False

        before = len(standin.requests)
        snapshot = api.create_snapshot(runtime.pod_name, name="client-snap", stop=True)
        assert sent(standin, before, "POST", "/runtime-snapshots")[0][2] == {
            "pod_name": runtime.pod_name, "name": "client-snap", "description": "client-snap", "stop": True}
        assert (snapshot.name, snapshot.environment) == ("client-snap", "python-cpu-env") and snapshot.uid
        assert api.get_snapshot(snapshot.uid).name == "client-snap"
        assert [s.uid for s in api.list_snapshots()] == [snapshot.uid]
        assert snapshot.to_model().uid == snapshot.uid
        assert api.delete_runtime(runtime.pod_name) is False  # stop=True: the snapshot stopped it

        standin.fail_next("POST", r"/runtimes$", 409, "stop here")  # check what is sent, without a second runtime
        with pytest.raises(DatalayerError, match="failed with 409: stop here"):
            api.create_runtime("python-cpu-env", snapshot="client-snap")
        assert standin.requests[-1][2]["from"] == snapshot.uid
        with pytest.raises(UnknownNameError, match="unknown snapshot 'nope'; available: client-snap"):
            api.create_runtime("python-cpu-env", snapshot="nope")

        assert api.delete_snapshot("client-snap") is True
        with pytest.raises(NotFoundError):
            api.get_snapshot(snapshot.uid)
        with pytest.raises(UnknownNameError):
            api.delete_snapshot("client-snap")
    finally:
        standin.fail_deletes = False
        api.delete_runtime(runtime.pod_name)
    assert standin.live_runtimes() == []


def test_snapshot_that_never_appears_is_an_error(standin, monkeypatch):
    api = client(standin)
    monkeypatch.setattr(api, "list_snapshots", list)
    monkeypatch.setattr(api, "_request", lambda *a, **k: {"success": True, "snapshot": {"uid": "S1"}})
    with pytest.raises(DatalayerError, match="'lost' of runtime-x was accepted but is not listed after 2 attempts"):
        api.create_snapshot("runtime-x", name="lost", poll_attempts=2, poll_interval=0.01)
