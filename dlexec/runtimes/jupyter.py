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

import contextlib
import logging
import queue
import threading
import time

import requests
from jupyter_client.session import Session

from .. import _threads
from ..errors import RuntimeStartError
from ..secrets import SECRET_HEADERS, SecretSession, check_token, check_transport, redact
from . import jupyter_ws
from .base import Runtime
from .jupyter_ws import (  # noqa: F401 - the codec's names, re-exported
    V1_SUBPROTOCOL,
    decode_json_binary,
    decode_v1,
    encode_json_binary,
    encode_v1,
)
from .lifecycle import TerminateOnce

_log = logging.getLogger("dlexec")

#: How the token is sent: "token" (Jupyter's header, HTTP and WebSocket) or "bearer" (the SDK's:
#: a Bearer header on HTTP, the ``token`` query parameter on the WebSocket).
AUTH_SCHEMES = ("token", "bearer")
_STOP = object()


class JupyterServerRuntime(TerminateOnce, Runtime):
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
        self._restart_until = 0.0  # time.monotonic() until which a restart is expected
        self._init_terminate_once()

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
        self._ws = jupyter_ws.open_websocket(self.url, self.kernel_id, self._session.session, self._http, self.token,
                                             self.auth, self.subprotocol_choice, timeout)
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
        self._outbox.put((channel, jupyter_ws.serialize(self._session, self.subprotocol, channel, msg), list(buffers)))

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

    def _terminate(self) -> None:
        self._outbox.put(_STOP)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
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
                frame = jupyter_ws.frame(self.subprotocol, *item)
                self._ws.send(frame)
            except BaseException as exc:  # noqa: BLE001 - the thread never ends silently
                reason = f"the connection to kernel {self.id} failed while sending: {exc!r}"
                if len(frame) > jupyter_ws.TORNADO_MAX_MESSAGE:
                    reason += (f"; the message was {len(frame) / 2**20:.0f} MiB and Jupyter Servers refuse more than "
                               "10 MiB unless configured otherwise (tornado's websocket_max_message_size)")
                self._died(reason)
                self._close_quietly()
                return
            finally:
                del frame, item  # a large payload is not kept alive while the queue is empty

    def _close_quietly(self) -> None:
        with contextlib.suppress(BaseException):
            self._ws.close()

    def _receive_loop(self) -> None:
        """The receive thread: per message, whatever fails is logged and the next one read;
        if the connection ends (or the loop cannot go on), that is the kernel's death."""
        try:
            for frame in self._ws:
                try:
                    channel, msg = jupyter_ws.decode(self._session, self.subprotocol, frame)
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
