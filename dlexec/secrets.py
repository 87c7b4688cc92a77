"""Secrets stay secret: checks for tokens and the URLs they travel to, and masks for what is shown.

A token is checked where it is first known (a constructor, the command line), so that a bad
one fails with a message naming the setting to fix, before any request, and never inside
``requests``/``http.client``, whose errors quote header values. A token goes unencrypted
(``http://``, ``ws://``) only to this machine, unless the caller opts in.
:class:`SecretSession` drops every secret header, not only ``Authorization``, on a redirect
to another host; :class:`RedactingLogger` masks secrets in a library's log lines.
Nothing here formats a secret into a message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Iterable

import requests

#: What a masked secret looks like.
MASK = "***"
#: Set to 1 to allow tokens over plain http:// or ws:// to other machines (a trusted network).
INSECURE_ENV = "DLEXEC_ALLOW_INSECURE"
#: Headers that carry secrets (lower case).
SECRET_HEADERS = frozenset({"authorization", "x-external-token", "cookie", "set-cookie", "proxy-authorization"})
#: Keys of JSON objects whose values are secrets (lower case).
SECRET_KEYS = frozenset({"token", "jupyter_token", "external_token", "api_key", "access_token", "password"})


def check_token(token: str | None, what: str) -> str | None:
    """``token`` unchanged if it is printable ASCII without whitespace (or empty/None); else a
    ``ValueError`` that names ``what`` (the setting to fix) and the kind of bad character,
    never the token or a part of it. Such a token would otherwise fail inside an HTTP library,
    whose error quotes the header."""
    if not token:
        return token
    if not isinstance(token, str):
        raise TypeError(f"{what} must be a string, not {type(token).__name__}")
    problem = _problem(token)
    if problem:
        raise ValueError(f"{what} contains {problem} (a token is printable ASCII without spaces or line breaks): "
                         "check how it was set, e.g. a line break or a space copied with it")
    return token


def _problem(token: str) -> str:
    """The kind of the first character a token must not contain, or ''."""
    for char in token:
        if "!" <= char <= "~":
            continue
        if char in "\r\n":
            return "a line break"
        if char.isspace():
            return "whitespace"
        if ord(char) > 127:
            return "a non-ASCII character"
        return "a control character"
    return ""


def insecure_allowed(allow_insecure: bool = False) -> bool:
    """Whether plain-text transports may carry tokens: the argument, or ``$DLEXEC_ALLOW_INSECURE=1``."""
    return bool(allow_insecure) or os.environ.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_transport(url: str, what: str, allow_insecure: bool = False) -> None:
    """Refuse to send ``what`` (a token) over plain ``http://`` or ``ws://`` to another machine.

    Raises ``ValueError`` saying how to opt in (``allow_insecure=True`` or
    ``$DLEXEC_ALLOW_INSECURE=1``); the message names the scheme and host only, never the
    URL's user info.
    """
    parts = urllib.parse.urlsplit(url or "")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "ws"):
        return
    try:
        host = parts.hostname
    except ValueError:
        host = None
    if is_loopback(host) or insecure_allowed(allow_insecure):
        return
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    where = f"{scheme}://{'[' + host + ']' if host and ':' in host else host}{port}"
    raise ValueError(
        f"refusing to send {what} unencrypted to {where}: anyone on the network could read it. "
        f"Use https:// (wss://), or, on a network you trust, pass allow_insecure=True or set {INSECURE_ENV}=1"
    )


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_keys(data, keys: Iterable[str] = SECRET_KEYS):
    """A copy of JSON-like ``data`` whose values under secret keys (any depth) are ``***``."""
    keys = frozenset(k.lower() for k in keys)
    if isinstance(data, dict):
        return {k: (MASK if isinstance(k, str) and k.lower() in keys and v not in (None, "")
                    else mask_keys(v, keys)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_keys(item, keys) for item in data]
    return data


class SecretSession(requests.Session):
    """A ``requests.Session`` that drops every header in ``secret_headers`` when a redirect goes
    to another host or scheme (requests itself drops only ``Authorization``), with requests'
    own rule (:meth:`requests.Session.should_strip_auth`)."""

    def __init__(self, secret_headers: Iterable[str] = ("Authorization", "X-External-Token")):
        super().__init__()
        self.secret_headers = frozenset(name.lower() for name in secret_headers)

    def rebuild_auth(self, prepared_request, response) -> None:
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in [n for n in prepared_request.headers if n.lower() in self.secret_headers]:
                del prepared_request.headers[name]
        super().rebuild_auth(prepared_request, response)


class RedactingLogger(logging.LoggerAdapter):
    """A logger for a library that logs headers (websockets does at DEBUG): every line has the
    given secrets, and the values of :data:`SECRET_HEADERS`, masked."""

    def __init__(self, logger: logging.Logger, secrets: Iterable[str | None] = ()):
        super().__init__(logger, {})
        self.secrets = tuple(s for s in secrets if s)

    def log(self, level: int, msg, *args, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        if len(args) == 2 and isinstance(args[0], str) and args[0].lower() in SECRET_HEADERS:
            args = (args[0], MASK)  # websockets: "> %s: %s" % (name, value)
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        kwargs.setdefault("stacklevel", 2)  # the library's line, not this one
        self.logger.log(level, "%s", redact(text, *self.secrets), **kwargs)


__all__ = [
    "INSECURE_ENV",
    "MASK",
    "SECRET_HEADERS",
    "SECRET_KEYS",
    "RedactingLogger",
    "SecretSession",
    "check_token",
    "check_transport",
    "insecure_allowed",
    "is_loopback",
    "mask_keys",
    "redact",
]
