"""A kernel on any Jupyter Server (or Enterprise Gateway), over its REST API and WebSocket.

The kernel is started with ``POST {url}/api/kernels`` and reached on
``{url}/api/kernels/{id}/channels``. The WebSocket speaks the
``v1.kernel.websocket.jupyter.org`` subprotocol when the server offers it (binary frames:
message buffers travel as they are) and falls back to the default JSON protocol
(binary frames only for messages that carry buffers). jupyter-client's ``Session``
builds and parses the messages; a server does not sign them, it authenticates the token.

The token travels as Jupyter documents it, ``Authorization: token <token>`` on HTTP and on
the WebSocket handshake (what every Jupyter Server and Enterprise Gateway accepts), or, with
``auth="bearer"``, as the Datalayer SDK sends it to a runtime's ingress: ``Authorization:
Bearer <token>`` on HTTP and the ``token`` query parameter on the WebSocket (which Jupyter
Server 2 accepts too). A WebSocket URL with a token is never shown: errors and logs get it
with the token masked.

One thread receives and dispatches, one sends what :meth:`JupyterServerRuntime.send`
queued (websockets allows one sender at a time, and a large payload must not block the
caller). A kernel that the server had to restart (it died), a kernel deleted behind our
back and a lost connection all count as the kernel's death.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import struct
import threading
import time
import urllib.parse

import requests
from jupyter_client.session import Session

from .. import _threads
from ..errors import RuntimeStartError
from ..secrets import SECRET_HEADERS, RedactingLogger, SecretSession, check_token, check_transport, redact
from .base import Runtime

_log = logging.getLogger("dlexec")

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
#: How the token is sent: "token" (Jupyter's header, HTTP and WebSocket) or "bearer" (the SDK's:
#: a Bearer header on HTTP, the ``token`` query parameter on the WebSocket).
AUTH_SCHEMES = ("token", "bearer")
_TORNADO_MAX_MESSAGE = 10 * 2**20  # what a Jupyter Server accepts in one message by default
_STOP = object()


class JupyterServerRuntime(Runtime):
    """A kernel started by this process on a Jupyter Server, deleted on terminate."""

    kind = "jupyter"

    def __init__(
        self,
        name: str = "jupyter",
        url: str | None = None,
        token: str | None = None,
        kernel_name: str = "python3",
        *,
        headers: dict | None = None,
        subprotocol: str | None = "auto",
        request_timeout: float = 30.0,
        verify: bool | str = True,
        allow_insecure: bool = False,
        auth: str = "token",
    ):
        super().__init__(name)
        if auth not in AUTH_SCHEMES:
            raise ValueError(f"auth must be one of {', '.join(map(repr, AUTH_SCHEMES))}, not {auth!r}")
        if not url:
            raise ValueError("the jupyter backend needs the server's url= (or $DLEXEC_JUPYTER_URL)")
        # Checked here, before any request: a malformed token would fail inside requests, whose
        # error quotes the header; and a token goes over plain http:// only to this machine.
        check_token(token, "the Jupyter Server token (token= or $DLEXEC_JUPYTER_TOKEN)")
        if token or any(key.lower() in SECRET_HEADERS for key in headers or {}):
            check_transport(url, "the Jupyter Server token", allow_insecure)
        self.url = url.rstrip("/")
        self.token = token
        self.kernel_name = kernel_name
        self.subprotocol_choice = subprotocol
        self.request_timeout = request_timeout
        self.auth = auth
        self.kernel_id: str | None = None
        self.subprotocol: str | None = None
        self._http = SecretSession()  # no token on a redirect to another host
        self._http.verify = verify
        self._http.headers.update(headers or {})
        if token:
            self._http.headers["Authorization"] = f"{'Bearer' if auth == 'bearer' else 'token'} {token}"
        # The server authenticates the token and signs what it forwards to the kernel; over
        # the WebSocket messages go unsigned. (Set after __init__, which warns about an empty key.)
        self._session = Session(key=b"unused", username="dlexec")
        self._session.key = b""
        self._ws = None
        self._outbox: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._restart_until = 0.0  # time.monotonic() until which a restart is expected
        self._exit_reason: str | None = None
        self._lock = threading.Lock()
        self._terminate_lock = threading.Lock()

    @property
    def id(self) -> str:
        short = self.kernel_id[:8] if self.kernel_id else "?"
        return f"{self.name} (kernel {short} on {self.url})"

    # -- REST ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.request_timeout)
        return self._http.request(method, f"{self.url}{path}", **kwargs)

    def _check(self, response: requests.Response, doing: str) -> dict:
        if response.ok:
            return response.json() if response.content else {}
        try:
            message = response.json().get("message") or response.text
        except ValueError:
            message = response.text
        hint = " (check the token)" if response.status_code in (401, 403) else ""
        message = redact(str(message), self.token).strip()[:300]
        raise RuntimeStartError(
            f"Jupyter Server {self.url}: {doing} failed with {response.status_code}: {message}{hint}",
            status=response.status_code,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        try:
            response = self._request("POST", "/api/kernels", json={"name": self.kernel_name})
        except requests.RequestException as exc:
            raise RuntimeStartError(f"cannot reach the Jupyter Server at {self.url}: {exc}", unreachable=True) from exc
        self.kernel_id = self._check(response, "starting a kernel")["id"]
        try:
            self._connect(timeout)
        except BaseException:
            self.terminate()
            raise

    def _connect(self, timeout: float) -> None:
        from websockets.sync.client import connect

        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        params = {"session_id": self._session.session}
        headers = dict(self._http.headers)
        headers.pop("Accept-Encoding", None)
        if self.auth == "bearer" and self.token:  # the SDK's form: in the query, not in a header
            params["token"] = self.token
            headers.pop("Authorization", None)
        path = f"{parts.path}/api/kernels/{self.kernel_id}/channels"
        ws_url = urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(params), ""))
        # What errors show: the URL without its query (session id and, above all, the token).
        shown_url = urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))
        protocols = [V1_SUBPROTOCOL] if self.subprotocol_choice in ("auto", V1_SUBPROTOCOL) else None
        try:
            sock = _connect_tcp(parts.hostname, parts.port or (443 if scheme == "wss" else 80), timeout)
            self._ws = connect(
                ws_url,
                sock=sock,
                subprotocols=protocols,
                additional_headers={k: v for k, v in headers.items() if k.lower() not in ("accept", "connection")},
                open_timeout=timeout,
                max_size=None,
                compression=None,
                ping_interval=30,
                ping_timeout=None,
                ssl=None if scheme == "ws" else _ssl_context(self._http.verify),
                # websockets logs the handshake's headers at DEBUG: the token must not be in them
                logger=RedactingLogger(logging.getLogger("websockets.client"), [self.token]),
            ).__enter__()  # the context-manager form (websockets >= 17.1 deprecates the other)
        except Exception as exc:  # noqa: BLE001 - every failure here means: cannot reach the kernel
            reason = redact(str(exc), self.token)
            hint = " (check the token)" if _status(exc) in (401, 403) else ""
            error = RuntimeStartError(f"cannot open the kernel WebSocket {shown_url}: {reason}{hint}",
                                      status=_status(exc))
            # The library's exception may quote the URL, and so the token: then it is not chained.
            raise error from (None if self.token and _mentions(exc, self.token) else exc)
        self.subprotocol = self._ws.subprotocol
        for target, name in ((self._receive_loop, "recv"), (self._send_loop, "send")):
            thread = threading.Thread(target=target, name=f"dlexec-ws-{name}-{self.name}", daemon=True)
            _threads.start(thread)
            self._threads.append(thread)

    def message(self, msg_type: str, content: dict, metadata: dict | None = None) -> dict:
        return self._session.msg(msg_type, content, metadata=metadata)

    def send(self, channel: str, msg: dict, buffers=()) -> None:
        if self._stopping or self._exit_reason is not None:
            raise RuntimeError(f"kernel {self.id} is not running")
        # The JSON parts are made here, in the caller's thread: a message that cannot be sent
        # (content that is not JSON) fails its caller, not the send thread. The frame itself
        # (a copy of every buffer) is built by the send thread.
        self._outbox.put((channel, self._serialize(channel, msg), list(buffers)))

    def interrupt(self) -> None:
        if self.kernel_id:
            self._check(self._request("POST", f"/api/kernels/{self.kernel_id}/interrupt"), "interrupting the kernel")

    def restart(self, timeout: float = 60.0) -> None:
        # The server's "restarting" status in the next seconds is ours, not a death.
        self._restart_until = time.monotonic() + timeout
        try:
            self._check(
                self._request("POST", f"/api/kernels/{self.kernel_id}/restart", timeout=timeout),
                "restarting the kernel",
            )
        finally:
            self._restart_until = time.monotonic() + 10.0

    def io_alive(self) -> bool:
        return self._stopping or (bool(self._threads) and all(thread.is_alive() for thread in self._threads))

    def is_alive(self) -> bool:
        if self.kernel_id is None or self._exit_reason is not None:
            return False
        try:
            response = self._request("GET", f"/api/kernels/{self.kernel_id}", timeout=10)
        except requests.RequestException:
            return False
        return response.ok and response.json().get("execution_state") != "dead"

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    def terminate(self) -> None:
        with self._terminate_lock:  # a second caller waits until the kernel is really gone
            with self._lock:
                if self._stopping:
                    return
                self._stopping = True
            self._terminate()

    def _terminate(self) -> None:
        self._outbox.put(_STOP)
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        if self.kernel_id:
            self._delete_kernel()
        self._http.close()

    def _delete_kernel(self, attempts: int = 6) -> None:
        """DELETE the kernel, retrying while the server cannot (e.g. it is restarting a dead one)."""
        delay = 0.25
        for attempt in range(attempts):
            try:
                response = self._request("DELETE", f"/api/kernels/{self.kernel_id}", timeout=10)
            except requests.RequestException as exc:
                problem = str(exc)
            else:
                if response.status_code in (204, 404, 410):
                    return
                problem = f"status {response.status_code}"
            if attempt + 1 < attempts:
                time.sleep(delay)
                delay *= 2
        _log.warning("dlexec: could not delete kernel %s (%s); it may still run on %s", self.id, problem, self.url)

    def describe(self) -> dict:
        return {**super().describe(), "kernel_id": self.kernel_id, "url": self.url, "subprotocol": self.subprotocol}

    # -- the connection's threads ---------------------------------------------------------------

    def _send_loop(self) -> None:
        """The send thread. A failure to send ends the connection, and says why (``on_exit``)."""
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            frame = b""
            try:
                frame = self._frame(*item)
                self._ws.send(frame)
            except BaseException as exc:  # noqa: BLE001 - the thread never ends silently
                reason = f"the connection to kernel {self.id} failed while sending: {exc!r}"
                if len(frame) > _TORNADO_MAX_MESSAGE:
                    reason += (f"; the message was {len(frame) / 2**20:.0f} MiB and Jupyter Servers refuse more than "
                               "10 MiB unless configured otherwise (tornado's websocket_max_message_size)")
                self._died(reason)
                self._close_quietly()
                return
            finally:
                del frame, item  # a large payload is not kept alive while the queue is empty

    def _close_quietly(self) -> None:
        try:
            self._ws.close()
        except BaseException:  # noqa: BLE001
            pass

    def _receive_loop(self) -> None:
        """The receive thread: per message, whatever fails is logged and the next one read;
        if the connection ends (or the loop cannot go on), that is the kernel's death."""
        try:
            for frame in self._ws:
                try:
                    channel, msg = self._decode(frame)
                except Exception:  # noqa: BLE001 - a bad frame must not stop the thread
                    _log.exception("dlexec: cannot parse a message from kernel %s", self.id)
                    continue
                if channel == "iopub" and msg["header"]["msg_type"] == "status":
                    state = msg["content"].get("execution_state")
                    if state in ("restarting", "dead") and time.monotonic() > self._restart_until:
                        self._died(f"kernel {self.id} died (the server reported it {state})")
                        self._close_quietly()
                        return
                try:
                    self.on_message(channel, msg)
                except BaseException:  # noqa: BLE001 - a handler's failure must not stop the thread
                    _log.exception("dlexec: error while handling a %s message", channel)
        except BaseException as exc:  # noqa: BLE001 - the thread never ends silently
            reason = f"the connection to kernel {self.id} was lost: {exc!r}"
        else:
            close = getattr(self._ws, "close_reason", "") or ""
            code = getattr(self._ws, "close_code", None)
            detail = f"{code}: {close}" if close else f"{code}"
            reason = f"the server closed the connection to kernel {self.id} (code {detail})"
            if code == 1009:
                reason += ("; a message was larger than the server accepts (tornado's "
                           "websocket_max_message_size, 10 MiB by default): send smaller payloads or raise it")
        if not self._stopping:
            self._died(self._explain_loss(reason))

    def _explain_loss(self, reason: str) -> str:
        try:
            response = self._request("GET", f"/api/kernels/{self.kernel_id}", timeout=5)
        except requests.RequestException as exc:
            return f"{reason}; the server is unreachable ({exc})"
        if response.status_code == 404:
            return f"{reason}; the kernel no longer exists on the server"
        return reason

    def _died(self, reason: str) -> None:
        with self._lock:
            if self._stopping or self._exit_reason is not None:
                return
            self._exit_reason = reason
        self.on_exit(reason)

    # -- framing ------------------------------------------------------------------------------

    def _serialize(self, channel: str, msg: dict):
        """The message's JSON: four parts (v1 protocol) or one document (the default protocol)."""
        if self.subprotocol == V1_SUBPROTOCOL:
            return self._session.serialize(msg)[2:]  # header, parent, metadata, content (no signature)
        wire = {
            "header": msg["header"],
            "parent_header": msg["parent_header"],
            "metadata": msg["metadata"],
            "content": msg["content"],
            "channel": channel,
        }
        return self._session.pack(wire)

    def _frame(self, channel: str, head, buffers: list):
        """One WebSocket frame: the JSON made by :meth:`_serialize` and the buffers."""
        if self.subprotocol == V1_SUBPROTOCOL:
            return encode_v1(channel, [*head, *buffers])
        if not buffers:
            return head.decode("utf-8")
        return encode_json_binary(head, buffers)

    def _decode(self, frame) -> tuple[str, dict]:
        if isinstance(frame, bytes):
            # Buffers become NumPy arrays and such: over a read-only frame they would be
            # read-only, unlike a ProcessPoolExecutor's results. One copy makes them writable.
            frame = bytearray(frame)
        if self.subprotocol == V1_SUBPROTOCOL:
            channel, parts = decode_v1(frame)
            # The four JSON parts as bytes (not every JSON unpacker takes a memoryview);
            # the buffers stay views into the frame, uncopied.
            parts[:4] = [bytes(part) for part in parts[:4]]
            return channel, self._session.deserialize([b"", *parts], content=True)
        if isinstance(frame, str):
            msg, buffers = json.loads(frame), []
        else:
            head, buffers = decode_json_binary(frame)
            msg = json.loads(bytes(head))
        channel = msg.pop("channel", "iopub")
        msg.setdefault("metadata", {})
        msg["msg_id"] = msg["header"].get("msg_id")
        msg["msg_type"] = msg["header"].get("msg_type")
        msg["buffers"] = buffers
        return channel, msg


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a refused WebSocket handshake (websockets' ``InvalidStatus``), if any."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _mentions(exc: BaseException, secret: str) -> bool:
    """Whether ``secret`` is in the exception or anything it chains to."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if secret in str(exc) or secret in repr(exc) or any(secret in repr(arg) for arg in exc.args):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def encode_v1(channel: str, parts: list) -> bytes:
    """``v1.kernel.websocket.jupyter.org``: 8-byte little-endian offsets, channel, parts."""
    channel_bytes = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel_bytes))
    for part in parts:
        offsets.append(offsets[-1] + memoryview(part).nbytes)
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, channel_bytes, *parts])


def decode_v1(frame: bytes) -> tuple[str, list]:
    view = memoryview(frame)
    count = struct.unpack_from("<Q", view, 0)[0]
    offsets = struct.unpack_from(f"<{count}Q", view, 8)
    channel = bytes(view[offsets[0] : offsets[1]]).decode("utf-8")
    parts = [view[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    return channel, parts


def encode_json_binary(head: bytes, buffers: list) -> bytes:
    """The default protocol's binary frame: 4-byte big-endian count and offsets, JSON, buffers."""
    chunks = [head, *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + memoryview(chunk).nbytes)
    return b"".join([struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets), *chunks])


def decode_json_binary(frame: bytes) -> tuple[memoryview, list]:
    view = memoryview(frame)
    count = struct.unpack_from("!I", view, 0)[0]
    offsets = [*struct.unpack_from(f"!{count}I", view, 4), len(view)]
    chunks = [view[offsets[i] : offsets[i + 1]] for i in range(count)]
    return chunks[0], chunks[1:]


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges at once what it receives.

    Jupyter Server does not disable Nagle's algorithm on its WebSockets, so it holds a
    small frame (a reply) until the previous one (a status message) is acknowledged, and
    Linux delays acknowledgements by up to 40 ms: every round trip would take 40 ms.
    """

    if hasattr(socket, "TCP_QUICKACK"):

        def recv(self, bufsize, flags=0):
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            return super().recv(bufsize, flags)

        def recv_into(self, buffer, nbytes=0, flags=0):
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            return super().recv_into(buffer, nbytes, flags)


def _connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    error: Exception | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = _QuickAckSocket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"cannot resolve {host}")


def _ssl_context(verify):
    import ssl

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context()
