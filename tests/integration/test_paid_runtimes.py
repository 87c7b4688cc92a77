"""No paid runtime outlives its program: creates that are slow, unanswered, interrupted or refused.

Runs against the local Datalayer stand-in, whose ``create_fault`` creates the runtime (a real
Jupyter Server, listed) and then delays its answer, replaces it by a gateway error, or drops the
connection. Each test ends with no live runtime on the stand-in and none owned by this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests

from dlexec import DatalayerExecutor, RuntimeService, RuntimeStartError
from dlexec.datalayer import DatalayerClient, DatalayerError
from dlexec.runtimes import datalayer as datalayer_backend
from dlexec.runtimes.datalayer import DatalayerRuntime

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(120)

CREATE = r"/api/runtimes/v1/runtimes$"


@pytest.fixture
def paid(standin, monkeypatch):
    """The environment of a user running on Datalayer; afterwards no runtime may be left, anywhere."""
    for key, value in standin.env_vars().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DLEXEC_BACKEND", "datalayer")
    standin.capacity, standin.warmup_502, standin.fail_deletes, standin.create_fault = None, 0, False, None
    yield standin
    standin.create_fault = None
    standin.clear_faults()
    for runtime in wait_no_live(standin, timeout=5):  # a failed test's runtimes: not the next test's problem
        standin.expire(runtime["pod_name"])


def assert_none_left(standin) -> None:
    """No live runtime on the stand-in (polled: deletions may run in other threads), none owned here."""
    assert wait_no_live(standin) == [], "a runtime was left running"
    # The stand-in ends a runtime when it takes the DELETE; the client forgets it when the
    # answer arrives, a moment later, in the thread that deleted it.
    deadline = time.monotonic() + 10
    while datalayer_backend.owned_runtimes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert datalayer_backend.owned_runtimes() == []


def wait_no_live(standin, timeout: float = 20.0) -> list[dict]:
    """The stand-in's live runtimes once there are none, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while standin.live_runtimes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return standin.live_runtimes()


def creates(standin, prefix: str) -> list[dict]:
    """The bodies of the create requests whose given_name starts with ``prefix``."""
    return [body for _, _, body, _ in standin.sent("POST", CREATE)
            if (body or {}).get("given_name", "").startswith(prefix)]


def wait_create_sent(standin, prefix: str, timeout: float = 30.0, since: int = 0) -> dict:
    """The first create request of ``prefix`` (after the first ``since`` of them), once the stand-in has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = creates(standin, prefix)[since:]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no create request for {prefix!r} within {timeout} s")


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Run ``fn`` in a thread; the list gets what it returned or raised."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def script(code: str, tmp_path) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter (dlexec importable), stdin/stdout piped."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


# -- terminate() while the create request is in flight ------------------------------------------------------


def test_terminate_during_a_slow_create_deletes_the_runtime_when_it_answers(paid):
    paid.create_fault = ("delay", 4)
    rt = RuntimeService("slow-terminated", backend="datalayer")
    thread, outcome = in_thread(rt.start)
    wait_create_sent(paid, "slow-terminated")
    started = time.monotonic()
    rt.terminate()
    assert time.monotonic() - started < 2, "terminate() waited for the create request"
    thread.join(30)
    assert not thread.is_alive() and isinstance(outcome[0], RuntimeStartError), outcome
    assert "terminate" in str(outcome[0])
    assert_none_left(paid)


def test_terminate_workers_during_a_slow_create_leaves_no_runtime(paid):
    # The executor waits start_timeout + 5 s for a starting worker, then terminates it while
    # its create request is still in flight (answered after 8 s).
    paid.create_fault = ("delay", 8)
    since = len(creates(paid, "dlexec-worker"))
    ex = DatalayerExecutor(1, backend="datalayer", start_timeout=1)
    future = ex.submit(pow, 2, 3)
    wait_create_sent(paid, "dlexec-worker", since=since)
    ex.terminate_workers()
    with pytest.raises(Exception):  # noqa: B017 - cancelled or broken, either way not run
        future.result(timeout=30)
    assert_none_left(paid)


# -- unclear outcomes: never sent twice, reconciled by name --------------------------------------------------


@pytest.mark.parametrize("fault", ["504-after-create", "503-after-create", "drop-after-create",
                                   ("delay-then-504", 1.0)])
def test_an_unclear_create_is_sent_once_and_its_runtime_adopted(paid, fault):
    paid.create_fault = fault
    before = len(creates(paid, "unclear"))
    with RuntimeService("unclear", backend="datalayer", retry_deadline=3) as rt:
        paid.create_fault = None
        assert rt.execute_code("print(6 * 7)").stdout == "42\n"
        pod = rt.pod_name
        assert [r["pod_name"] for r in paid.live_runtimes()] == [pod]
    assert len(creates(paid, "unclear")) - before == 1
    assert_none_left(paid)


def test_a_read_timeout_on_create_is_reconciled_not_retried(paid):
    paid.create_fault = ("delay", 3)
    client = DatalayerClient(timeout=1.0, retry_deadline=5)
    runtime = DatalayerRuntime("timed-out", client=client)
    try:
        runtime.start()
        assert runtime.pod_name in {r["pod_name"] for r in paid.live_runtimes()}
    finally:
        runtime.terminate()
    assert len(creates(paid, "timed-out")) == 1
    assert_none_left(paid)


def test_a_create_refused_fails_at_once_and_creates_nothing(paid, monkeypatch):
    from dlexec.datalayer.transport import _not_sent

    # Connection refused: the request never left, so nothing was created; and nothing listening
    # is a wrong URL or a service that is down, not worth retrying (issue 14): a clear error now.
    client = DatalayerClient(retry_deadline=5)
    send, refused = client._session.request, []

    def request(method, url, **kwargs):
        if method == "POST" and not refused:
            try:
                requests.post("http://127.0.0.1:9/api/runtimes/v1/runtimes", timeout=5)  # nothing listens there
            except requests.ConnectionError as exc:
                refused.append(exc)
                raise
        return send(method, url, **kwargs)

    monkeypatch.setattr(client._session, "request", request)
    with pytest.raises(DatalayerError, match=r"nothing is listening at .* \(connection refused\)"):
        client.create_runtime("python-cpu-env", 1, given_name="refused-once")
    assert len(refused) == 1 and _not_sent(refused[0]) and creates(paid, "refused-once") == []
    # What may still be retried safely: a connect timeout (never sent), not a read timeout.
    assert _not_sent(requests.ConnectTimeout("connect timeout"))
    assert not _not_sent(requests.ReadTimeout("read timeout"))
    assert not _not_sent(requests.ConnectionError("Connection aborted."))
    assert_none_left(paid)


def test_the_api_no_capacity_503_is_still_retried(paid):
    paid.capacity = 0
    with pytest.raises(RuntimeStartError, match="no runtime available"):
        RuntimeService("full", backend="datalayer", retry_deadline=1.2).start()
    assert len(creates(paid, "full")) >= 2
    assert_none_left(paid)


def test_a_lost_create_whose_runtime_cannot_be_listed_is_reported(paid):
    paid.create_fault = "504-after-create"
    for _ in range(12):  # every listing fails (the GET retries included)
        paid.fail_next("GET", CREATE, 500, "listing is down")
    with pytest.warns(RuntimeWarning, match=r"lost-list-.*dlexec runtimes ls"), \
            pytest.raises(RuntimeStartError) as info:
        RuntimeService("lost-list", backend="datalayer", retry_deadline=1).start()
    assert "lost-list-" in str(info.value) and "dlexec runtimes ls" in str(info.value)
    assert len(creates(paid, "lost-list")) == 1
    paid.clear_faults()
    for runtime in paid.live_runtimes():  # what the user would do, as the message says
        assert runtime["given_name"].startswith("lost-list")
        assert DatalayerClient().delete_runtime(runtime["pod_name"])
    assert_none_left(paid)


# -- Ctrl-C and exit while the create request is in flight ---------------------------------------------------


def test_ctrl_c_during_create_deletes_the_runtime_then_propagates(paid, tmp_path):
    paid.create_fault = ("delay", 30)
    with script("""
        from dlexec import RuntimeService
        RuntimeService("ctrl-c", backend="datalayer").start()
        print("NOT INTERRUPTED", flush=True)
    """, tmp_path) as process:
        try:
            wait_create_sent(paid, "ctrl-c")
            assert len(paid.live_runtimes()) == 1
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert "KeyboardInterrupt" in err and "NOT INTERRUPTED" not in out, err
    assert paid.live_runtimes() == [], err  # deleted before the process exited
    assert_none_left(paid)


@pytest.mark.parametrize("delay, wait", [(3, 15.0), (60, 1.0)], ids=["answered-at-exit", "never-answered"])
def test_exiting_during_create_deletes_the_runtime(paid, tmp_path, delay, wait):
    paid.create_fault = ("delay", delay)
    name = f"at-exit-{delay}"
    with script(f"""
        import sys, threading
        from dlexec import RuntimeService
        from dlexec.runtimes import datalayer
        datalayer.EXIT_CREATE_WAIT = {wait}
        rt = RuntimeService("{name}", backend="datalayer")
        threading.Thread(target=rt.start, daemon=True).start()
        sys.stdin.readline()  # the test says when the create request is in flight
        print("EXITING", flush=True)
    """, tmp_path) as process:
        try:
            wait_create_sent(paid, name)
            assert len(paid.live_runtimes()) == 1
            out, err = process.communicate("go\n", timeout=60)
        finally:
            process.kill()
    assert "EXITING" in out and process.returncode == 0, err
    assert paid.live_runtimes() == [], err  # deleted before the process exited
    assert_none_left(paid)


# -- refused before any request, names, secrets --------------------------------------------------------------


@pytest.mark.parametrize("minutes", [0, -5, float("nan"), float("inf"), "10", None])
def test_a_bad_time_reservation_is_refused_before_any_request(paid, minutes):
    before = len(paid.requests)
    with pytest.raises(ValueError, match="time_reservation"):
        DatalayerRuntime("bad-minutes", time_reservation=minutes)
    with pytest.raises(ValueError, match="time_reservation"):
        DatalayerClient().create_runtime("python-cpu-env", minutes)
    assert paid.requests[before:] == []
    assert_none_left(paid)


@pytest.mark.parametrize("rate", [0, None, "n/a"])
def test_an_environment_without_burning_rate_is_refused_before_posting(paid, rate):
    free = dict(paid.environments[0], name="free-env", burning_rate=rate)
    paid.environments.append(free)
    try:
        with pytest.raises(RuntimeStartError, match="burning rate") as info:
            RuntimeService("free", backend="datalayer", environment="free-env").start()
        assert isinstance(info.value.__cause__, ValueError)
        assert "free-env" in str(info.value)
    finally:
        paid.environments.remove(free)
    assert creates(paid, "free") == []
    assert_none_left(paid)


def test_every_create_has_a_unique_given_name_keeping_the_name(paid):
    runtimes = [DatalayerRuntime("same-name"), DatalayerRuntime("same-name")]
    try:
        for runtime in runtimes:
            runtime.start()
    finally:
        for runtime in runtimes:
            runtime.terminate()
    names = [body["given_name"] for body in creates(paid, "same-name")]
    assert len(names) == 2 and len(set(names)) == 2
    assert names == [r.given_name for r in runtimes]
    assert all(name.startswith("same-name-") and len(name) > len("same-name-") for name in names)
    assert_none_left(paid)


def test_a_runtime_without_ingress_is_deleted_and_its_token_not_shown(paid):
    paid.create_fault = ("omit", ("ingress",))
    with pytest.raises(RuntimeStartError, match="ingress") as info:
        RuntimeService("no-ingress", backend="datalayer").start()
    records = [r for r in paid.runtimes.values() if r.info["given_name"].startswith("no-ingress")]
    assert len(records) == 1
    token = records[0].token
    assert token not in str(info.value) and token not in repr(info.value)
    assert_none_left(paid)
