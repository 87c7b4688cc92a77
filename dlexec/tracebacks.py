"""Rebuilding remote exceptions on the client.

The kernel side (:func:`dlexec.serialization.exceptions.dump_exception`) sends an exception with its
chained causes and tracebacks (each frame's file, names, lines and positions), plus a text
rendering. Here the exception is
rebuilt with its own type, args, causes and remote frames, so that an uncaught error
prints the remote function's lines. When it cannot be rebuilt (its class does not exist
here, or it could not be pickled remotely), a :class:`~dlexec.errors.RemoteError` carries
the remote type name, message and traceback text instead, with the remote frames as its
traceback.
"""

from __future__ import annotations

from . import serialization
from .errors import RemoteError


def rebuild_exception(info: dict, frames: list) -> BaseException:
    """The remote exception described by ``info`` (and pickled in ``frames``, if any)."""
    reason = info.get("pickle_error", "")
    cause = None
    if frames:
        try:
            exc = serialization.loads(frames)
        except BaseException as error:  # noqa: BLE001 - any failure (SystemExit too): fall back to the text
            reason = f"it could not be rebuilt here: {type(error).__name__}: {error}"
            cause = error
        else:
            if isinstance(exc, BaseException):
                return exc
            reason = f"it arrived as a {type(exc).__name__}"
    elif reason:
        reason = f"it could not be serialized remotely: {reason}"
    error = RemoteError(info.get("type", "Exception"), info.get("message", ""), info.get("text", ""), reason)
    error.__cause__ = cause  # why it could not be rebuilt, when it arrived but failed to load
    if info.get("traceback"):
        try:
            error = error.with_traceback(serialization.restore_traceback(info["traceback"]))
        except Exception:  # noqa: BLE001, S110 - the text is still there
            pass
    return error
