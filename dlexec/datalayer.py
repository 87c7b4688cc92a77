"""A small client of the Datalayer REST API: account, environments, runtimes, snapshots.

Unlike the reference SDK, every failure raises a :class:`DatalayerError` that says which
request failed, with which status and what the server answered; the URLs honour
``$DATALAYER_RUN_URL`` / ``$DATALAYER_IAM_URL``; reads are retried on transient failures
(connection errors, 502/503/504) with exponential back-off, up to a deadline; a runtime
creation that may have reached the server is never sent again, but reconciled by listing
(see :meth:`DatalayerClient.create_runtime`); a snapshot is looked up by what was created,
never "the last one listed".

The token is the ``token`` argument, else ``$DATALAYER_API_KEY``, else
``$DATALAYER_EXTERNAL_TOKEN`` (also sent as ``X-External-Token``), else the system keyring
entry that ``datalayer login`` writes (when the optional ``keyring`` package is installed),
as the SDK looks for it. A missing token is reported by the first request that needs one
(:class:`AuthenticationError`), so a client can be built, and its URLs inspected, without one.

The runtimes, environments and snapshots API lives at the runtimes URL (``runtimes_url``,
else ``run_url``, else ``$DATALAYER_RUNTIMES_URL``, else ``$DATALAYER_RUN_URL``); snapshots
are under ``runtime-snapshots`` (SDK 1.1.x) or ``sandbox-snapshots`` (later versions): a 404
of one switches to the other.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import re
import secrets
import shlex
import socket
import time
import urllib.parse
import uuid
import warnings
from typing import Any, Callable
from urllib.parse import quote

import requests
import urllib3

from .errors import AuthenticationError, CapacityError, DatalayerError, NotFoundError, UnknownNameError
from .secrets import SecretSession, check_token, check_transport
from .snapshots import RuntimeSnapshotModel
from .urls import DEFAULT_URL, DatalayerURLs, resolve_runtimes_url

RUNTIMES_API = "/api/runtimes/v1"
#: The snapshots collection: its SDK 1.1.x name first, then its later one (tried on a 404).
SNAPSHOT_PATHS = ("runtime-snapshots", "sandbox-snapshots")
IAM_API = "/api/iam/v1"
TOKEN_ENV_VARS = ("DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN")
#: Seconds between the listings that look for the runtime of a create whose outcome is unclear.
RECONCILE_DELAYS = (1.0, 2.0)

_log = logging.getLogger("dlexec")


@dataclasses.dataclass
class Environment:
    """An environment runtimes are created from; ``burning_rate`` is in credits per second."""

    name: str
    title: str = ""
    description: str = ""
    language: str = ""
    burning_rate: float = 0.0
    owner: str = ""
    visibility: str = ""
    resources: Any = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> Environment:
        return cls(name=data.get("name", ""), title=data.get("title") or "", description=data.get("description") or "",
                   language=data.get("language") or "", burning_rate=_float(data.get("burning_rate")) or 0.0,
                   owner=data.get("owner") or "", visibility=data.get("visibility") or "",
                   resources=data.get("resources"), raw=data)


@dataclasses.dataclass
class RuntimeInfo:
    """A live runtime. ``ingress`` is its Jupyter Server's base URL and ``token`` that server's
    token (not the Datalayer API key); ``started_at``/``expired_at`` are epoch seconds."""

    pod_name: str
    uid: str = ""
    given_name: str = ""
    environment_name: str = ""
    environment_title: str = ""
    type: str = ""
    burning_rate: float | None = None
    ingress: str = ""
    token: str = dataclasses.field(default="", repr=False)
    reservation_id: str = ""
    started_at: float | None = None
    expired_at: float | None = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> RuntimeInfo:
        text = {key: str(data.get(key) or "") for key in (
            "uid", "given_name", "environment_name", "environment_title", "type", "ingress", "token",
            "reservation_id")}
        return cls(pod_name=data.get("pod_name", ""), burning_rate=_float(data.get("burning_rate")),
                   started_at=_float(data.get("started_at")), expired_at=_float(data.get("expired_at")),
                   raw=data, **text)


@dataclasses.dataclass
class Snapshot:
    """A runtime snapshot stored by Datalayer."""

    uid: str
    name: str = ""
    description: str = ""
    environment: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)
    status: str = ""
    size: Any = None
    updated_at: Any = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> Snapshot:
        return cls(uid=data.get("uid", ""), name=data.get("name") or "", description=data.get("description") or "",
                   environment=data.get("environment") or "", metadata=data.get("metadata") or {},
                   status=data.get("status") or "", size=data.get("size"), updated_at=data.get("updated_at"),
                   raw=data)

    def to_model(self) -> RuntimeSnapshotModel:
        """The same snapshot as a :class:`dlexec.RuntimeSnapshotModel` (the seed API's type)."""
        return RuntimeSnapshotModel(self.uid, self.name, self.description, self.environment, dict(self.metadata))


def terminate_command(pod_name: str) -> str:
    """The shell command that deletes a runtime, for messages about runtimes left running."""
    return f"dlexec runtimes terminate {shlex.quote(pod_name)}"


def resolve_token(token: str | None = None, urls: tuple[str | None, ...] = ()) -> tuple[str | None, str | None]:
    """``(token, source)``: the argument, else ``$DATALAYER_API_KEY``, else ``$DATALAYER_EXTERNAL_TOKEN``,
    else the keyring entry ``datalayer login`` wrote for one of ``urls`` (source ``"keyring"``).

    A malformed token (whitespace, line breaks, non-ASCII) is a ``ValueError`` naming its source.
    """
    if token:
        return check_token(token, "the Datalayer token= argument"), "argument"
    for name in TOKEN_ENV_VARS:
        if os.environ.get(name):
            return check_token(os.environ[name], f"${name}"), name
    for url in dict.fromkeys(u for u in urls if u):
        stored = keyring_token(url)
        if stored:
            return check_token(stored, f"the keyring entry of {url} (`datalayer login` again)"), "keyring"
    return None, None


def keyring_token(url: str) -> str | None:
    """The token ``datalayer login`` stored for ``url`` (``keyring.get_password(url, "access_token")``;
    SDK 1.1.x keys it by the run URL, later versions by the IAM URL), or None. ``keyring`` is an
    optional extra (``pip install dlexec[keyring]``); a missing package or a failing backend means None."""
    try:
        import keyring  # optional: imported only when no other token source is set

        return keyring.get_password(url, "access_token") or None
    except Exception:  # noqa: BLE001 - no keyring, no backend, a locked one: as if no entry
        return None


class DatalayerClient:
    """The Datalayer REST API, over one ``requests.Session``.

    ``timeout`` bounds each request (seconds); ``retry_deadline`` bounds the retries of one
    call (seconds, back-off 0.5, 1, 2, 4, 4... s). Use it as a context manager, or call
    :meth:`close`.

    The token is checked here, before any request: a malformed one, or one that would go over
    plain ``http://`` to another machine, is a ``ValueError`` (``allow_insecure=True`` or
    ``$DLEXEC_ALLOW_INSECURE=1`` allows the latter). It never follows a redirect to another host.
    """

    def __init__(self, token: str | None = None, run_url: str | None = None, iam_url: str | None = None, *,
                 runtimes_url: str | None = None, timeout: float = 60.0, retry_deadline: float = 30.0,
                 allow_insecure: bool = False):
        for option, value in (("token", token), ("run_url", run_url), ("iam_url", iam_url),
                              ("runtimes_url", runtimes_url)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{option} must be a string or None, not {type(value).__name__}")
        self.run_url = (run_url or os.environ.get("DATALAYER_RUN_URL") or DEFAULT_URL).rstrip("/")
        self.iam_url = (iam_url or os.environ.get("DATALAYER_IAM_URL") or self.run_url).rstrip("/")
        self.runtimes_url = resolve_runtimes_url(runtimes_url, run_url)
        self.token, self.token_source = resolve_token(token, (self.run_url, self.iam_url))
        self.allow_insecure = allow_insecure
        self._snapshot_path = SNAPSHOT_PATHS[0]
        if self.token:
            for url in dict.fromkeys((self.run_url, self.iam_url, self.runtimes_url)):
                check_transport(url, "the Datalayer API token", allow_insecure)
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        from . import __version__

        self._session = SecretSession(("Authorization", "X-External-Token"))
        self._session.headers.update({
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"dlexec/{__version__}",
        })

    def __repr__(self) -> str:
        return (f"DatalayerClient(run_url={self.run_url!r}, iam_url={self.iam_url!r}, "
                f"runtimes_url={self.runtimes_url!r}, token from {self.token_source})")

    @property
    def urls(self) -> DatalayerURLs:
        """The URLs this client uses, in the SDK's shape."""
        return dataclasses.replace(DatalayerURLs.from_environment(self.run_url, self.iam_url),
                                   runtimes_url=self.runtimes_url)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> DatalayerClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- account ---------------------------------------------------------------------------------

    def whoami(self) -> dict:
        """The caller's profile (``handle_s``, ``uid``, ``email_s``, ``first_name_t``...)."""
        return self._get(self.iam_url + IAM_API + "/whoami").get("profile") or {}

    def credits(self) -> dict:
        """``{"credits": {"credits", "quota", "last_update"}, "reservations": [...]}``."""
        body = self._get(self.iam_url + IAM_API + "/usage/credits")
        return {"credits": body.get("credits") or {}, "reservations": body.get("reservations") or []}

    # -- environments ----------------------------------------------------------------------------

    def list_environments(self) -> list[Environment]:
        return [Environment.from_json(e) for e in self._get(self._run("/environments")).get("environments") or []]

    def get_environment(self, name: str) -> Environment:
        """The environment called ``name``; :class:`UnknownNameError` (a ``ValueError``) lists the valid ones."""
        environments = self.list_environments()
        for environment in environments:
            if environment.name == name:
                return environment
        valid = ", ".join(e.name for e in environments) or "none"
        raise UnknownNameError(f"unknown environment {name!r}; available: {valid}")

    # -- runtimes --------------------------------------------------------------------------------

    def create_runtime(self, environment: str, time_reservation_minutes: float = 10.0, given_name: str | None = None,
                       snapshot: str | None = None) -> RuntimeInfo:
        """Create (and start billing) a runtime; delete it with :meth:`delete_runtime`.

        The credits reserved (the most the runtime may burn before the server stops it) are the
        environment's burning rate × 60 × ``time_reservation_minutes``: a reservation that is
        not a positive number, or an environment without a burning rate, is a ``ValueError``
        before anything is sent. ``snapshot`` (a snapshot uid or name) restores that snapshot
        into the new runtime. Raises :class:`CapacityError` when no runtime is available after
        the retries.

        The request is never sent twice once it may have reached the server (a duplicate would
        be a paid runtime nobody owns): it is retried only on the API's own "no capacity" 503
        and on connection errors that happened before sending. When the outcome is unclear
        (another 5xx, a timeout, a dropped connection), the runtime is looked up by
        ``given_name`` and returned if found; when the call is interrupted (Ctrl-C), the
        runtime found is deleted and the interruption propagates. This needs a ``given_name``
        unique among the account's runtimes: without one, a random ``dlexec-<hex>`` is used.
        """
        minutes = check_time_reservation(time_reservation_minutes)
        env = self.get_environment(environment)
        rate = env.burning_rate
        if not (isinstance(rate, numbers.Real) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"environment {env.name!r} has no burning rate (credits per second), so the runtime's "
                             "credits limit would be 0: choose an environment with a positive rate "
                             "(`dlexec envs ls`)")
        given_name = given_name or f"dlexec-{secrets.token_hex(4)}"
        body: dict[str, Any] = {
            "type": "notebook",
            "environment_name": env.name,
            "credits_limit": rate * 60.0 * minutes,
            "given_name": given_name,
        }
        if snapshot:
            body["from"] = self._find_snapshot(snapshot).uid
        url = self._run("/runtimes")
        self._headers("POST", url)  # no usable token fails here, before anything is sent (nothing to reconcile)
        try:
            data = self._request("POST", url, json=body, retry_statuses=(503,), retry_errors=_not_sent,
                                 retry_if=_no_capacity)
            return self._runtime_from(data, "POST", url)
        except CapacityError:  # refused by the API: nothing was created
            raise
        except DatalayerError as exc:
            if exc.status is not None and 400 <= exc.status < 500:  # refused: nothing was created
                raise
            if isinstance(exc.__cause__, requests.RequestException) and _not_sent(exc.__cause__):
                raise  # never sent (a host that does not resolve): nothing to reconcile
            return self._reconcile_create(given_name, exc, keep=True)  # unclear: it may exist
        except BaseException as exc:  # Ctrl-C, SystemExit, a bug: the caller will not get the runtime
            self._reconcile_create(given_name, exc, keep=False)
            raise

    def abandon_create(self, given_name: str) -> None:
        """Delete the runtime of a create whose answer will not be awaited (at exit), found by its
        unique ``given_name``. Failures are reported (log and ``RuntimeWarning``), never raised."""
        self._reconcile_create(given_name, TimeoutError("no answer before exit"), keep=False)

    def _reconcile_create(self, given_name: str, cause: BaseException, keep: bool) -> RuntimeInfo | None:
        """After a create whose outcome is unclear (``cause``), find its runtime by ``given_name``.

        ``keep``: return the runtime found, else raise ``cause``. Otherwise delete the runtime
        found and return None. What cannot be looked up or deleted is reported (log and
        ``RuntimeWarning``) with the commands that find and delete it.
        """
        try:
            matches: list[RuntimeInfo] = []
            for delay in (0.0, *RECONCILE_DELAYS):  # a server still creating it lists it a moment later
                time.sleep(delay)
                matches = [r for r in self.list_runtimes() if r.given_name == given_name]
                if matches:
                    break
            if len(matches) > 1:  # the name is not ours alone: touch none of them
                raise DatalayerError(f"several runtimes are named {given_name!r}: "
                                     f"{', '.join(r.pod_name for r in matches)}")
        except Exception as exc:  # noqa: BLE001 - reported, then the original failure goes on
            message = (f"the request creating the Datalayer runtime {given_name!r} had an unclear outcome "
                       f"({_brief(cause)}), and finding that runtime failed ({_brief(exc)}); it may be running and "
                       f"consuming credits: look for {given_name!r} with `dlexec runtimes ls` and delete it with "
                       "`dlexec runtimes terminate POD_NAME`")
            _warn(message)
            if keep:
                raise DatalayerError(message, status=getattr(cause, "status", None), url=getattr(cause, "url", None),
                                     method=getattr(cause, "method", None)) from cause
            return None
        found = matches[0] if matches else None
        if keep:
            if found is None:
                if isinstance(cause, DatalayerError):
                    cause.message += f"; no runtime named {given_name!r} is listed"
                raise cause
            _log.warning("dlexec: the request creating %s had an unclear outcome (%s); using the runtime %s it made",
                         given_name, _brief(cause), found.pod_name)
            return found
        if found is not None:
            try:
                self.delete_runtime(found.pod_name)
            except Exception as exc:  # noqa: BLE001 - reported, the interruption goes on
                _warn(f"dlexec could not delete the Datalayer runtime {found.pod_name} ({given_name!r}), whose "
                      f"creation was interrupted; it may be consuming credits: {_brief(exc)}. Delete it with: "
                      f"{terminate_command(found.pod_name)}")
        return None

    def list_runtimes(self) -> list[RuntimeInfo]:
        """The caller's live runtimes."""
        return [RuntimeInfo.from_json(r) for r in self._get(self._run("/runtimes")).get("runtimes") or []]

    def get_runtime(self, pod_name: str) -> RuntimeInfo:
        """One runtime; :class:`NotFoundError` if there is none of that name."""
        url = self._run(f"/runtimes/{quote(pod_name, safe='')}")
        return self._runtime_from(self._get(url), "GET", url)

    def delete_runtime(self, pod_name: str) -> bool:
        """Delete a runtime: True if deleted, False if it was already gone (404)."""
        try:
            self._delete(self._run(f"/runtimes/{quote(pod_name, safe='')}"))
        except NotFoundError:
            return False
        return True

    # -- snapshots -------------------------------------------------------------------------------

    def create_snapshot(self, pod_name: str, name: str | None = None, description: str | None = None,
                        stop: bool = True, *, poll_attempts: int = 10, poll_interval: float = 1.0) -> Snapshot:
        """Snapshot a runtime (``stop``: the server stops it afterwards) and return the new snapshot.

        Creation may be asynchronous: the snapshot is looked up in the list (by the uid the server
        answered, else by name) up to ``poll_attempts`` times, ``poll_interval`` seconds apart.
        """
        name = name or f"snapshot-{uuid.uuid4().hex[:12]}"
        body = {"pod_name": pod_name, "name": name, "description": description or name, "stop": bool(stop)}
        created = self._snapshots("POST", "", json=body).get("snapshot") or {}
        url = self._run(f"/{self._snapshot_path}")
        uid = created.get("uid")
        for attempt in range(max(1, poll_attempts)):
            matches = [s for s in self.list_snapshots() if (s.uid == uid if uid else s.name == name)]
            if matches:
                return matches[-1]
            if attempt + 1 < poll_attempts:
                time.sleep(poll_interval)
        raise DatalayerError(f"snapshot {name!r} of {pod_name} was accepted but is not listed after "
                             f"{poll_attempts} attempts", method="POST", url=url)

    def list_snapshots(self) -> list[Snapshot]:
        return [Snapshot.from_json(s) for s in self._snapshots("GET", "").get("snapshots") or []]

    def get_snapshot(self, uid: str) -> Snapshot:
        """One snapshot by uid; :class:`NotFoundError` if there is none."""
        data = self._snapshots("GET", f"/{quote(uid, safe='')}").get("snapshot")
        if not isinstance(data, dict):
            raise DatalayerError("the answer has no 'snapshot'", status=200, method="GET",
                                 url=self._run(f"/{self._snapshot_path}/{quote(uid, safe='')}"))
        return Snapshot.from_json(data)

    def delete_snapshot(self, uid_or_name: str) -> bool:
        """Delete a snapshot given its uid or name: True if deleted, False if it was already gone."""
        uid = self._find_snapshot(uid_or_name).uid
        try:
            self._snapshots("DELETE", f"/{quote(uid, safe='')}")
        except NotFoundError:
            return False
        return True

    def _snapshots(self, method: str, suffix: str, json: dict | None = None) -> dict:
        """A request to the snapshots collection (``suffix``: "" or "/uid"). On a 404, if the
        collection itself is missing under the current name, the other name is used from now on."""
        for attempt in range(2):
            url = self._run(f"/{self._snapshot_path}{suffix}")
            try:
                if method == "GET":
                    return self._get(url)
                if method == "DELETE":
                    return self._delete(url)
                return self._request(method, url, json=json)
            except NotFoundError:
                if attempt or not self._switch_snapshot_path(probe=bool(suffix) or method != "GET"):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _switch_snapshot_path(self, probe: bool) -> bool:
        """After a 404: whether the snapshots collection is missing under its current name (then
        switch to the other). ``probe``: the 404 may be the item's (a snapshot or pod unknown), so
        list the collection to tell."""
        if probe:
            try:
                self._get(self._run(f"/{self._snapshot_path}"))
                return False  # the collection is there: the 404 was real
            except NotFoundError:
                pass
        current = self._snapshot_path
        self._snapshot_path = next(p for p in SNAPSHOT_PATHS if p != current)
        return True

    def _find_snapshot(self, uid_or_name: str) -> Snapshot:
        """A snapshot by uid, else by name (the last listed of that name)."""
        snapshots = self.list_snapshots()
        matches = ([s for s in snapshots if s.uid == uid_or_name]
                   or [s for s in snapshots if s.name == uid_or_name])
        if matches:
            return matches[-1]
        valid = ", ".join(f"{s.name} ({s.uid})" for s in snapshots) or "none"
        raise UnknownNameError(f"unknown snapshot {uid_or_name!r}; available: {valid}")

    # -- transport -------------------------------------------------------------------------------

    def _run(self, path: str) -> str:
        return self.runtimes_url + RUNTIMES_API + path

    def _runtime_from(self, data: dict, method: str, url: str) -> RuntimeInfo:
        runtime = data.get("runtime") or data.get("kernel")  # older servers said "kernel"
        if not isinstance(runtime, dict) or not runtime.get("pod_name"):
            raise DatalayerError("the answer has no 'runtime' with a 'pod_name'", status=200, method=method, url=url)
        return RuntimeInfo.from_json(runtime)

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


def check_time_reservation(minutes: Any) -> float:
    """``minutes`` as a float if it is a positive, finite number, else a ``ValueError`` that says what to pass."""
    if isinstance(minutes, bool) or not isinstance(minutes, numbers.Real) or not (
            math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"time_reservation must be a positive number of minutes (the runtime's credits limit is "
                         f"its burning rate x 60 x time_reservation), not {minutes!r}: pass e.g. time_reservation=10")
    return float(minutes)


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


def _brief(exc: BaseException) -> str:
    if isinstance(exc, DatalayerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _warn(message: str) -> None:
    """Report a runtime that may be left running: log it and warn (a warning also reaches notebooks)."""
    _log.error(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


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


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


__all__ = [
    "AuthenticationError", "CapacityError", "DatalayerClient", "DatalayerError", "Environment", "NotFoundError",
    "DatalayerURLs", "RuntimeInfo", "Snapshot", "UnknownNameError", "keyring_token", "resolve_runtimes_url",
    "resolve_token", "terminate_command",
]
