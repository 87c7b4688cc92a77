"""``RuntimeSpec``: what a :class:`~dlexec.RuntimeService`'s arguments mean for its runtime.

The seed's arguments (``run_url``, ``token``, ``pod_name``, ``ingress``...) are checked and
resolved here, once, when the service is built: which backend, which URLs and API key
(Datalayer), which options the backend gets. :meth:`RuntimeSpec.new_runtime` then builds
the (not yet started) :class:`~dlexec.runtimes.base.Runtime`.
"""

from __future__ import annotations

import threading
from typing import Any

from .models import RuntimeModel
from .modules import check_ship_modules
from .runtimes import create_runtime, prepare
from .runtimes.base import Runtime
from .urls import DatalayerURLs


class _DefaultURL(str):
    """The default ``run_url``: the SDK's URL, told apart (by identity) from the same URL given
    explicitly, which selects the Datalayer backend."""


DEFAULT_RUN_URL = _DefaultURL("https://prod1.datalayer.run")


class RuntimeSpec:
    """A runtime's settings, checked: the model it starts from, the backend and its options."""

    def __init__(self, name: str, environment: str, time_reservation: float, run_url: str | None,
                 iam_url: str | None, token: str | None, pod_name: str | None, ingress: str | None,
                 reservation_id: str | None, uid: str | None, burning_rate: float | None, jupyter_token: str | None,
                 started_at: str | None, expired_at: str | None, *, backend: str | None, snapshot: str | None,
                 runtime_options: dict[str, Any]):
        _check_text("name", name)
        _check_text("environment", environment)
        run_url = DEFAULT_RUN_URL if run_url is None else run_url  # None: not given, as iam_url
        for option, value in (("run_url", run_url), ("iam_url", iam_url), ("token", token), ("pod_name", pod_name),
                              ("ingress", ingress), ("jupyter_token", jupyter_token),
                              ("runtimes_url", runtime_options.get("runtimes_url"))):
            _check_text(option, value, optional=True)
        # Only URLs given here override $DATALAYER_RUN_URL / $DATALAYER_IAM_URL (the reference
        # SDK ignored the variables whenever the defaults applied).
        self.urls_given = {"run_url": None if run_url is DEFAULT_RUN_URL else run_url, "iam_url": iam_url,
                           "runtimes_url": runtime_options.get("runtimes_url")}
        self.backend = prepare(backend, {
            **self.urls_given, "token": token, "environment": environment, "pod_name": pod_name,
            "ingress": ingress, "jupyter_token": jupyter_token})
        urls = DatalayerURLs.from_environment(**self.urls_given)
        self.model = RuntimeModel(
            name=name, environment=environment, time_reservation=time_reservation, run_url=urls.run_url,
            iam_url=urls.iam_url, backend=self.backend, pod_name=pod_name, ingress=ingress,
            reservation_id=reservation_id, uid=uid, burning_rate=burning_rate, jupyter_token=jupyter_token,
            started_at=started_at, expired_at=expired_at,
        )
        self.token = token
        self.snapshot = snapshot
        options = dict(runtime_options)
        # Which of the user's modules may travel to a remote runtime (dlexec.modules).
        self.ship_modules = check_ship_modules(options.pop("ship_modules", True))
        # A callable (name) -> Runtime that builds the runtime instead of the backend (tests' fakes).
        self.runtime_factory = options.pop("runtime_factory", None)
        if self.runtime_factory is not None and not callable(self.runtime_factory):
            raise TypeError("runtime_factory must be a callable (name) -> dlexec.runtimes.Runtime")
        self.options = options
        self.client = None  # the Datalayer REST client (datalayer backend)
        self._given_claimed = False  # a runtime handed in is deleted once (claim_given)
        self._given_lock = threading.Lock()
        if self.backend == "datalayer":
            self._check_datalayer()

    @property
    def urls(self) -> DatalayerURLs:
        """The Datalayer URLs (from the arguments, else ``$DATALAYER_*_URL``), in the SDK's shape."""
        if self.client is not None:
            return self.client.urls
        return DatalayerURLs.from_environment(**self.urls_given)

    def new_runtime(self, name: str) -> Runtime:
        """A new, not yet started runtime with these settings."""
        if self.runtime_factory is not None:
            return self.runtime_factory(name)
        return create_runtime(self.backend, name, **self.backend_options())

    def _check_datalayer(self) -> None:
        """Build (not start) the Datalayer runtime now, so that a bad setting fails here, not at
        the first call; keep its client (the token and URLs it resolved) for the runtime."""
        model = self.model
        probe = create_runtime(self.backend, model.name, **self.backend_options())
        if not (model.ingress and model.jupyter_token) and not probe.client.token:  # creating one needs a key
            raise ValueError("dlexec needs your Datalayer API key to create a runtime: pass token=, set "
                             "DATALAYER_API_KEY, or run `datalayer login` (with `pip install dlexec[keyring]`)")
        self.client = probe.client
        model.token = self.client.token
        if self.client.token_source == "DATALAYER_EXTERNAL_TOKEN":
            model.external_token = self.client.token
        model.run_url = model.url = self.client.run_url
        model.iam_url = self.client.iam_url

    def backend_options(self) -> dict:
        """The backend's settings: the extra options, plus what the seed's arguments mean there."""
        options = dict(self.options)
        model = self.model
        if self.backend == "jupyter":  # an existing Jupyter Server: ingress + its token
            if options.get("url") is None and model.ingress:
                options["url"] = model.ingress
            if options.get("token") is None and (model.jupyter_token or self.token):
                options["token"] = model.jupyter_token or self.token
        elif self.backend == "datalayer":
            options.update(
                environment=model.environment, time_reservation=model.time_reservation,
                run_url=self.urls_given.get("run_url"), iam_url=self.urls_given.get("iam_url"), token=self.token,
                snapshot=self.snapshot, pod_name=model.pod_name, ingress=model.ingress,
                jupyter_token=model.jupyter_token,
            )
            if self.client is not None:  # the one checked when built: same token and URLs
                options["client"] = self.client
        return options

    def handed_in(self) -> bool:
        """A Datalayer runtime handed in (``pod_name``, ``ingress``, ``jupyter_token``)."""
        model = self.model
        return bool(self.backend == "datalayer" and model.pod_name and model.ingress and model.jupyter_token)

    def claim_given(self) -> bool:
        """True once: the caller deletes the runtime handed in (see RuntimeService.terminate)."""
        with self._given_lock:
            claimed, self._given_claimed = not self._given_claimed, True
        return claimed

    def delete_given(self) -> bool:
        """Delete a runtime handed in that was never started (unless ``delete_given=False``)."""
        runtime = create_runtime(self.backend, self.model.name, **self.backend_options())
        if not runtime.delete_given:
            return False
        runtime.adopt()
        runtime.terminate()
        return bool(runtime.deleted)


def _check_text(option: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{option} must be a string{' or None' if optional else ''}, not {type(value).__name__}")
