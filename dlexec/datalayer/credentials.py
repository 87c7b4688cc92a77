"""Where the Datalayer token comes from: the argument, the environment, or ``datalayer login``'s keyring entry."""

from __future__ import annotations

import os

from ..secrets import check_token

TOKEN_ENV_VARS = ("DATALAYER_API_KEY", "DATALAYER_EXTERNAL_TOKEN")


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

