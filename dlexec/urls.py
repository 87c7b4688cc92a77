"""The Datalayer service URLs, as the SDK resolves them: arguments, then ``$DATALAYER_*_URL``.

Standard library only: a :class:`dlexec.RuntimeService` reports these URLs whatever its
backend, and a local one must not import the REST client (``requests``) for that.
"""

from __future__ import annotations

import dataclasses
import os

DEFAULT_URL = "https://prod1.datalayer.run"


@dataclasses.dataclass(frozen=True)
class DatalayerURLs:
    """The Datalayer service URLs, with the SDK's 13 fields (``datalayer_core.utils.urls``)."""

    run_url: str
    iam_url: str
    runtimes_url: str
    spacer_url: str
    library_url: str
    manager_url: str
    ai_agents_url: str
    ai_inference_url: str
    growth_url: str
    success_url: str
    status_url: str
    support_url: str
    mcp_server_url: str

    @classmethod
    def from_environment(cls, run_url: str | None = None, iam_url: str | None = None,
                         runtimes_url: str | None = None, **others: str | None) -> DatalayerURLs:
        """Each URL: the argument, else its ``$DATALAYER_<NAME>`` variable, else (run and IAM
        aside) the IAM URL if one was set, else the default; as :class:`DatalayerClient` resolves
        them (the IAM URL defaults to the run URL; the runtimes URL to the run URL)."""
        iam_given = iam_url or os.environ.get("DATALAYER_IAM_URL")
        run = _url(run_url, "DATALAYER_RUN_URL") or DEFAULT_URL
        iam = (iam_given or run).rstrip("/")
        values = {"run_url": run, "iam_url": iam, "runtimes_url": resolve_runtimes_url(runtimes_url, run_url)}
        for field in dataclasses.fields(cls)[3:]:
            env = "DATALAYER_" + field.name[: -len("_url")].upper() + "_URL"
            values[field.name] = (_url(others.pop(field.name, None), env) or (iam if iam_given else None)
                                  or DEFAULT_URL)
        if others:
            raise TypeError(f"unknown Datalayer URL(s): {', '.join(others)}")
        return cls(**values)


def resolve_runtimes_url(runtimes_url: str | None = None, run_url: str | None = None) -> str:
    """The runtimes API's base URL: arguments first (``runtimes_url``, then ``run_url``), then
    ``$DATALAYER_RUNTIMES_URL``, ``$DATALAYER_RUN_URL``, the default."""
    return (runtimes_url or run_url or os.environ.get("DATALAYER_RUNTIMES_URL") or os.environ.get("DATALAYER_RUN_URL")
            or DEFAULT_URL).rstrip("/")


def _url(value: str | None, env: str) -> str | None:
    value = value or os.environ.get(env)
    return value.rstrip("/") if value else None
