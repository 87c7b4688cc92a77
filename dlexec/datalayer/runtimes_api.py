"""Runtimes of the Datalayer API: create (never sent twice, reconciled by name), list, get, delete."""

from __future__ import annotations

import logging
import math
import numbers
import secrets
import shlex
import time
import warnings
from typing import Any
from urllib.parse import quote

import requests

from ..errors import CapacityError, DatalayerError, NotFoundError
from .models import RuntimeInfo
from .transport import Transport, _no_capacity, _not_sent

#: Seconds between the listings that look for the runtime of a create whose outcome is unclear.
RECONCILE_DELAYS = (1.0, 2.0)

_log = logging.getLogger("dlexec")


def terminate_command(pod_name: str) -> str:
    """The shell command that deletes a runtime, for messages about runtimes left running."""
    return f"dlexec runtimes terminate {shlex.quote(pod_name)}"


class RuntimesAPI(Transport):
    """The runtimes part of :class:`~dlexec.datalayer.DatalayerClient` (which also gives it
    ``get_environment`` and ``_find_snapshot``)."""

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

    def _runtime_from(self, data: dict, method: str, url: str) -> RuntimeInfo:
        runtime = data.get("runtime") or data.get("kernel")  # older servers said "kernel"
        if not isinstance(runtime, dict) or not runtime.get("pod_name"):
            raise DatalayerError("the answer has no 'runtime' with a 'pod_name'", status=200, method=method, url=url)
        return RuntimeInfo.from_json(runtime)


def check_time_reservation(minutes: Any) -> float:
    """``minutes`` as a float if it is a positive, finite number, else a ``ValueError`` that says what to pass."""
    if isinstance(minutes, bool) or not isinstance(minutes, numbers.Real) or not (
            math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"time_reservation must be a positive number of minutes (the runtime's credits limit is "
                         f"its burning rate x 60 x time_reservation), not {minutes!r}: pass e.g. time_reservation=10")
    return float(minutes)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, DatalayerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _warn(message: str) -> None:
    """Report a runtime that may be left running: log it and warn (a warning also reaches notebooks)."""
    _log.error(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)

