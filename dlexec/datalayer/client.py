"""DatalayerClient: the Datalayer REST API (see :mod:`dlexec.datalayer`), built from its parts."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from ..errors import UnknownNameError
from ..secrets import SecretSession, check_transport
from ..urls import DEFAULT_URL, DatalayerURLs, resolve_runtimes_url
from .credentials import resolve_token
from .models import Environment
from .runtimes_api import RuntimesAPI
from .snapshots_api import SNAPSHOT_PATHS, SnapshotsAPI
from .transport import IAM_API

if TYPE_CHECKING:
    from typing_extensions import Self


class DatalayerClient(RuntimesAPI, SnapshotsAPI):
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
        from .. import __version__

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

    def __enter__(self) -> Self:
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
