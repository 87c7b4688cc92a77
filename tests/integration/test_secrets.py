"""Secrets stay secret: tokens are checked where they are first known, never go unencrypted to
another machine, never follow a redirect to another host, and never appear in a message, a repr,
a log line or ``--json`` output."""

from __future__ import annotations

import http.server
import json
import logging
import threading

import pytest
import requests

from dlexec import RuntimeService
from dlexec.cli import main
from dlexec.datalayer import DatalayerClient, DatalayerError, RuntimeInfo
from dlexec.errors import RuntimeStartError
from dlexec.runtimes import datalayer as datalayer_runtime
from dlexec.runtimes.datalayer import DatalayerRuntime
from dlexec.runtimes.jupyter import JupyterServerRuntime
from dlexec.secrets import SecretSession, check_token, check_transport, redact

pytestmark = pytest.mark.timeout(60)
ENV_VARS = ("DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN", "DATALAYER_RUN_URL", "DATALAYER_IAM_URL",
            "DLEXEC_ALLOW_INSECURE", "DLEXEC_JUPYTER_TOKEN", "DLEXEC_JUPYTER_URL")
REMOTE = "http://10.255.255.1:8888"  # never contacted: every check below raises before any request
SECRET = "s3cret-TOKEN-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything sends an HTTP request or opens a TCP connection."""
    sent = []

    def refuse(*args, **kwargs):
        sent.append(args)
        raise AssertionError("a request was sent")

    monkeypatch.setattr(requests.Session, "send", refuse)
    monkeypatch.setattr("dlexec.runtimes.jupyter_ws._connect_tcp", refuse)
    yield sent
    assert sent == []


def assert_hidden(text: str, *secrets: str) -> None:
    """No secret, nor a long part of one, in ``text``."""
    for secret in secrets:
        for part in {secret, *secret.split()}:
            part = part.strip()
            if len(part) >= 4:
                assert part not in text, f"{part!r} leaked in {text!r}"


# -- malformed tokens ----------------------------------------------------------------------------

BAD_TOKENS = {
    "newline": ("abcd-SECRET-1234\n", "line break"),
    "inner newline": ("abcd-SECRET\r\n1234", "line break"),
    "space": ("abcd-SECRET 1234", "whitespace"),
    "tab": ("abcd-SECRET\t1234", "whitespace"),
    "non-ascii": ("abcd-SECRÉT-1234", "non-ASCII"),
    "control": ("abcd-SECRET\x071234", "control"),
}


@pytest.mark.parametrize("token, kind", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_check_token_says_what_is_wrong_without_the_token(token, kind):
    with pytest.raises(ValueError) as info:
        check_token(token, "$MY_TOKEN")
    message = str(info.value)
    assert "$MY_TOKEN" in message and kind in message
    assert_hidden(message, token, "SECRET", "abcd", "1234")
    assert check_token("printable-ASCII_~!#$%&'*+.^`|0123", "x") == "printable-ASCII_~!#$%&'*+.^`|0123"
    assert check_token(None, "x") is None


@pytest.mark.parametrize("token, kind", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_datalayer_client_refuses_a_malformed_token_at_construction(token, kind, monkeypatch, no_network):
    with pytest.raises(ValueError, match=r"token= argument.*" + kind) as info:
        DatalayerClient(token, "http://127.0.0.1:9")
    assert_hidden(str(info.value), token, "SECRET")
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", token)
    with pytest.raises(ValueError, match=r"\$DATALAYER_EXTERNAL_TOKEN") as info:
        DatalayerClient(run_url="http://127.0.0.1:9")
    assert_hidden(str(info.value), token, "SECRET")
    monkeypatch.setenv("DATALAYER_API_KEY", token)
    with pytest.raises(ValueError, match=r"\$DATALAYER_API_KEY"):
        DatalayerClient(run_url="http://127.0.0.1:9")


@pytest.mark.parametrize("token, kind", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_jupyter_backend_refuses_a_malformed_token_at_construction(token, kind, no_network):
    with pytest.raises(ValueError, match=r"DLEXEC_JUPYTER_TOKEN.*" + kind) as info:
        JupyterServerRuntime(url="http://127.0.0.1:9", token=token)
    assert_hidden(str(info.value), token, "SECRET")


def test_datalayer_runtime_refuses_a_malformed_api_key_at_construction(no_network):
    with pytest.raises(ValueError, match="token= argument") as info:
        DatalayerRuntime(token="abcd-SECRET\n", run_url="http://127.0.0.1:9")
    assert_hidden(str(info.value), "abcd-SECRET")


def test_cli_refuses_a_malformed_token_in_one_line(capsys, monkeypatch, no_network):
    monkeypatch.setenv("DATALAYER_API_KEY", "abcd-SECRÉT-1234")
    assert main(["--run-url", "http://127.0.0.1:9", "runtimes", "ls"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dlexec: $DATALAYER_API_KEY") and "Traceback" not in err
    assert_hidden(err, "abcd-SECRÉT-1234", "SECRÉT")


# -- transport -----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://10.255.255.1", "http://example.com:8080/x", "ws://10.0.0.1/api",
                                 "http://127.0.0.1.example.com", "http://[2001:db8::1]:80"])
def test_check_transport_refuses_plain_http_to_another_machine(url, monkeypatch):
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE=1") as info:
        check_transport(url, "the token", allow_insecure=False)
    assert "allow_insecure=True" in str(info.value) and "https://" in str(info.value)
    check_transport(url, "the token", allow_insecure=True)
    monkeypatch.setenv("DLEXEC_ALLOW_INSECURE", "1")
    check_transport(url, "the token", allow_insecure=False)


@pytest.mark.parametrize("url", ["https://10.255.255.1", "wss://example.com/x", "http://127.0.0.1:8888",
                                 "http://127.2.3.4", "http://localhost:1/x", "http://LOCALHOST.", "ws://[::1]:8888"])
def test_check_transport_allows_https_and_loopback(url):
    check_transport(url, "the token", allow_insecure=False)


def test_check_transport_does_not_echo_url_credentials():
    with pytest.raises(ValueError) as info:
        check_transport("http://user:pa55word-xyz@10.255.255.1/", "the token", allow_insecure=False)
    assert "pa55word" not in str(info.value) and "10.255.255.1" in str(info.value)


def test_datalayer_client_refuses_plain_http_before_any_request(monkeypatch, no_network):
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE") as info:
        DatalayerClient(SECRET, REMOTE)
    assert_hidden(str(info.value), SECRET)
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE"):  # the IAM URL as well
        DatalayerClient(SECRET, "http://127.0.0.1:9", REMOTE)
    assert DatalayerClient(SECRET, REMOTE, allow_insecure=True).run_url == REMOTE
    assert DatalayerClient(run_url=REMOTE).token is None  # no token, nothing to protect
    monkeypatch.setenv("DLEXEC_ALLOW_INSECURE", "1")
    assert DatalayerClient(SECRET, REMOTE).run_url == REMOTE


def test_jupyter_backend_refuses_plain_http_before_any_request(monkeypatch, no_network):
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE") as info:
        JupyterServerRuntime(url=REMOTE, token=SECRET)
    assert_hidden(str(info.value), SECRET)
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE"):  # a token in the caller's headers counts too
        JupyterServerRuntime(url=REMOTE, headers={"Authorization": f"token {SECRET}"})
    JupyterServerRuntime(url=REMOTE, token=SECRET, allow_insecure=True)
    JupyterServerRuntime(url=REMOTE)  # no token, nothing to protect
    monkeypatch.setenv("DLEXEC_ALLOW_INSECURE", "1")
    JupyterServerRuntime(url=REMOTE, token=SECRET)


def test_runtime_service_refuses_plain_http_before_any_request(no_network):
    service = RuntimeService("x", backend="jupyter", url=REMOTE, token=SECRET)
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE") as info:
        service.start()
    assert_hidden(str(info.value), SECRET)


def test_datalayer_runtime_passes_allow_insecure_on(monkeypatch, no_network):
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE"):
        DatalayerRuntime(token=SECRET, run_url=REMOTE)
    runtime = DatalayerRuntime(pod_name="pod", ingress=REMOTE, jupyter_token=SECRET, token=SECRET, run_url=REMOTE,
                               allow_insecure=True)
    assert runtime.client.allow_insecure is True
    made = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            raise RuntimeError("recorded")

    monkeypatch.setattr(datalayer_runtime, "JupyterServerRuntime", Recorder)
    with pytest.raises(RuntimeError, match="recorded"):
        runtime.start()
    assert made[0]["allow_insecure"] is True

    # Without the opt-in, the ingress of an existing runtime is refused before any request.
    monkeypatch.setattr(datalayer_runtime, "JupyterServerRuntime", JupyterServerRuntime)
    secure_client = DatalayerClient(SECRET, "https://api.example")
    runtime = DatalayerRuntime(pod_name="pod", ingress=REMOTE, jupyter_token=SECRET, client=secure_client)
    with pytest.raises(ValueError, match="DLEXEC_ALLOW_INSECURE") as info:
        runtime.start()
    assert_hidden(str(info.value), SECRET)


def test_cli_refuses_plain_http_unless_allowed(capsys, monkeypatch, no_network):
    monkeypatch.setenv("DATALAYER_API_KEY", SECRET)
    assert main(["--run-url", REMOTE, "runtimes", "ls"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dlexec: ") and "DLEXEC_ALLOW_INSECURE=1" in err and "Traceback" not in err
    assert_hidden(err, SECRET)


# -- redirects -----------------------------------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 307 to ``redirect_to`` (if set) else 200 with a profile; records the headers it got."""

    redirect_to: str | None = None
    received: list

    def do_GET(self):  # noqa: N802
        self.received.append(dict(self.headers))
        if self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"success": True, "profile": {"handle_s": "redirected"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(redirect_to: str | None = None):
    handler = type("Handler", (_Recorder,), {"redirect_to": redirect_to, "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.received


@pytest.fixture
def redirecting():
    """Two servers: one on 127.0.0.1 that redirects to the other, reached as ``localhost``."""
    target, target_received = _serve()
    origin, origin_received = _serve(f"http://localhost:{target.server_port}")
    yield f"http://127.0.0.1:{origin.server_port}", origin_received, target_received
    for server in (origin, target):
        server.shutdown()
        server.server_close()


def _lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def test_a_redirect_to_another_host_carries_no_token(redirecting, monkeypatch):
    url, origin, target = redirecting
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", SECRET)
    with DatalayerClient(run_url=url, retry_deadline=1) as client:
        assert client.whoami() == {"handle_s": "redirected"}
    assert _lower(origin[0])["x-external-token"] == SECRET and _lower(origin[0])["authorization"] == f"Bearer {SECRET}"
    [received] = target
    assert "authorization" not in _lower(received) and "x-external-token" not in _lower(received)
    assert_hidden(json.dumps(received), SECRET)


def test_secret_session_keeps_headers_on_the_same_host_and_strips_chosen_ones_elsewhere(redirecting):
    url, origin, target = redirecting
    with SecretSession(secret_headers={"X-Custom-Key"}) as session:
        response = session.get(url + "/x", headers={"X-Custom-Key": SECRET, "X-Other": "kept"}, timeout=10)
    assert response.ok and _lower(target[0])["x-other"] == "kept" and "x-custom-key" not in _lower(target[0])
    same_host, received = _serve()
    try:
        base = f"http://127.0.0.1:{same_host.server_port}"
        with SecretSession(secret_headers={"X-Custom-Key"}) as session:
            session.get(base + "/redirect-me", headers={"X-Custom-Key": SECRET}, timeout=10,
                        allow_redirects=False)
        assert _lower(received[0])["x-custom-key"] == SECRET
    finally:
        same_host.shutdown()
        same_host.server_close()


# -- reprs, descriptions, errors -----------------------------------------------------------------

def test_runtime_model_repr_hides_the_runtime_token():
    service = RuntimeService("x", pod_name="pod", ingress="http://127.0.0.1:9", jupyter_token=SECRET,
                             token="api-KEY-42")
    assert service.model.jupyter_token == SECRET  # still there for those who need it
    assert_hidden(repr(service.model) + repr(service) + str(service.model), SECRET, "api-KEY-42")


def test_datalayer_runtime_describe_hides_the_tokens(no_network):
    runtime = DatalayerRuntime(pod_name="pod", ingress="http://127.0.0.1:9/x", jupyter_token=SECRET,
                               token="api-KEY-42", run_url="http://127.0.0.1:9")
    facts = runtime.describe()
    assert facts["pod_name"] == "pod" and facts["ingress"] == "http://127.0.0.1:9/x"
    assert_hidden(repr(facts) + json.dumps(facts) + repr(runtime) + repr(runtime.client), SECRET, "api-KEY-42")
    assert runtime.jupyter_token == SECRET


def test_jupyter_runtime_reprs_hide_the_token(no_network):
    runtime = JupyterServerRuntime(url="http://127.0.0.1:9", token=SECRET)
    assert_hidden(repr(runtime) + repr(runtime.describe()) + runtime.id, SECRET)


def test_errors_from_a_refused_token_do_not_show_it(jupyter_server):
    runtime = JupyterServerRuntime(url=jupyter_server.url, token="wrong-" + SECRET)
    with pytest.raises(RuntimeStartError) as info:
        runtime.start(30)
    assert "403" in str(info.value) and "check the token" in str(info.value)
    assert_hidden(str(info.value) + repr(info.value), SECRET)


def test_datalayer_errors_and_records_show_no_token(standin):
    with pytest.raises(DatalayerError) as info:
        DatalayerClient("wrong-" + SECRET, standin.url, retry_deadline=1).whoami()
    assert info.value.status == 401
    assert_hidden(str(info.value) + repr(info.value) + repr(info.value.__dict__), SECRET)
    record = RuntimeInfo.from_json({"pod_name": "pod", "ingress": "https://x.example", "token": SECRET})
    assert record.token == SECRET
    assert_hidden(repr(record), SECRET)


def test_redact():
    assert redact("a token abc-123 and abc-123 again", "abc-123", "", None) == "a token *** and *** again"
    assert redact("nothing", "abc") == "nothing"


# -- logs ----------------------------------------------------------------------------------------

def test_debug_logs_of_a_jupyter_connection_show_no_token(jupyter_server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger
    runtime = JupyterServerRuntime(url=jupyter_server.url, token=jupyter_server.token)
    try:
        runtime.start(30)
        assert runtime.kernel_id
    finally:
        runtime.terminate()
    names = {record.name for record in caplog.records}
    assert any(name.startswith("websockets") for name in names) and any(name.startswith("urllib3") for name in names)
    text = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert "Authorization" in text  # the header was logged, masked
    assert_hidden(text, jupyter_server.token, "test-token")


def test_debug_logs_of_the_datalayer_client_show_no_token(standin, caplog, monkeypatch):
    monkeypatch.setenv("DATALAYER_EXTERNAL_TOKEN", standin.token)
    caplog.set_level(logging.DEBUG)
    assert DatalayerClient(run_url=standin.url).whoami()["handle_s"] == "standin-user"
    client_side = [r for r in caplog.records if not r.name.startswith(("datalayer_standin", "tornado", "asyncio"))]
    assert any(r.name.startswith("urllib3") for r in client_side)
    assert_hidden("\n".join(r.getMessage() for r in client_side), standin.token)


# -- the command line ----------------------------------------------------------------------------

@pytest.fixture
def cli_env(standin, monkeypatch):
    for name, value in standin.env_vars().items():
        monkeypatch.setenv(name, value)
    return standin


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json_output_masks_tokens_unless_asked(capsys, cli_env):
    standin = cli_env
    status, out, err = run(capsys, "runtimes", "create", "python-cpu-env", "--time-reservation", "1", "--json")
    try:
        assert status == 0, err
        created = json.loads(out)
        [live] = standin.live_runtimes()
        token = live["token"]
        assert created["pod_name"] == live["pod_name"] and created["token"] == "***"
        assert_hidden(out + err, token, standin.token)
        status, out, err = run(capsys, "runtimes", "ls", "--json")
        assert status == 0 and [r["token"] for r in json.loads(out)] == ["***"]
        assert_hidden(out + err, token, standin.token)
        status, out, err = run(capsys, "runtimes", "ls")  # tables never show tokens
        assert status == 0 and live["pod_name"] in out
        assert_hidden(out + err, token, standin.token)
        status, out, _ = run(capsys, "runtimes", "ls", "--json", "--show-tokens")
        assert status == 0 and [r["token"] for r in json.loads(out)] == [token]
        status, out, err = run(capsys, "whoami", "--json")
        assert status == 0 and json.loads(out)["handle_s"] == "standin-user"
        assert_hidden(out + err, standin.token)
    finally:
        for runtime in standin.live_runtimes():
            main(["runtimes", "terminate", runtime["pod_name"]])
        capsys.readouterr()


def test_cli_token_file(capsys, cli_env, monkeypatch, tmp_path):
    standin = cli_env
    monkeypatch.delenv("DATALAYER_API_KEY")
    path = tmp_path / "token"
    path.write_text(standin.token + "\n")
    assert run(capsys, "--token-file", str(path), "runtimes", "ls") == (0, "no runtimes\n", "")
    path.write_text(standin.token + "\r\n")
    assert run(capsys, "runtimes", "ls", "--token-file", str(path)) == (0, "no runtimes\n", "")

    path.write_text("abcd-SECRET 1234\n")
    status, out, err = run(capsys, "--token-file", str(path), "runtimes", "ls")
    assert status == 2 and out == "" and err.startswith(f"dlexec: --token-file {path}") and "whitespace" in err
    assert_hidden(err, "abcd-SECRET 1234")

    status, out, err = run(capsys, "--token-file", str(tmp_path / "missing"), "runtimes", "ls")
    assert status == 2 and out == "" and err.startswith("dlexec: cannot read --token-file") and "Traceback" not in err

    with pytest.raises(SystemExit) as info:
        main(["--token", "x", "--token-file", str(path), "runtimes", "ls"])
    assert info.value.code == 2 and "not both" in capsys.readouterr().err


def test_cli_token_option_warns_but_works(capsys, cli_env, monkeypatch):
    monkeypatch.delenv("DATALAYER_API_KEY")
    status, out, err = run(capsys, "--token", cli_env.token, "runtimes", "ls")
    assert (status, out) == (0, "no runtimes\n")
    assert err.startswith("dlexec: warning: --token") and "process list" in err and "shell history" in err
    assert "DATALAYER_API_KEY" in err and "--token-file" in err
    assert_hidden(err, cli_env.token)


def test_cli_help_mentions_the_safe_ways(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--token-file" in out and "--show-tokens" in out and "DATALAYER_API_KEY" in out
