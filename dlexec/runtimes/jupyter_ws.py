"""The WebSocket of a kernel on a Jupyter Server: opening it, and the frames that travel on it.

:func:`open_websocket` connects to ``{url}/api/kernels/{id}/channels``, offering the
``v1.kernel.websocket.jupyter.org`` subprotocol (binary frames: message buffers travel as
they are); a server without it speaks the default JSON protocol (binary frames only for
messages that carry buffers). :func:`serialize`, :func:`frame` and :func:`decode` turn
jupyter-client messages into frames of either protocol and back.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import urllib.parse

from ..errors import RuntimeStartError
from ..secrets import RedactingLogger, redact

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
TORNADO_MAX_MESSAGE = 10 * 2**20  # what a Jupyter Server accepts in one message by default


def open_websocket(url: str, kernel_id: str, session_id: str, http, token: str | None, auth: str,
                   subprotocol_choice: str | None, timeout: float):
    """The open WebSocket of kernel ``kernel_id`` on the server at ``url``, with the headers and
    TLS settings of the ``http`` session; a :class:`RuntimeStartError` that never shows the token."""
    from websockets.sync.client import connect

    parts = urllib.parse.urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    params = {"session_id": session_id}
    headers = dict(http.headers)
    headers.pop("Accept-Encoding", None)
    if auth == "bearer" and token:  # the SDK's form: in the query, not in a header
        params["token"] = token
        headers.pop("Authorization", None)
    path = f"{parts.path}/api/kernels/{kernel_id}/channels"
    ws_url = urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(params), ""))
    # What errors show: the URL without its query (session id and, above all, the token).
    shown_url = urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))
    protocols = [V1_SUBPROTOCOL] if subprotocol_choice in ("auto", V1_SUBPROTOCOL) else None
    try:
        sock = _connect_tcp(parts.hostname, parts.port or (443 if scheme == "wss" else 80), timeout)
        return connect(
            ws_url,
            sock=sock,
            subprotocols=protocols,
            additional_headers={k: v for k, v in headers.items() if k.lower() not in ("accept", "connection")},
            open_timeout=timeout,
            max_size=None,
            compression=None,
            ping_interval=30,
            ping_timeout=None,
            ssl=None if scheme == "ws" else _ssl_context(http.verify),
            # websockets logs the handshake's headers at DEBUG: the token must not be in them
            logger=RedactingLogger(logging.getLogger("websockets.client"), [token]),
        ).__enter__()  # the context-manager form (websockets >= 17.1 deprecates the other)
    except Exception as exc:  # noqa: BLE001 - every failure here means: cannot reach the kernel
        reason = redact(str(exc), token)
        hint = " (check the token)" if _status(exc) in (401, 403) else ""
        error = RuntimeStartError(f"cannot open the kernel WebSocket {shown_url}: {reason}{hint}",
                                  status=_status(exc))
        # The library's exception may quote the URL, and so the token: then it is not chained.
        raise error from (None if token and _mentions(exc, token) else exc)


# -- frames ---------------------------------------------------------------------------------------


def serialize(session, subprotocol: str | None, channel: str, msg: dict):
    """The message's JSON: four parts (v1 protocol) or one document (the default protocol)."""
    if subprotocol == V1_SUBPROTOCOL:
        return session.serialize(msg)[2:]  # header, parent, metadata, content (no signature)
    wire = {
        "header": msg["header"],
        "parent_header": msg["parent_header"],
        "metadata": msg["metadata"],
        "content": msg["content"],
        "channel": channel,
    }
    return session.pack(wire)


def frame(subprotocol: str | None, channel: str, head, buffers: list):
    """One WebSocket frame: the JSON made by :func:`serialize` and the buffers."""
    if subprotocol == V1_SUBPROTOCOL:
        return encode_v1(channel, [*head, *buffers])
    if not buffers:
        return head.decode("utf-8")
    return encode_json_binary(head, buffers)


def decode(session, subprotocol: str | None, frame) -> tuple[str, dict]:
    """``(channel, message)`` from a frame, buffers included."""
    if isinstance(frame, bytes):
        # Buffers become NumPy arrays and such: over a read-only frame they would be
        # read-only, unlike a ProcessPoolExecutor's results. One copy makes them writable.
        frame = bytearray(frame)
    if subprotocol == V1_SUBPROTOCOL:
        channel, parts = decode_v1(frame)
        # The four JSON parts as bytes (not every JSON unpacker takes a memoryview);
        # the buffers stay views into the frame, uncopied.
        parts[:4] = [bytes(part) for part in parts[:4]]
        return channel, session.deserialize([b"", *parts], content=True)
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
