"""A local stand-in of the Datalayer REST API (IAM + runtimes), for tests.

The Datalayer cloud cannot be reached from the machines dlexec is tested on. This module serves, on 127.0.0.1,
the subset of the API documented in ``/work/shared/reference/datalayer-api.md`` (sections 1, 2, 5, 6), and backs
every runtime with a REAL Jupyter Server process reachable through a reverse proxy (HTTP and WebSocket) under the
runtime's ``ingress`` URL, as a real Datalayer ingress would.

Usage::

    from tests.datalayer_standin import DatalayerStandIn

    @pytest.fixture(scope="module")
    def datalayer():
        with DatalayerStandIn(token="secret-token") as dl:
            yield dl            # dl.url is both the run URL and the IAM URL; dl.env_vars() for monkeypatch

    def test_x(datalayer, monkeypatch):
        for key, value in datalayer.env_vars().items():
            monkeypatch.setenv(key, value)
        datalayer.capacity = 1                                   # faults can be set at any time
        datalayer.fail_next("POST", r"/runtimes$", 503, "try later")

Endpoints (all under ``dl.url``; every response body is a JSON object with ``success`` and ``message``, except
204 responses which have no body):

    POST   /api/iam/v1/login                      A1 (no auth needed)
    GET    /api/iam/v1/whoami                     A2
    GET    /api/iam/v1/usage/credits              A3
    GET    /api/runtimes/v1/ping                  X1 (no auth needed)
    GET    /api/runtimes/v1/environments          E1
    POST   /api/runtimes/v1/runtimes              R1 -> 201
    GET    /api/runtimes/v1/runtimes              R2
    GET    /api/runtimes/v1/runtimes/{pod_name}   R3
    PUT    /api/runtimes/v1/runtimes/{pod_name}   R4 (records ``from``/``capabilities`` only)
    DELETE /api/runtimes/v1/runtimes/{pod_name}   R5 -> 204
    POST   /api/runtimes/v1/runtime-snapshots     S1 -> 201
    GET    /api/runtimes/v1/runtime-snapshots     S2
    GET    /api/runtimes/v1/runtime-snapshots/{uid}   S3
    DELETE /api/runtimes/v1/runtime-snapshots/{uid}   S4 -> 204
    *      /jupyter/server/pool/{pod_name}/...    reverse proxy to the runtime's Jupyter Server (the ``ingress``)

The ingress takes the runtime's token only in the form the SDK's kernel client sends (doc §1.3):
``Authorization: Bearer <token>`` on HTTP and the ``token`` query parameter on the WebSocket; Jupyter's
``Authorization: token <token>`` is answered 401, so that a client that relies on it is caught.
The snapshot endpoints are also served under their later name ``sandbox-snapshots`` (``snapshot_paths`` says
which of the two names exist).

Runtimes: R1 spawns ``python -m jupyter_server`` (base_url = the ingress path, token = the RUNTIME ``token``) and
answers at once; until that server accepts connections the ingress answers 502 (JSON), as a warming-up ingress does.
WebSocket frames up to 1 GB pass both ways (checked by hand: 1e9-byte frames, ~25-30 MB/s on a 2-core machine).
The runtimes' Jupyter Servers otherwise keep Jupyter's defaults, including the IOPub rate limits
(``ServerApp.iopub_data_rate_limit`` 1e6 bytes/s): big IOPub output is dropped with a warning stream, exactly as on a
vanilla server; shell replies are not limited. ``DatalayerStandIn(server_args=[...])`` adds server arguments.

Where the reference document is silent, the choices made are marked "Doc silent" in comments.

This module must not import dlexec, and dlexec must not import it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import copy
import ctypes
import datetime
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.iostream
import tornado.netutil
import tornado.web
import tornado.websocket

__all__ = ["DatalayerStandIn", "RuntimeRecord", "default_environments", "new_ulid"]

IAM_PREFIX = "/api/iam/v1"
RUNTIMES_PREFIX = "/api/runtimes/v1"
INGRESS_PREFIX = "/jupyter/server/pool"

#: Largest WebSocket message the runtimes' Jupyter Servers accept (the brief: frames up to 1 GB must pass).
JUPYTER_MAX_MESSAGE_SIZE = 1024**3
#: The proxy itself must never be the bottleneck: allow a bit more than the Jupyter Server does.
PROXY_MAX_SIZE = 2 * 1024**3

#: Environment variables set on every runtime's Jupyter Server; kernels (and anything they start) inherit them,
#: which lets the stand-in find and kill all of a runtime's processes even after they were re-parented.
_ENV_INSTANCE = "DATALAYER_STANDIN_INSTANCE"
_ENV_POD = "DATALAYER_STANDIN_POD"

_access_log = logging.getLogger("datalayer_standin.access")

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_ulid() -> str:
    """A ULID-like id: 26 lowercase Crockford base-32 chars (48-bit ms timestamp + 80 random bits)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _iso(ts: float | None = None) -> str:
    """ISO 8601 UTC timestamp (used where the doc gives no format: credits, snapshots, profiles)."""
    moment = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _epoch_str(ts: float) -> str:
    # Doc §1.2: both SDKs treat started_at/expired_at as Unix epoch seconds, "possibly sent as strings" (§9.6).
    # We send strings (the harder case for clients), with millisecond precision.
    return f"{ts:.3f}"


def default_environments() -> list[dict[str, Any]]:
    """The environments served by E1. Keys are those listed in doc §1.2 (E1); values are made up."""

    def env(name, title, description, rate, resources, image, tags, template):
        return {
            "name": name,
            "title": title,
            "description": description,
            "language": "python",
            "burning_rate": rate,  # credits per second (doc §6); a JSON number here (the SDK also copes with str)
            "owner": "datalayer",
            "visibility": "public",
            "resources": resources,
            "dockerImage": image,
            "example": "import sys\nprint(sys.version)",
            "snippets": [{"title": "Python version", "description": "Print the Python version.",
                          "code": "import sys\nprint(sys.version)"}],
            "contents": [],
            "runtime": {"givenNameTemplate": template},
            "resourcesRanges": {"default": {"requests": resources["requests"], "limits": resources["limits"]}},
            "dockerRegistry": "docker.io",
            "icon": "https://assets.datalayer.tech/icons/python.svg",
            "enabled": True,
            "tags": tags,
        }

    return [
        env("python-cpu-env", "Python CPU Environment",
            "A Python environment with CPU only, for data analysis (local stand-in).", 0.01,
            {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            "datalayer/python-cpu-env:standin", ["python", "cpu"], "Python CPU runtime"),
        env("python-gpu-env", "Python GPU Environment",
            "A Python environment with one GPU, for AI workloads (local stand-in: no GPU really).", 0.1,
            {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
             "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}},
            "datalayer/python-gpu-env:standin", ["python", "gpu"], "Python GPU runtime"),
    ]


@dataclass
class RuntimeRecord:
    """The stand-in's full state of one runtime (alive or ended). ``info`` is the public RUNTIME object."""

    info: dict[str, Any]
    pod_name: str
    environment_name: str
    credits_limit: float
    burning_rate: float
    started: float
    expires: float
    port: int
    workdir: str
    log_path: str
    process: subprocess.Popen | None = None
    #: The ``from`` snapshot uid given to R1 (None if none). The stand-in cannot really restore kernel state
    #: (variables, installed packages, files) from a snapshot: it only records the request.
    from_snapshot: str | None = None
    #: Snapshot uids later "loaded" with R4 (PUT {"from": uid}); recorded only, nothing is restored.
    restored_from: list[str] = field(default_factory=list)
    capabilities: list[str] | None = None
    forced_502_left: int = 0
    forced_502_served: int = 0
    proxied_requests: int = 0
    ended_at: float | None = None
    #: "deleted" (R5), "expired" (expire() or reaper), "snapshot" (S1 with stop), "stopped" (stand-in stop()).
    end_reason: str | None = None

    @property
    def alive(self) -> bool:
        return self.ended_at is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def token(self) -> str:
        return self.info["token"]

    @property
    def ingress(self) -> str:
        return self.info["ingress"]


# ---------------------------------------------------------------------------------------------------------------
# Process handling


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)


def _child_setup() -> None:  # runs in the forked child, before exec: keep it minimal
    # If the thread that spawned us dies without cleaning up (test process SIGKILLed), get SIGTERM: the Jupyter
    # Server then shuts its kernels down itself (and they also poll JPY_PARENT_PID).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _marked_pids(instance: str, pod_name: str | None = None) -> list[int]:
    """Pids of live processes whose environment carries this stand-in's marker (optionally for one pod)."""
    wanted = [f"{_ENV_INSTANCE}={instance}".encode()]
    if pod_name is not None:
        wanted.append(f"{_ENV_POD}={pod_name}".encode())
    found = []
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if all(item in environ for item in wanted):
            found.append(int(entry))
    return found


def _kill_tree(process: subprocess.Popen | None, instance: str, pod_name: str | None) -> None:
    """SIGKILL a runtime's Jupyter Server process group, then every process carrying its marker (kernels run in
    their own sessions, so killing the server's group alone would not reach them)."""
    own_group = os.getpgrp()
    if process is not None and process.poll() is None:
        try:
            if os.getpgid(process.pid) != own_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except (ProcessLookupError, PermissionError):
            pass
    for _ in range(5):
        pids = _marked_pids(instance, pod_name)
        if not pids:
            break
        for pid in pids:
            try:
                if os.getpgid(pid) == pid and pid != own_group:  # a group leader (a kernel): kill its group
                    os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
    if process is not None:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------------------------------------------
# HTTP handlers


def _json_body(request) -> Any:
    if not request.body:
        return None
    ctype = request.headers.get("Content-Type", "")
    if len(request.body) > 10 * 1024 * 1024 or ("json" not in ctype and request.body[:1] not in (b"{", b"[")):
        return None
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return None


class _Reply(Exception):
    """Raised by endpoint code to answer with a JSON error."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.payload = {"success": False, "message": message, **extra}


class _ApiHandler(tornado.web.RequestHandler):
    """Every /api/... request: recording, fault injection, auth, then a small route table."""

    def initialize(self, standin: DatalayerStandIn) -> None:
        self.dl = standin

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def check_xsrf_cookie(self) -> None:  # an API with bearer tokens
        pass

    def prepare(self) -> None:
        self.dl._record(self.request)
        fault = self.dl._take_fault(self.request.method, self.request.path)
        if fault is not None:
            status, message = fault
            self._send(status, {"success": False, "message": message})

    def _send(self, status: int, payload: dict | None) -> None:
        self.set_status(status)
        if payload is None:
            self.clear_header("Content-Type")
            self.finish()
        else:
            self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and status_code >= 500:
            message = f"Internal error in the Datalayer stand-in: {exc_info[1]!r}"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"success": False, "message": message}))

    async def get(self) -> None:
        self._dispatch()

    async def post(self) -> None:
        fault = self.dl.create_fault
        if fault is not None and self.request.path.rstrip("/") == RUNTIMES_PREFIX + "/runtimes":
            await self._create_with_fault(fault)
        else:
            self._dispatch()

    async def _create_with_fault(self, fault) -> None:
        """R1 under ``create_fault``: the runtime IS created (spawned, listed), then its answer is delayed,
        replaced by a gateway error, stripped of fields, or never sent (the connection is closed)."""
        kind, arg = (fault, None) if isinstance(fault, str) else fault
        try:
            self.dl._check_auth(self.request)
            status, payload = self.dl._create_runtime(self.request)
        except _Reply as reply:  # refused: no runtime, no fault
            self._send(reply.status, reply.payload)
            return
        if kind.startswith("delay"):
            await asyncio.sleep(float(arg))
            kind = kind[len("delay-then-"):] if kind.startswith("delay-then-") else "answer"
        if kind in ("drop", "drop-after-create"):
            self.detach().close()  # no status line at all, as when a proxy or the network drops the connection
        elif re.fullmatch(r"5\d\d(-after-create)?", kind):
            # What a gateway in front of the API sends: HTML, no JSON "success" (not the API's own 503).
            code = int(kind[:3])
            self.set_status(code)
            self.set_header("Content-Type", "text/html")
            self.finish(f"<html><body><h1>{code} {tornado.httputil.responses.get(code, '')}</h1></body></html>")
        elif kind == "omit":
            for key in arg:
                payload["runtime"].pop(key, None)
            self._send(status, payload)
        elif kind == "answer":
            self._send(status, payload)
        else:
            self._send(500, {"success": False, "message": f"unknown create_fault {fault!r}"})

    async def put(self) -> None:
        self._dispatch()

    async def delete(self) -> None:
        self._dispatch()

    async def patch(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        method, path = self.request.method, self.request.path.rstrip("/") or "/"
        matched_path = False
        for route_method, pattern, func, needs_auth in self.dl._routes:
            match = pattern.fullmatch(path)
            if not match:
                continue
            matched_path = True
            if route_method != method:
                continue
            try:
                if needs_auth:
                    self.dl._check_auth(self.request)
                status, payload = func(self.request, *match.groups())
            except _Reply as reply:
                if reply.status == 401:
                    self.set_header("WWW-Authenticate", 'Bearer realm="datalayer"')
                status, payload = reply.status, reply.payload
            self._send(status, payload)
            return
        if matched_path:
            self._send(405, {"success": False, "message": f"Method {method} not allowed on {path}."})
        else:
            self._send(404, {"success": False, "message": f"No such endpoint: {method} {path}."})


class _IngressHandler(tornado.websocket.WebSocketHandler):
    """Reverse proxy for ``/jupyter/server/pool/{pod_name}/...`` to the runtime's Jupyter Server.

    The Jupyter Server runs with ``base_url`` equal to this very prefix, so paths are forwarded unchanged.
    HTTP requests are buffered (not streamed); WebSocket messages are relayed one by one in both directions,
    text as text and binary as binary, after negotiating the client's subprotocols with the backend.
    """

    def initialize(self, standin: DatalayerStandIn) -> None:
        self.dl = standin
        self.record: RuntimeRecord | None = None
        self.backend: tornado.websocket.WebSocketClientConnection | None = None
        self.backend_subprotocol: str | None = None
        self.pump: asyncio.Future | None = None

    def check_xsrf_cookie(self) -> None:
        pass

    def check_origin(self, origin: str) -> bool:
        # The Jupyter Server behind does its own origin check (Host and Origin are forwarded unchanged).
        return True

    def _error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"success": False, "message": message}))

    async def prepare(self) -> None:
        self.dl._record(self.request)
        fault = self.dl._take_fault(self.request.method, self.request.path)
        if fault is not None:
            self._error(*fault)
            return
        pod_name = self.path_args[0]
        record = self.dl._live_record(pod_name)
        if record is None:
            # Doc silent: ended or never existed; a real ingress would answer 404 (no route) or 502: we say 404.
            self._error(404, f"Runtime {pod_name} not found.")
            return
        if not self._authenticated(record):
            return
        self.record = record
        record.proxied_requests += 1
        if record.forced_502_left > 0 and await self.dl._backend_accepting(record):
            if record.forced_502_left > 0:  # re-check after the await
                record.forced_502_left -= 1
                record.forced_502_served += 1
                self._error(502, f"Bad Gateway: runtime {pod_name} is warming up (injected).")

    def _authenticated(self, record: RuntimeRecord) -> bool:
        """The ingress accepts the runtime token only in the SDK's form (doc §1.3, jupyter-kernel-client):
        ``Authorization: Bearer <token>`` on HTTP, the ``token`` query parameter on the WebSocket. Doc silent
        on what the real ingress does with other forms: here Jupyter's ``Authorization: token ...`` is refused
        (401), so that a client relying on it is caught. Otherwise answers 401 and returns False."""
        header = self.request.headers.get("Authorization", "")
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            given = self.get_query_argument("token", "")
            expected = "the 'token' query parameter"
            if header and not re.fullmatch(r"(?i)bearer\s+\S+\s*", header):
                given = ""
        else:
            match = re.fullmatch(r"(?i)bearer\s+(\S+)\s*", header)
            given = match.group(1) if match else ""
            expected = "an 'Authorization: Bearer <runtime token>' header"
        if given and secrets.compare_digest(given, record.token):
            return True
        self.set_header("WWW-Authenticate", 'Bearer realm="datalayer-ingress"')
        self._error(401, f"Unauthorized: the ingress of {record.pod_name} expects {expected}.")
        return False

    def _backend_url(self, scheme: str) -> str:
        assert self.record is not None
        return f"{scheme}://127.0.0.1:{self.record.port}{self.request.uri}"

    def _forward_headers(self, websocket: bool) -> tornado.httputil.HTTPHeaders:
        headers = tornado.httputil.HTTPHeaders()
        for name, value in self.request.headers.get_all():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower == "content-length":
                continue
            if websocket and lower.startswith("sec-websocket-"):
                continue
            headers.add(name, value)
        return headers

    async def get(self, pod_name: str, rest: str | None = None) -> None:
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await self._proxy_websocket()
        else:
            await self._proxy_http()

    async def post(self, pod_name: str, rest: str | None = None) -> None:
        await self._proxy_http()

    put = patch = delete = head = options = post

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def _proxy_http(self) -> None:
        method = self.request.method
        body = self.request.body if (self.request.body or method in ("POST", "PUT", "PATCH")) else None
        request = tornado.httpclient.HTTPRequest(
            self._backend_url("http"), method=method, headers=self._forward_headers(False), body=body,
            follow_redirects=False, allow_nonstandard_methods=True, decompress_response=False,
            connect_timeout=10, request_timeout=3600)
        try:
            response = await self.dl._http_client.fetch(request, raise_error=False)
        except Exception as exc:  # connection refused while warming up, reset when the runtime dies, ...
            self._error(502, f"Bad Gateway: runtime {self.record.pod_name} is not reachable ({exc}).")
            return
        if response.code == 599:
            self._error(502, f"Bad Gateway: runtime {self.record.pod_name} is not reachable ({response.error}).")
            return
        self.set_status(response.code, response.reason or "Unknown")
        for name in {name for name, _ in response.headers.get_all()}:
            self.clear_header(name)
        self.clear_header("Content-Type")
        for name, value in response.headers.get_all():
            if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                continue
            self.add_header(name, value)
        if response.body and response.code not in (204, 304) and method != "HEAD":
            self.write(response.body)
        self.finish()

    # -- WebSocket ------------------------------------------------------------------------------------------

    async def _proxy_websocket(self) -> None:
        header = self.request.headers.get("Sec-WebSocket-Protocol", "")
        subprotocols = [item.strip() for item in header.split(",") if item.strip()]
        request = tornado.httpclient.HTTPRequest(
            self._backend_url("ws"), headers=self._forward_headers(True), follow_redirects=False,
            connect_timeout=10, request_timeout=60)
        try:
            self.backend = await tornado.websocket.websocket_connect(
                request, subprotocols=subprotocols or None, max_message_size=PROXY_MAX_SIZE, ping_interval=None)
        except tornado.httpclient.HTTPClientError as exc:
            if exc.code == 599 or exc.response is None:
                self._error(502, f"Bad Gateway: runtime {self.record.pod_name} is not reachable ({exc}).")
                return
            # The Jupyter Server refused the upgrade (403 bad token, 404 unknown kernel, ...): pass it on.
            self.set_status(exc.code, exc.response.reason or "Unknown")
            for name, value in exc.response.headers.get_all():
                if name.lower() in ("content-type", "www-authenticate"):
                    self.set_header(name, value)
            self.finish(exc.response.body or b"")
            return
        except Exception as exc:
            self._error(502, f"Bad Gateway: runtime {self.record.pod_name} is not reachable ({exc}).")
            return
        # Tornado's WebSocket client hard-codes a 100 MB read buffer, which caps incoming frames: raise it.
        protocol = getattr(self.backend, "protocol", None)
        if protocol is not None and getattr(protocol, "stream", None) is not None:
            protocol.stream.max_buffer_size = PROXY_MAX_SIZE
        self.backend_subprotocol = self.backend.selected_subprotocol
        self.dl._sockets.add(self)
        try:
            await super().get(*self.path_args, **self.path_kwargs)
        finally:
            if self.ws_connection is None and self.pump is None:  # the client handshake failed
                self._close_backend()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.backend_subprotocol

    def open(self, *args, **kwargs) -> None:
        self.set_nodelay(True)
        self.pump = asyncio.ensure_future(self._pump_from_backend())

    async def _pump_from_backend(self) -> None:
        backend = self.backend
        while backend is not None:
            message = await backend.read_message()
            if message is None:
                break
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except tornado.websocket.WebSocketClosedError:
                break
        code = backend.close_code if backend is not None else None
        reason = backend.close_reason if backend is not None else None
        if self.ws_connection is not None:
            self.close(*_close_args(code, reason))

    async def on_message(self, message: str | bytes) -> None:
        if self.backend is None:
            return
        try:
            await self.backend.write_message(message, binary=isinstance(message, bytes))
        except tornado.websocket.WebSocketClosedError:
            self.close(1011, "backend connection lost")

    def _close_backend(self, code: int | None = None, reason: str | None = None) -> None:
        if self.backend is not None:
            self.backend.close(*_close_args(code, reason))

    def on_close(self) -> None:
        self.dl._sockets.discard(self)
        self._close_backend(self.close_code, self.close_reason)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Expected 4xx/5xx (warm-up 502s, injected faults) would flood test output at tornado's default levels.
    request = handler.request
    _access_log.debug("%d %s %s %.1fms", handler.get_status(), request.method, request.path,
                      1000.0 * request.request_time())


def _close_args(code: int | None, reason: str | None) -> tuple:
    # 1005/1006 (and anything outside the sendable ranges) must not be sent on the wire.
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return ()
    return (code, reason)


# ---------------------------------------------------------------------------------------------------------------
# The stand-in


_INSTANCES: set[DatalayerStandIn] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for standin in list(_INSTANCES):
        try:
            standin.stop()
        except Exception:
            pass


class DatalayerStandIn:
    """The local Datalayer API. See the module docstring.

    Fault injection (plain attributes and methods, usable at any time from any thread):

    - ``capacity``: None (unlimited, default) or N: R1 answers 503 "no runtime available" when N runtimes live.
    - ``warmup_502``: each runtime created while this is N answers 502 to the first N ingress requests that
      arrive once its Jupyter Server accepts connections (on top of the natural 502s before that).
    - ``fail_deletes``: R5 answers 500 and does not delete.
    - ``expire(pod_name)``: the runtime expires now. The reaper also expires runtimes at ``expired_at``.
    - ``fail_next(method, path_regex, status, message)``: the next matching request (API or ingress) fails.
    - ``create_fault``: None (default), or a fault applied to every R1 that would succeed; the runtime IS created
      (spawned and listed) but its answer is ``("delay", s)``: sent s seconds late; ``"504-after-create"`` (or
      another 5xx): replaced by a gateway's HTML error; ``"drop-after-create"``: never sent, the connection is
      closed; ``("delay-then-504", s)`` / ``("delay-then-drop", s)``: both; ``("omit", keys)``: sent without
      those RUNTIME keys.

    Introspection: ``live_runtimes()``, ``runtimes`` (all RuntimeRecords by pod, ended ones included),
    ``runtime_record(pod)``, ``requests`` (every request received, as it arrived), ``sent(method, path_regex)``,
    ``snapshots``, ``credits``.
    """

    def __init__(
        self,
        token: str = "secret-token",
        *,
        environments: list[dict[str, Any]] | None = None,
        credits: float = 1000.0,
        quota: float | None = None,
        handle: str = "standin-user",
        password: str = "standin-password",
        reap_interval: float = 0.5,
        server_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.token = token
        self.environments = environments if environments is not None else default_environments()
        self.credits = float(credits)
        self.quota = quota
        self.handle = handle
        self.password = password
        self.reap_interval = reap_interval
        #: Extra command-line arguments for every runtime's Jupyter Server, e.g.
        #: ``["--ServerApp.iopub_data_rate_limit=0"]``. By default the servers keep Jupyter's own defaults
        #: (doc silent on Datalayer's server config), including the IOPub rate limits (1e6 bytes/s, 1000 msg/s
        #: over 3 s windows): a vanilla Jupyter Server drops IOPub output above them; shell replies are not limited.
        self.server_args = list(server_args)
        # fault injection
        self.capacity: int | None = None
        self.warmup_502 = 0
        self.fail_deletes = False
        self.create_fault: str | tuple | None = None
        #: The snapshot collections served (doc §1.2: renamed runtime-snapshots -> sandbox-snapshots in DC-LATE).
        self.snapshot_paths: tuple[str, ...] = ("runtime-snapshots", "sandbox-snapshots")
        # introspection
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self.user_uid = new_ulid().upper()

        self._lock = threading.RLock()
        self._tokens = {token}
        self._runtimes: dict[str, RuntimeRecord] = {}
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._faults: list[tuple[str, re.Pattern, int, str]] = []
        self._sockets: set[_IngressHandler] = set()
        self._instance = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._workdir: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._http_client: tornado.httpclient.AsyncHTTPClient | None = None
        self._started = False
        self.port: int | None = None
        self.url: str | None = None
        self._routes = self._build_routes()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> DatalayerStandIn:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> DatalayerStandIn:
        if self._started:
            return self
        self._workdir = tempfile.mkdtemp(prefix="datalayer-standin-")
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                app = tornado.web.Application(
                    [
                        (r"/api/.*", _ApiHandler, {"standin": self}),
                        (INGRESS_PREFIX + r"/([^/]+)(/.*)?", _IngressHandler, {"standin": self}),
                    ],
                    websocket_max_message_size=PROXY_MAX_SIZE,
                    log_function=_log_request,
                    default_handler_class=_NotFoundHandler,
                    default_handler_args={"standin": self},
                )
                self._server = tornado.httpserver.HTTPServer(
                    app, max_body_size=PROXY_MAX_SIZE, max_buffer_size=PROXY_MAX_SIZE, idle_connection_timeout=3600)
                self._server.add_sockets(sockets)
                self._http_client = tornado.httpclient.AsyncHTTPClient(
                    force_instance=True, max_clients=200, max_body_size=PROXY_MAX_SIZE,
                    max_buffer_size=PROXY_MAX_SIZE)
                reaper = tornado.ioloop.PeriodicCallback(self._reap, self.reap_interval * 1000)
                reaper.start()
            except BaseException as exc:  # pragma: no cover - startup failure
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                reaper.stop()
                try:
                    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                    for task in pending:
                        task.cancel()
                    if pending:
                        loop.run_until_complete(asyncio.wait(pending, timeout=2))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                except Exception:
                    pass
                loop.close()

        self._thread = threading.Thread(target=run, name=f"datalayer-standin-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError(f"Datalayer stand-in failed to start: {failure[0]!r}") from failure[0]
        self._started = True
        _INSTANCES.add(self)
        return self

    def stop(self) -> None:
        """Stop serving and kill every Jupyter Server (and kernel) this stand-in started. Idempotent."""
        try:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                done = threading.Event()

                async def shutdown() -> None:
                    try:
                        for handler in list(self._sockets):
                            try:
                                handler.close(1001, "Datalayer stand-in stopping")
                            except Exception:
                                pass
                        if self._server is not None:
                            self._server.stop()
                        if self._http_client is not None:
                            self._http_client.close()
                    finally:
                        done.set()
                        asyncio.get_running_loop().call_later(0.05, asyncio.get_running_loop().stop)

                try:
                    asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
                    done.wait(10)
                except RuntimeError:  # loop already closed
                    pass
                self._thread.join(10)
        finally:
            with self._lock:
                for record in self._runtimes.values():
                    if record.alive:
                        self._end(record, "stopped")
            _kill_tree(None, self._instance, None)  # anything left behind, whatever the pod
            for record in self._runtimes.values():
                if record.process is not None and record.process.poll() is None:
                    _kill_tree(record.process, self._instance, record.pod_name)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            self._started = False
            _INSTANCES.discard(self)

    # -- public helpers for tests ---------------------------------------------------------------------------

    @property
    def run_url(self) -> str | None:
        return self.url

    @property
    def iam_url(self) -> str | None:
        return self.url

    def env_vars(self) -> dict[str, str]:
        """Environment variables pointing the Datalayer SDK conventions (doc §1.1) at this stand-in."""
        return {
            "DATALAYER_RUN_URL": self.url,
            "DATALAYER_IAM_URL": self.url,
            "DATALAYER_RUNTIMES_URL": self.url,
            "DATALAYER_API_KEY": self.token,
        }

    def live_runtimes(self) -> list[dict[str, Any]]:
        """The public RUNTIME dicts of the live runtimes, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(r.info) for r in self._runtimes.values() if r.alive]

    @property
    def runtimes(self) -> dict[str, RuntimeRecord]:
        """Every runtime ever created by this stand-in, by pod name, ended ones included (a shallow copy)."""
        with self._lock:
            return dict(self._runtimes)

    def runtime_record(self, pod_name: str) -> RuntimeRecord:
        with self._lock:
            return self._runtimes[pod_name]

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        """The existing (not deleted) SNAPSHOT dicts, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(s) for s in self._snapshots.values()]

    def sent(self, method: str, path_regex: str) -> list[tuple[str, str, Any, dict[str, str]]]:
        """The recorded requests with this method whose path matches ``path_regex`` (``re.search``), in order."""
        pattern = re.compile(path_regex)
        return [r for r in list(self.requests) if r[0] == method.upper() and pattern.search(r[1])]

    def fail_next(self, method: str | None, path_regex: str, status: int, message: str = "Injected failure") -> None:
        """The next request whose method matches (None or "*" for any) and whose path (no query string)
        matches ``path_regex`` (``re.search``) is answered ``status`` with ``{"success": false, "message"}``.
        Several rules queue up; each is used once. Applies to API and ingress requests."""
        with self._lock:
            self._faults.append(((method or "*").upper(), re.compile(path_regex), int(status), message))

    def clear_faults(self) -> None:
        """Forget the ``fail_next`` rules not used yet."""
        with self._lock:
            self._faults.clear()

    def expire(self, pod_name: str) -> bool:
        """Expire a runtime now: kill its Jupyter Server and kernels, drop it from the list.
        Returns False if it had already ended; KeyError if it never existed."""
        with self._lock:
            record = self._runtimes[pod_name]
            if not record.alive:
                return False
            self._end(record, "expired")
            return True

    def wait_ready(self, pod_name: str, timeout: float = 60.0) -> None:
        """Block until the runtime's Jupyter Server accepts TCP connections (ignores warmup_502)."""
        record = self.runtime_record(pod_name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not record.alive or (record.process is not None and record.process.poll() is not None):
                raise RuntimeError(f"runtime {pod_name} is not running (see {record.log_path})")
            try:
                with socket.create_connection(("127.0.0.1", record.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"runtime {pod_name} not ready after {timeout} s")

    def process_ids(self, pod_name: str | None = None) -> list[int]:
        """Pids of the live processes this stand-in started (Jupyter Servers, their kernels and anything those
        started), optionally for one runtime only. Empty after ``stop()``: handy for leak checks."""
        return _marked_pids(self._instance, pod_name)

    # -- internals: requests, faults, auth ------------------------------------------------------------------

    def _record(self, request) -> None:
        self.requests.append((request.method, request.path, _json_body(request), dict(request.headers)))

    def _take_fault(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            for index, (fault_method, pattern, status, message) in enumerate(self._faults):
                if fault_method in ("*", method.upper()) and pattern.search(path):
                    del self._faults[index]
                    return status, message
        return None

    def _check_auth(self, request) -> None:
        # Doc §1.1: "Authorization: Bearer <token>". Doc silent on the 401 body: {"success": false, "message"}.
        # X-External-Token is ignored (the SDK sends the same value as the Bearer token).
        header = request.headers.get("Authorization")
        if not header:
            raise _Reply(401, "Missing credentials: expected an 'Authorization: Bearer <token>' header.")
        match = re.fullmatch(r"(?i)bearer\s+(\S+)\s*", header)
        if not match:
            raise _Reply(401, "Malformed Authorization header: expected 'Bearer <token>'.")
        if match.group(1) not in self._tokens:
            raise _Reply(401, "Invalid or expired token.")

    # -- internals: runtimes --------------------------------------------------------------------------------

    def _live_record(self, pod_name: str) -> RuntimeRecord | None:
        with self._lock:
            record = self._runtimes.get(pod_name)
            return record if record is not None and record.alive else None

    async def _backend_accepting(self, record: RuntimeRecord) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", record.port), 2)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    def _spawn(self, record: RuntimeRecord) -> None:
        base_url = f"{INGRESS_PREFIX}/{record.pod_name}/"
        root_dir = os.path.join(record.workdir, "root")
        os.makedirs(root_dir, exist_ok=True)
        cmd = [
            sys.executable, "-m", "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={record.port}",
            "--ServerApp.port_retries=0",
            # IdentityProvider.token is the non-deprecated spelling of ServerApp.token in Jupyter Server 2.
            f"--IdentityProvider.token={record.token}",
            f"--ServerApp.base_url={base_url}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root_dir}",
            f"--ServerApp.tornado_settings={{'websocket_max_message_size': {JUPYTER_MAX_MESSAGE_SIZE}}}",
            # Jupyter's HTTP server buffers at most 512 MB per read by default, which would cap incoming frames.
            f"--ServerApp.max_buffer_size={PROXY_MAX_SIZE}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")  # containers often run tests as root
        cmd += self.server_args
        env = dict(os.environ)
        env.pop("JPY_PARENT_PID", None)
        env.update({
            _ENV_INSTANCE: self._instance,
            _ENV_POD: record.pod_name,
            # isolate from the user's Jupyter config and runtime files
            "JUPYTER_CONFIG_DIR": os.path.join(record.workdir, "config"),
            "JUPYTER_RUNTIME_DIR": os.path.join(record.workdir, "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYTHONUNBUFFERED": "1",
        })
        with open(record.log_path, "ab") as log:
            record.process = subprocess.Popen(
                cmd, cwd=root_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_child_setup if _PRCTL is not None else None)

    def _end(self, record: RuntimeRecord, reason: str) -> None:
        """Mark ended and kill its processes (call with the lock held)."""
        if not record.alive:
            return
        record.ended_at = time.time()
        record.end_reason = reason
        # Plausible billing (doc silent): on termination, the credits actually burnt are charged.
        used = min(record.credits_limit, record.burning_rate * max(0.0, record.ended_at - record.started))
        self.credits = max(0.0, self.credits - used)
        _kill_tree(record.process, self._instance, record.pod_name)

    def _reap(self) -> None:
        now = time.time()
        with self._lock:
            for record in list(self._runtimes.values()):
                if record.alive and now >= record.expires:
                    self._end(record, "expired")

    # -- endpoints ------------------------------------------------------------------------------------------

    def _build_routes(self):
        iam, rt = re.escape(IAM_PREFIX), re.escape(RUNTIMES_PREFIX)
        table = [
            ("POST", iam + "/login", self._login, False),
            ("GET", iam + "/whoami", self._whoami, True),
            ("GET", iam + "/usage/credits", self._credits, True),
            # Doc silent on auth for ping (a health check): we do not require it.
            ("GET", rt + "/ping", self._ping, False),
            ("GET", rt + "/environments", self._environments, True),
            ("POST", rt + "/runtimes", self._create_runtime, True),
            ("GET", rt + "/runtimes", self._list_runtimes, True),
            ("GET", rt + "/runtimes/([^/]+)", self._get_runtime, True),
            ("PUT", rt + "/runtimes/([^/]+)", self._update_runtime, True),
            ("DELETE", rt + "/runtimes/([^/]+)", self._delete_runtime, True),
        ]
        # Snapshots: "runtime-snapshots" (DC-OLD) and its later name "sandbox-snapshots" (DC-LATE, doc §1.2),
        # each served only while listed in ``snapshot_paths`` (else 404, as a server without that path).
        for collection in ("runtime-snapshots", "sandbox-snapshots"):
            table += [
                ("POST", rt + f"/{collection}", self._served(collection, self._create_snapshot), True),
                ("GET", rt + f"/{collection}", self._served(collection, self._list_snapshots), True),
                ("GET", rt + f"/{collection}/([^/]+)", self._served(collection, self._get_snapshot), True),
                ("DELETE", rt + f"/{collection}/([^/]+)", self._served(collection, self._delete_snapshot), True),
            ]
        return [(method, re.compile(pattern), func, auth) for method, pattern, func, auth in table]

    def _served(self, collection: str, func):
        def endpoint(request, *args):
            if collection not in self.snapshot_paths:
                raise _Reply(404, f"No such endpoint: {request.method} {request.path}.")
            return func(request, *args)

        return endpoint

    @staticmethod
    def _body(request) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise _Reply(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _Reply(400, "The request body must be a JSON object.")
        return body

    def _user(self) -> dict[str, Any]:
        created = _iso(time.time() - 86400 * 30)
        return {
            "id": f"user-{self.user_uid.lower()}",
            "uid": self.user_uid,
            "handle_s": self.handle,
            "email_s": f"{self.handle}@example.com",
            "first_name_t": "Stand",
            "last_name_t": "In",
            "type_s": "user",
            "origin_s": "datalayer",
            "creation_ts_dt": created,
            "join_ts_dt": created,
            "join_request_ts_dt": created,
            "last_update_ts_dt": _iso(),
            "roles_ss": ["platform_member"],
            "avatar_url_s": "https://assets.datalayer.tech/avatars/standin.png",
        }

    def _login(self, request):
        body = self._body(request)
        has_token, has_password = "token" in body, ("handle" in body or "password" in body)
        if has_token and has_password:
            raise _Reply(400, "Provide either a token or a handle and password, not both.")
        if has_token:
            ok = body["token"] in self._tokens
        elif has_password:
            ok = body.get("handle") == self.handle and body.get("password") == self.password
        else:
            raise _Reply(400, "Provide a token or a handle and password.")
        if not ok:
            raise _Reply(401, "Invalid credentials.")

        # Doc silent on the login token's form: a JWT-looking string (not verifiable), accepted as a Bearer token
        # from now on, like the API key itself.
        def b64(data: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        now = int(time.time())
        jwt = ".".join([b64({"alg": "HS256", "typ": "JWT"}),
                        b64({"sub": self.user_uid, "handle": self.handle, "iat": now, "exp": now + 86400}),
                        secrets.token_urlsafe(32)])
        with self._lock:
            self._tokens.add(jwt)
        return 200, {"success": True, "message": "User authenticated.", "user": self._user(), "token": jwt}

    def _whoami(self, request):
        return 200, {"success": True, "message": "Profile of the authenticated user.", "profile": self._user()}

    def _credits(self, request):
        with self._lock:
            reservations = [
                {
                    "id": r.info["reservation_id"],
                    "credits": r.credits_limit,
                    "resource": r.pod_name,
                    "last_update": _iso(r.started),
                    "burning_rate": r.burning_rate,
                    "start_date": _iso(r.started),
                }
                for r in self._runtimes.values() if r.alive
            ]
            return 200, {
                "success": True,
                "message": "Credits and reservations.",
                "credits": {"credits": self.credits, "quota": self.quota, "last_update": _iso()},
                "reservations": reservations,
            }

    def _ping(self, request):
        return 200, {"success": True, "message": "pong"}

    def _environments(self, request):
        return 200, {"success": True, "message": "Environments.", "environments": copy.deepcopy(self.environments)}

    def _create_runtime(self, request):
        body = self._body(request)
        # Doc silent on defaults: clients always send "notebook"; TS also allows terminal/job (all get a Jupyter
        # Server here). Missing body fields are 400s.
        kind = body.get("type", "notebook")
        if kind not in ("notebook", "terminal", "job"):
            raise _Reply(400, f"Unsupported runtime type {kind!r}.")
        env_name = body.get("environment_name")
        if not isinstance(env_name, str) or not env_name:
            raise _Reply(400, "Missing 'environment_name'.")
        environment = next((e for e in self.environments if e.get("name") == env_name), None)
        if environment is None:  # doc §6: R1 404 = environment not found
            names = ", ".join(e["name"] for e in self.environments)
            raise _Reply(404, f"Environment '{env_name}' not found. Available environments: {names}.")
        try:
            credits_limit = float(body.get("credits_limit"))
        except (TypeError, ValueError):
            raise _Reply(400, "Missing or invalid 'credits_limit' (a positive number of credits).") from None
        if not credits_limit > 0:
            raise _Reply(400, "'credits_limit' must be positive.")
        # Doc silent on whether a credits_limit above the available credits is refused: we do not refuse it.
        # Doc silent on an unknown "from" snapshot: 404 like an unknown environment.
        snapshot_uid = body.get("from")
        with self._lock:
            if snapshot_uid is not None and snapshot_uid not in self._snapshots:
                raise _Reply(404, f"Snapshot '{snapshot_uid}' not found.")
            live = sum(1 for r in self._runtimes.values() if r.alive)
            if self.capacity is not None and live >= self.capacity:  # doc §6: R1 503 = no capacity
                raise _Reply(503, f"no runtime available: at capacity ({live} of {self.capacity} runtimes live).")
            rate = float(environment.get("burning_rate") or 0.0)
            pod_name = f"runtime-{new_ulid()}"
            started = time.time()
            expires = started + credits_limit / rate if rate > 0 else float("inf")
            workdir = os.path.join(self._workdir, pod_name)
            os.makedirs(workdir)
            # Doc silent on the default given_name: the environment's runtime.givenNameTemplate.
            given_name = body.get("given_name") or environment.get("runtime", {}).get("givenNameTemplate") \
                or f"{env_name} runtime"
            info = {
                "pod_name": pod_name,
                # Doc silent on id formats: ULIDs (uppercase for uid/reservation_id, lowercase in pod_name, as in
                # the doc's example), each distinct, so that a client mixing them up gets caught.
                "uid": new_ulid().upper(),
                "given_name": given_name,
                "environment_name": env_name,
                "environment_title": environment.get("title", env_name),
                "type": kind,
                "burning_rate": rate,
                "token": secrets.token_hex(24),
                "ingress": f"{self.url}{INGRESS_PREFIX}/{pod_name}",
                "reservation_id": new_ulid().upper(),
                "started_at": _epoch_str(started),
                "expired_at": _epoch_str(expires) if expires != float("inf") else None,
            }
            record = RuntimeRecord(
                info=info, pod_name=pod_name, environment_name=env_name, credits_limit=credits_limit,
                burning_rate=rate, started=started, expires=expires, port=_free_port(), workdir=workdir,
                log_path=os.path.join(workdir, "jupyter-server.log"), from_snapshot=snapshot_uid,
                capabilities=body.get("capabilities"), forced_502_left=int(self.warmup_502 or 0))
            self._runtimes[pod_name] = record
            try:
                self._spawn(record)  # returns at once: the server warms up while clients poll (doc §9.1)
            except Exception as exc:
                record.ended_at, record.end_reason = time.time(), f"spawn failed: {exc!r}"
                raise _Reply(500, f"Failed to start runtime {pod_name}: {exc!r}") from exc
            # Doc silent on the status code of a creation: 201 (any 2xx passes raise_for_status()).
            return 201, {"success": True, "message": f"Runtime {pod_name} created.", "runtime": copy.deepcopy(info)}

    def _list_runtimes(self, request):
        return 200, {"success": True, "message": "Runtimes.", "runtimes": self.live_runtimes()}

    def _require_live(self, pod_name: str) -> RuntimeRecord:
        record = self._live_record(pod_name)
        if record is None:
            raise _Reply(404, f"Runtime '{pod_name}' not found.")
        return record

    def _get_runtime(self, request, pod_name):
        record = self._require_live(pod_name)
        return 200, {"success": True, "message": f"Runtime {pod_name}.", "runtime": copy.deepcopy(record.info)}

    def _update_runtime(self, request, pod_name):
        body = self._body(request)
        with self._lock:
            record = self._require_live(pod_name)
            if "from" in body:
                if body["from"] not in self._snapshots:
                    raise _Reply(404, f"Snapshot '{body['from']}' not found.")
                # Recorded only: the stand-in cannot load a snapshot's kernel state into a live runtime.
                record.restored_from.append(body["from"])
            if "capabilities" in body:
                record.capabilities = body["capabilities"]
            return 200, {"success": True, "message": f"Runtime {pod_name} updated.",
                         "runtime": copy.deepcopy(record.info)}

    def _delete_runtime(self, request, pod_name):
        with self._lock:
            record = self._require_live(pod_name)
            if self.fail_deletes:
                raise _Reply(500, f"Failed to terminate runtime {pod_name} (injected failure).")
            self._end(record, "deleted")
        return 204, None  # doc §1.2 R5: 200 or 204 = success, body not needed

    def _create_snapshot(self, request):
        body = self._body(request)
        pod_name = body.get("pod_name")
        if not isinstance(pod_name, str) or not pod_name:
            raise _Reply(400, "Missing 'pod_name'.")
        with self._lock:
            record = self._require_live(pod_name)
            uid = new_ulid().upper()
            # The stand-in cannot capture kernel state; the snapshot is a record only, "ready" at once
            # (doc §9.9: real creation may be asynchronous; here it is listed immediately).
            # Doc silent on the values of status/size/format/format_version/updated_at and on metadata's content.
            snapshot = {
                "uid": uid,
                "name": body.get("name") or f"snapshot-{uid.lower()}",
                "description": body.get("description") or "",
                "environment": record.environment_name,
                "metadata": {
                    "version": "1",
                    "language_info": {"name": "python", "version": platform.python_version(),
                                      "mimetype": "text/x-python", "file_extension": ".py"},
                    "pod_name": pod_name,
                },
                "size": 0,
                "format": "standin",
                "format_version": "1",
                "status": "ready",
                "updated_at": _iso(),
                "files": [],
            }
            self._snapshots[uid] = snapshot
            if body.get("stop"):
                self._end(record, "snapshot")
            return 201, {"success": True, "message": f"Snapshot {uid} created.", "snapshot": copy.deepcopy(snapshot)}

    def _list_snapshots(self, request):
        return 200, {"success": True, "message": "Snapshots.", "snapshots": self.snapshots}

    def _get_snapshot(self, request, uid):
        with self._lock:
            snapshot = self._snapshots.get(uid)
            if snapshot is None:
                raise _Reply(404, f"Snapshot '{uid}' not found.")
            return 200, {"success": True, "message": f"Snapshot {uid}.", "snapshot": copy.deepcopy(snapshot)}

    def _delete_snapshot(self, request, uid):
        with self._lock:
            if self._snapshots.pop(uid, None) is None:
                raise _Reply(404, f"Snapshot '{uid}' not found.")
        return 204, None  # doc §1.2 S4: DC-OLD treats only 204 as success


class _NotFoundHandler(_ApiHandler):
    """Anything outside /api and the ingress prefix: JSON 404 (recorded, faults apply)."""

    def _dispatch(self) -> None:
        self._send(404, {"success": False, "message": f"No such endpoint: {self.request.method} {self.request.path}."})
