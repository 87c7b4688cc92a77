"""Tests of the Datalayer stand-in itself (tests/datalayer_standin.py), with plain requests/websockets clients.

Deliberately independent of dlexec. Few runtimes are started (each is a real Jupyter Server process).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest
import requests
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from ..datalayer_standin import INGRESS_PREFIX, DatalayerStandIn

TOKEN = "secret-token"
RT = "/api/runtimes/v1"
IAM = "/api/iam/v1"
V1 = "v1.kernel.websocket.jupyter.org"
RUNTIME_KEYS = {"pod_name", "uid", "given_name", "environment_name", "environment_title", "type", "burning_rate",
                "token", "ingress", "reservation_id", "started_at", "expired_at"}
ENV_KEYS = {"name", "title", "description", "language", "burning_rate", "owner", "visibility", "resources",
            "dockerImage", "example", "snippets", "contents", "runtime", "resourcesRanges", "dockerRegistry", "icon",
            "enabled", "tags"}
SNAPSHOT_KEYS = {"uid", "name", "description", "environment", "metadata", "status", "updated_at"}
BIG = 12 * 1024 * 1024  # above tornado's and websockets' default 10 MiB / 1 MiB message limits


@pytest.fixture(scope="module")
def dl():
    with DatalayerStandIn(token=TOKEN) as standin:
        yield standin
    assert not standin.process_ids(), "stand-in processes survived stop()"


@pytest.fixture(autouse=True)
def _reset_faults_and_runtimes(request):
    """Whatever a test leaves behind (even when it fails) must not leak into the next one."""
    yield
    if "dl" in request.fixturenames:
        standin = request.getfixturevalue("dl")
        standin.capacity, standin.warmup_502, standin.fail_deletes = None, 0, False
        for runtime in standin.live_runtimes():
            standin.expire(runtime["pod_name"])


def api(dl, method, path, token=TOKEN, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, dl.url + path, headers=headers, timeout=30, **kwargs)


def create(dl, env="python-cpu-env", credits_limit=30.0, **extra) -> requests.Response:
    body = {"type": "notebook", "environment_name": env, "credits_limit": credits_limit, **extra}
    return api(dl, "POST", RT + "/runtimes", json=body)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids, timeout=10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive:
            time.sleep(0.05)
    return alive


def wait_ingress(runtime, timeout=60.0) -> list[int]:
    """Poll {ingress}/api/status through the proxy until 200; the statuses seen (502s during warm-up)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(runtime["ingress"] + "/api/status", timeout=10,
                         headers={"Authorization": f"Bearer {runtime['token']}"})
        seen.append(r.status_code)
        if r.status_code == 200:
            return seen
        assert r.status_code == 502, (r.status_code, r.text)
        assert r.json()["success"] is False and r.json()["message"]
        time.sleep(0.1)
    raise AssertionError(f"ingress not ready after {timeout} s: {seen[-5:]}")


def pack_v1(channel: str, msg: dict, buffers=()) -> bytes:
    """Kernel message in the v1.kernel.websocket.jupyter.org binary framing (doc §4.3)."""
    parts = [channel.encode()]
    parts += [json.dumps(msg[key], default=json_default).encode()
              for key in ("header", "parent_header", "metadata", "content")]
    parts += list(buffers)
    count = len(parts) + 1
    offsets = [8 * (count + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return count.to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets) + b"".join(parts)


def unpack_v1(data: bytes) -> tuple[str, dict]:
    count = int.from_bytes(data[:8], "little")
    offsets = [int.from_bytes(data[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    channel = data[offsets[0]:offsets[1]].decode()
    parts = [data[offsets[i]:offsets[i + 1]] for i in range(1, count - 1)]
    keys = ("header", "parent_header", "metadata", "content")
    msg = {key: json.loads(part) for key, part in zip(keys, parts[:4], strict=True)}
    msg["buffers"] = parts[4:]
    return channel, msg


def receive(ws, predicate, timeout=30.0, sizes=None):
    deadline = time.monotonic() + timeout
    while True:
        data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(data, bytes), "v1 subprotocol frames are binary"
        if sizes is not None:
            sizes.append(len(data))
        channel, msg = unpack_v1(data)
        if predicate(channel, msg):
            return channel, msg


@pytest.mark.timeout(30)
def test_auth_iam_environments_and_errors(dl):
    # auth
    for token_header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"token {TOKEN}"}):
        r = requests.get(dl.url + RT + "/environments", headers=token_header, timeout=10)
        assert r.status_code == 401
        assert r.json()["success"] is False and r.json()["message"]
    assert api(dl, "GET", RT + "/ping", token=None).json()["success"] is True

    # environments
    r = api(dl, "GET", RT + "/environments")
    assert r.status_code == 200 and r.json()["success"] is True
    envs = {e["name"]: e for e in r.json()["environments"]}
    assert {"python-cpu-env", "python-gpu-env"} <= set(envs)
    for env in envs.values():
        assert ENV_KEYS <= set(env), ENV_KEYS - set(env)
        assert isinstance(env["burning_rate"], float) and env["burning_rate"] > 0
    assert envs["python-cpu-env"]["burning_rate"] < envs["python-gpu-env"]["burning_rate"]

    # IAM
    r = api(dl, "POST", IAM + "/login", token=None, json={"token": TOKEN})
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["user"]["handle_s"]
    session_token = r.json()["token"]
    profile = api(dl, "GET", IAM + "/whoami", token=session_token).json()["profile"]
    assert {"id", "uid", "handle_s", "email_s", "first_name_t", "last_name_t"} <= set(profile)
    assert api(dl, "POST", IAM + "/login", token=None, json={"token": "nope"}).status_code == 401
    r = api(dl, "POST", IAM + "/login", token=None, json={"handle": dl.handle, "password": dl.password})
    assert r.status_code == 200
    credits = api(dl, "GET", IAM + "/usage/credits").json()
    assert credits["success"] is True and credits["credits"]["credits"] > 0 and credits["credits"]["quota"] is None
    assert credits["reservations"] == []

    # R1 errors, without starting anything
    before = len(dl.runtimes)
    r = create(dl, env="no-such-env")
    assert r.status_code == 404 and "no-such-env" in r.json()["message"]
    dl.capacity = 0
    try:
        r = create(dl)
        assert r.status_code == 503 and "no runtime available" in r.json()["message"].lower()
    finally:
        dl.capacity = None
    assert len(dl.runtimes) == before

    # fail_next, 404s, recorded requests
    dl.fail_next("GET", r"/environments$", 503, "maintenance")
    r = api(dl, "GET", RT + "/environments")
    assert (r.status_code, r.json()) == (503, {"success": False, "message": "maintenance"})
    assert api(dl, "GET", RT + "/environments").status_code == 200
    assert api(dl, "GET", RT + "/runtimes/runtime-nope").status_code == 404
    assert api(dl, "DELETE", RT + "/runtimes/runtime-nope").status_code == 404
    assert api(dl, "GET", RT + "/nothing-here").status_code == 404
    _, _, body, headers = [req for req in dl.requests if req[0] == "POST" and req[1] == RT + "/runtimes"][-1]
    assert body["environment_name"] == "python-cpu-env" and headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.timeout(90)
def test_runtime_lifecycle_through_the_ingress(dl):
    t0 = time.monotonic()
    r = create(dl, credits_limit=30.0, given_name="lifecycle")
    create_duration = time.monotonic() - t0
    assert r.status_code == 201, r.text
    assert r.json()["success"] is True
    runtime = r.json()["runtime"]
    assert set(runtime) == RUNTIME_KEYS
    pod = runtime["pod_name"]
    assert re.fullmatch(r"runtime-[0-9a-z]{26}", pod)
    assert runtime["ingress"] == f"{dl.url}{INGRESS_PREFIX}/{pod}"
    assert runtime["given_name"] == "lifecycle" and runtime["environment_name"] == "python-cpu-env"
    assert runtime["type"] == "notebook" and runtime["burning_rate"] == 0.01
    assert isinstance(runtime["started_at"], str) and isinstance(runtime["expired_at"], str)
    assert float(runtime["expired_at"]) - float(runtime["started_at"]) == pytest.approx(3000, abs=0.01)
    assert create_duration < 3, "R1 must not wait for the Jupyter Server"
    record = dl.runtime_record(pod)
    server_pid = record.pid
    assert pid_alive(server_pid) and record.from_snapshot is None

    wait_ingress(runtime)
    auth = {"Authorization": f"Bearer {runtime['token']}"}
    assert requests.get(runtime["ingress"] + "/api/kernels", timeout=10).status_code in (401, 403)
    # the ingress takes the runtime token in the SDK's form only: Bearer on HTTP (not Jupyter's "token ...")
    r = requests.get(runtime["ingress"] + "/api/kernels", headers={"Authorization": f"token {runtime['token']}"},
                     timeout=10)
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    assert requests.get(runtime["ingress"] + "/api/kernels", headers=auth, timeout=10).status_code == 200

    dl.fail_next("POST", r"/api/kernels$", 503, "injected")
    r = requests.post(runtime["ingress"] + "/api/kernels", json={"name": "python3"}, headers=auth, timeout=60)
    assert (r.status_code, r.json()["message"]) == (503, "injected")
    r = requests.post(runtime["ingress"] + "/api/kernels", json={"name": "python3"}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]

    session = Session(username="standin-test")
    ws_url = (runtime["ingress"].replace("http", "ws", 1)
              + f"/api/kernels/{kernel_id}/channels?session_id={session.session}&token={runtime['token']}")
    sizes: list[int] = []
    with connect(ws_url, subprotocols=[V1], max_size=None, open_timeout=30) as ws:
        assert ws.subprotocol == V1
        # kernel_info_request -> reply (retry: the kernel may still be starting)
        deadline = time.monotonic() + 30
        while True:
            request = session.msg("kernel_info_request")
            ws.send(pack_v1("shell", request))
            try:
                _, reply = receive(ws, lambda ch, m, msg_id=request["header"]["msg_id"]: ch == "shell"
                                   and m["parent_header"].get("msg_id") == msg_id, timeout=2)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        assert reply["header"]["msg_type"] == "kernel_info_reply"
        assert reply["content"]["status"] == "ok" and reply["content"]["language_info"]["name"] == "python"

        # a large binary frame client -> kernel
        request = session.msg("kernel_info_request")
        ws.send(pack_v1("shell", request, buffers=[os.urandom(BIG)]))
        receive(ws, lambda ch, m: ch == "shell" and m["parent_header"].get("msg_id") == request["header"]["msg_id"])

        # a large frame kernel -> client (in the shell reply: IOPub output keeps Jupyter's rate limits), and
        # the kernel's pid (on IOPub)
        request = session.msg("execute_request", content={
            "code": "import os; print('PID', os.getpid(), flush=True)", "silent": False, "store_history": False,
            "user_expressions": {"big": f"'x' * {BIG}"}, "allow_stdin": False, "stop_on_error": True})
        ws.send(pack_v1("shell", request))
        out, replies, idle = [], [], []

        def done(channel, msg):
            if msg["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                return False
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif channel == "shell":
                replies.append(msg)
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle.append(msg)
            return bool(replies and idle)

        receive(ws, done, sizes=sizes)
        assert replies[0]["content"]["status"] == "ok"
        assert len(replies[0]["content"]["user_expressions"]["big"]["data"]["text/plain"]) >= BIG
        assert max(sizes) > BIG
    kernel_pid = int(re.search(r"PID (\d+)", "".join(out)).group(1))
    assert pid_alive(kernel_pid)

    # the legacy protocol (no subprotocol, JSON text frames) passes too
    with connect(ws_url, max_size=None, open_timeout=30) as ws:
        assert ws.subprotocol is None
        request = session.msg("kernel_info_request")
        ws.send(json.dumps({**request, "channel": "shell", "buffers": []}, default=json_default))
        while True:
            data = ws.recv(timeout=30)
            assert isinstance(data, str)
            msg = json.loads(data)
            if msg["channel"] == "shell" and msg["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                break
        assert msg["header"]["msg_type"] == "kernel_info_reply"

    # the WebSocket needs the token as the `token` query parameter (the SDK's form), not in a "token" header
    bare_url = ws_url.split("&token=")[0]
    for headers in ({}, {"Authorization": f"token {runtime['token']}"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(bare_url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        connect(ws_url, additional_headers={"Authorization": f"token {runtime['token']}"}, open_timeout=30)

    # plain HTTP passthrough: empty-body POST answered 204, Jupyter's own 404
    r = requests.post(runtime["ingress"] + f"/api/kernels/{kernel_id}/interrupt", headers=auth, timeout=30)
    assert r.status_code == 204
    unknown = str(uuid.uuid4())
    r = requests.delete(runtime["ingress"] + f"/api/kernels/{unknown}", headers=auth, timeout=30)
    assert r.status_code == 404 and unknown in r.json()["message"]

    # listing, one, credits reservations
    assert [rt["pod_name"] for rt in api(dl, "GET", RT + "/runtimes").json()["runtimes"]] == [pod]
    assert api(dl, "GET", RT + f"/runtimes/{pod}").json()["runtime"] == runtime
    assert dl.live_runtimes() == [runtime]
    reservations = api(dl, "GET", IAM + "/usage/credits").json()["reservations"]
    assert [(res["resource"], res["credits"], res["id"]) for res in reservations] == \
        [(pod, 30.0, runtime["reservation_id"])]

    # snapshot without stop
    r = api(dl, "POST", RT + "/runtime-snapshots", json={"pod_name": pod, "name": "snap-a", "description": "A",
                                                          "stop": False})
    assert r.status_code == 201 and r.json()["success"] is True
    snapshot = r.json()["snapshot"]
    assert SNAPSHOT_KEYS <= set(snapshot)
    assert (snapshot["name"], snapshot["description"], snapshot["environment"]) == ("snap-a", "A", "python-cpu-env")
    assert api(dl, "GET", RT + "/runtime-snapshots").json()["snapshots"] == [snapshot] == dl.snapshots
    assert api(dl, "GET", RT + f"/runtime-snapshots/{snapshot['uid']}").json()["snapshot"] == snapshot
    assert dl.live_runtimes() == [runtime]

    # failing delete, then delete
    dl.fail_deletes = True
    try:
        r = api(dl, "DELETE", RT + f"/runtimes/{pod}")
        assert r.status_code == 500 and r.json()["message"]
        assert dl.live_runtimes() == [runtime] and pid_alive(server_pid)
    finally:
        dl.fail_deletes = False
    r = api(dl, "DELETE", RT + f"/runtimes/{pod}")
    assert r.status_code == 204 and r.content == b""
    assert wait_gone([server_pid, kernel_pid]) == []
    assert dl.live_runtimes() == [] and record.end_reason == "deleted"
    assert api(dl, "GET", RT + f"/runtimes/{pod}").status_code == 404
    assert api(dl, "DELETE", RT + f"/runtimes/{pod}").status_code == 404
    assert requests.get(runtime["ingress"] + "/api/status", headers=auth, timeout=10).status_code in (404, 502)

    # snapshot delete
    assert api(dl, "DELETE", RT + f"/runtime-snapshots/{snapshot['uid']}").status_code == 204
    assert api(dl, "DELETE", RT + f"/runtime-snapshots/{snapshot['uid']}").status_code == 404
    assert api(dl, "GET", RT + f"/runtime-snapshots/{snapshot['uid']}").status_code == 404


@pytest.mark.timeout(90)
def test_capacity_snapshot_stop_from_warmup_and_expire(dl):
    dl.capacity = 1
    try:
        first = create(dl).json()["runtime"]
        r = create(dl)
        assert r.status_code == 503 and "no runtime available" in r.json()["message"].lower()
        first_pid = dl.runtime_record(first["pod_name"]).pid

        r = api(dl, "POST", RT + "/runtime-snapshots",
                json={"pod_name": first["pod_name"], "name": "snap-b", "description": "B", "stop": True})
        assert r.status_code == 201
        snapshot = r.json()["snapshot"]
        assert dl.live_runtimes() == [] and wait_gone([first_pid]) == []
        assert dl.runtime_record(first["pod_name"]).end_reason == "snapshot"

        assert create(dl, **{"from": "NO-SUCH-SNAPSHOT"}).status_code == 404
        dl.warmup_502 = 2
        r = create(dl, **{"from": snapshot["uid"]})
        dl.warmup_502 = 0
        assert r.status_code == 201, r.text
        runtime = r.json()["runtime"]
        pod = runtime["pod_name"]
        record = dl.runtime_record(pod)
        assert record.from_snapshot == snapshot["uid"]
        seen = wait_ingress(runtime)
        assert seen[-3:] == [502, 502, 200] and record.forced_502_served == 2

        # expiry with a kernel WebSocket open: the connection closes
        r = requests.post(runtime["ingress"] + "/api/kernels", json={"name": "python3"}, timeout=60,
                          headers={"Authorization": f"Bearer {runtime['token']}"})
        assert r.status_code == 201
        ws_url = (runtime["ingress"].replace("http", "ws", 1)
                  + f"/api/kernels/{r.json()['id']}/channels?token={runtime['token']}")
        with connect(ws_url, subprotocols=[V1], max_size=None, open_timeout=30) as ws:
            assert dl.expire(pod) is True
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
        assert dl.live_runtimes() == [] and record.end_reason == "expired"
        assert wait_gone([record.pid]) == []
        assert api(dl, "GET", RT + f"/runtimes/{pod}").status_code == 404
        assert requests.get(runtime["ingress"] + "/api/status", timeout=10).status_code in (404, 502)
        assert dl.expire(pod) is False
    finally:
        dl.capacity = None
        dl.warmup_502 = 0


@pytest.mark.timeout(60)
def test_automatic_expiry_and_stop_kill_everything():
    standin = DatalayerStandIn(token="other-token").start()
    try:
        body = {"type": "notebook", "environment_name": "python-cpu-env", "credits_limit": 0.02}
        headers = {"Authorization": "Bearer other-token"}
        short = requests.post(standin.url + RT + "/runtimes", json=body, headers=headers, timeout=30).json()["runtime"]
        assert float(short["expired_at"]) - float(short["started_at"]) == pytest.approx(2.0, abs=0.01)
        body["credits_limit"] = 10.0
        long = requests.post(standin.url + RT + "/runtimes", json=body, headers=headers, timeout=30).json()["runtime"]
        short_record = standin.runtime_record(short["pod_name"])

        # a kernel on the long-lived runtime, so that stop() has a kernel process to kill
        wait_ingress(long)
        r = requests.post(long["ingress"] + "/api/kernels", json={"name": "python3"}, timeout=60,
                          headers={"Authorization": f"Bearer {long['token']}"})
        assert r.status_code == 201

        deadline = time.monotonic() + 10
        while short_record.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        assert short_record.end_reason == "expired"
        assert time.time() >= float(short["expired_at"])
        assert [rt["pod_name"] for rt in standin.live_runtimes()] == [long["pod_name"]]
        assert wait_gone([short_record.pid]) == []

        pids = standin.process_ids(long["pod_name"])
        assert len(pids) >= 2  # the Jupyter Server and its kernel
    finally:
        standin.stop()
    assert wait_gone(pids) == []
    assert standin.process_ids() == []
    assert standin.live_runtimes() == []
