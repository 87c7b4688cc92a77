"""One request to the Datalayer API: the token, retries with back-off, and the error that says what failed.

:class:`Transport` is the base of :class:`~dlexec.datalayer.DatalayerClient`: it knows URLs,
headers and statuses, nothing of runtimes or snapshots. Reads are retried on transient
failures (connection errors, 502/503/504) up to a deadline; a request that may have reached
the server is retried only as its caller allows (see ``_request``).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests
import urllib3

from ..errors import AuthenticationError, CapacityError, DatalayerError, NotFoundError
from ..secrets import SecretSession, check_transport

RUNTIMES_API = "/api/runtimes/v1"
IAM_API = "/api/iam/v1"


class Transport:
    """Requests to the API over one :class:`~dlexec.secrets.SecretSession` (``_session``), with
    the client's ``token``, ``token_source``, ``runtimes_url``, ``timeout``, ``retry_deadline``
    and ``allow_insecure``."""

    token: str | None
    token_source: str | None
    runtimes_url: str
    timeout: float
    retry_deadline: float
    allow_insecure: bool
    _session: SecretSession

    def _run(self, path: str) -> str:
        return self.runtimes_url + RUNTIMES_API + path

    def _get(self, url: str) -> dict:
        return self._request("GET", url, retry_statuses=(502, 503, 504),
                             retry_errors=(requests.ConnectionError, requests.Timeout))

    def _delete(self, url: str) -> dict:
        return self._request("DELETE", url, retry_statuses=(502, 504),
                             retry_errors=(requests.ConnectionError, requests.Timeout))

    def _headers(self, method: str, url: str) -> dict:
        if not self.token:
            raise AuthenticationError("no token: set DATALAYER_API_KEY (or DATALAYER_EXTERNAL_TOKEN), "
                                      "pass token= / --token-file, or run `datalayer login` (with "
                                      "`pip install dlexec[keyring]`)", hint="")
        check_transport(url, "the Datalayer API token", self.allow_insecure)  # also for URLs set after __init__
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.token_source == "DATALAYER_EXTERNAL_TOKEN":
            headers["X-External-Token"] = self.token
        return headers

    def _request(self, method: str, url: str, *, json: dict | None = None, retry_statuses: tuple = (),
                 retry_errors: tuple | Callable[[requests.RequestException], bool] = (),
                 retry_if: Callable[[requests.Response, dict], bool] | None = None) -> dict:
        """One API call, retried as allowed; the JSON body (``{}`` when empty), or a :class:`DatalayerError`.

        ``retry_errors``: exception types, or a predicate, for the failures without an answer
        that may be retried. ``retry_statuses``: the statuses that may be retried, and, when
        ``retry_if`` is given, only those answers it accepts (it also decides which 503 is the
        API's "no capacity", a :class:`CapacityError`).
        """
        headers = self._headers(method, url)
        deadline = time.monotonic() + self.retry_deadline
        delay, attempts = 0.5, 0
        while True:
            attempts += 1
            try:
                response = self._session.request(method, url, json=json, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                host = _unresolvable(exc)
                if host is not None:
                    raise DatalayerError(
                        f"cannot resolve the host {host}: check the URL (run_url=, iam_url=, --run-url, "
                        "$DATALAYER_RUN_URL, $DATALAYER_IAM_URL) and your network", method=method, url=url) from exc
                where = _refused(exc)
                if where is not None and method != "DELETE":
                    # A wrong port or a service that is down: fail now. A DELETE (of a runtime this
                    # process created while the API answered) still waits: a runtime left running is billed.
                    raise DatalayerError(
                        f"nothing is listening at {where} (connection refused): check the URL (run_url=, iam_url=, "
                        "--run-url, $DATALAYER_RUN_URL, $DATALAYER_IAM_URL) and that the service is up",
                        method=method, url=url) from exc
                retry = retry_errors(exc) if callable(retry_errors) else isinstance(exc, retry_errors)
                if retry and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 4.0)
                    continue
                reason = _describe(exc, self.timeout)
                raise DatalayerError(f"{reason}{_tries(attempts)}", method=method, url=url) from exc
            body = _json(response)
            retry = response.status_code in retry_statuses and (retry_if is None or retry_if(response, body))
            if retry and time.monotonic() + delay < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            break
        status = response.status_code
        if status >= 400 or body.get("success") is False:
            error = _error(method, url, status, _server_message(response, body), attempts)
            if isinstance(error, CapacityError) and retry_if is not None and not retry_if(response, body):
                # A 503 that is not the API's own refusal (a gateway's): the request may have gone through.
                error = DatalayerError(_server_message(response, body) + _tries(attempts), status=status, url=url,
                                       method=method)
            raise error
        return body


def _error(method: str, url: str, status: int, message: str, attempts: int) -> DatalayerError:
    kind = DatalayerError
    if status in (401, 403):
        kind = AuthenticationError
    elif status == 404:
        kind = NotFoundError
    elif status == 503 and method == "POST" and url.endswith(RUNTIMES_API + "/runtimes"):
        kind = CapacityError
        if not re.search(r"capacity|available", message, re.IGNORECASE):
            message = f"no runtime available: {message}"
    if status >= 500:
        message += _tries(attempts)
    return kind(message, status=status, url=url, method=method)


def _not_sent(exc: requests.RequestException) -> bool:
    """Whether a request certainly never reached the server (no connection was made), so that
    sending it again cannot create anything twice."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    return any(isinstance(item, urllib3.exceptions.NewConnectionError) for item in _causes(exc))  # refused, DNS


def _unresolvable(exc: requests.RequestException) -> str | None:
    """The host name that did not resolve, if that is why ``exc`` happened: a wrong URL or no
    network, not a passing fault, so it is not retried."""
    if not isinstance(exc, requests.ConnectionError):
        return None
    if any(isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError" for item in _causes(exc)):
        return urllib.parse.urlsplit(exc.request.url).hostname if exc.request is not None else "?"
    return None


def _refused(exc: requests.RequestException) -> str | None:
    """``host:port`` if ``exc`` is a refused connection (nothing listening there), else None."""
    if not isinstance(exc, requests.ConnectionError) or exc.request is None:
        return None
    if any(isinstance(item, ConnectionRefusedError) for item in _causes(exc)):
        parts = urllib.parse.urlsplit(exc.request.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return None


def _causes(exc: BaseException):
    """``exc`` and what it wraps: requests wraps urllib3's MaxRetryError, whose ``.reason`` is the cause."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        pending += [getattr(item, "reason", None), getattr(item, "__cause__", None), *getattr(item, "args", ())[:1]]


def _no_capacity(response: requests.Response, body: dict) -> bool:
    """Whether a create was refused by the API itself for lack of capacity (doc: R1 503): its JSON
    answer with ``success: false``, not a gateway's 503 (then the request may have gone through)."""
    return response.status_code == 503 and body.get("success") is False


def _describe(exc: requests.RequestException, timeout: float) -> str:
    """A short reason for a request that got no answer (not urllib3's nested reprs)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return f"cannot connect: {errno.group(0)}"
    return text[:300]


def _tries(attempts: int) -> str:
    return f" (after {attempts} attempts)" if attempts > 1 else ""


def _json(response: requests.Response) -> dict:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"data": body}


def _server_message(response: requests.Response, body: dict) -> str:
    """What the server said went wrong: its ``message``, ``errors`` and ``exception``, else the text."""
    parts = []
    for key in ("message", "errors", "exception"):
        value = body.get(key)
        if value:
            parts.append("; ".join(map(str, value)) if isinstance(value, list) else str(value))
    if parts:
        return " - ".join(parts)
    if response.text.strip() and "html" not in response.headers.get("Content-Type", ""):
        return " ".join(response.text.split())[:300]
    return response.reason or "no message"

