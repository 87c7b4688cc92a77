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

from ..errors import AuthenticationError, CapacityError, DatalayerError, NotFoundError, UnknownNameError
from ..urls import DatalayerURLs, resolve_runtimes_url
from .client import DatalayerClient
from .credentials import TOKEN_ENV_VARS, keyring_token, resolve_token
from .models import Environment, RuntimeInfo, Snapshot
from .runtimes_api import RECONCILE_DELAYS, check_time_reservation, terminate_command
from .snapshots_api import SNAPSHOT_PATHS
from .transport import IAM_API, RUNTIMES_API

# The package's modules, one concern each: ``client`` (DatalayerClient: URLs, account, environments),
# ``runtimes_api`` and ``snapshots_api`` (the two collections), ``transport`` (one request: token,
# retries, errors), ``credentials`` (where the token comes from), ``models`` (the SDK's records).

__all__ = [
    "IAM_API",
    "RECONCILE_DELAYS",
    "RUNTIMES_API",
    "SNAPSHOT_PATHS",
    "TOKEN_ENV_VARS",
    "AuthenticationError",
    "CapacityError",
    "DatalayerClient",
    "DatalayerError",
    "DatalayerURLs",
    "Environment",
    "NotFoundError",
    "RuntimeInfo",
    "Snapshot",
    "UnknownNameError",
    "check_time_reservation",
    "keyring_token",
    "resolve_runtimes_url",
    "resolve_token",
    "terminate_command",
]
