"""Serialization shared by the client and the kernels: dill with out-of-band buffers.

An object becomes a list of *frames*: the pickle stream first, then one frame per
pickle-protocol-5 buffer (NumPy arrays, ``bytearray``, ``PickleBuffer``), so large data
travels as binary message buffers without copies, base64 or JSON.

Exceptions travel with their chained causes and their tracebacks (tblib), plus a text
rendering that the client falls back to when the exception class cannot be rebuilt.

This module's source is also shipped into every kernel, so it may import only the
standard library, dill and tblib.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import types

import dill
from tblib import Traceback, pickling_support

PROTOCOL = 5

Frames = list  # [pickle stream, *out-of-band buffers]; bytes-like items


class Pickler(dill.Pickler):
    """dill, except that NumPy arrays use their own zero-copy protocol-5 reduction.

    dill registers an ndarray reducer that copies the data in-band; ``__reduce_ex__(5)``
    hands the array's memory to ``buffer_callback`` instead. If ``modules`` is a set, the
    modules of the functions and classes met are added to it (the client uses that to
    ship the user's own modules to runtimes that do not have them).
    """

    modules: set | None = None

    def reducer_override(self, obj):
        cls = type(obj)
        if cls.__name__ == "ndarray" and cls.__module__ == "numpy":
            return obj.__reduce_ex__(PROTOCOL)
        if self.modules is not None and (cls is types.FunctionType or isinstance(obj, type)):
            self.modules.add(getattr(obj, "__module__", None))
        return NotImplemented


class _ExceptionPickler(Pickler):
    """Pickles exceptions with their chain and tracebacks, without touching copyreg."""

    def reducer_override(self, obj):
        if isinstance(obj, types.TracebackType):
            return pickling_support.pickle_traceback(obj)
        if isinstance(obj, BaseException):
            return _reduce_exception(obj)
        return super().reducer_override(obj)


def _reduce_exception(exc: BaseException):
    """The exception's own reduction (keeps ``SystemExit.code``, ``SyntaxError.lineno``...)
    plus its chain and traceback; tblib's when the own one cannot rebuild it."""
    try:
        reduced = exc.__reduce_ex__(PROTOCOL)
        cls, args, *rest = reduced
        state = rest[0] if rest else None
        if len(rest) > 1 or not callable(cls) or not isinstance(args, tuple):
            raise TypeError("an unusual reduction")
        cls(*args)  # would it rebuild? (custom __init__ signatures often do not)
    except Exception:  # noqa: BLE001 - tblib handles the awkward ones
        return pickling_support.pickle_exception(exc)
    return _restore_exception, (
        cls,
        args,
        state,
        exc.__cause__,
        exc.__traceback__,
        exc.__context__,
        exc.__suppress_context__,
        getattr(exc, "__notes__", None),
    )


def _restore_exception(cls, args, state, cause, tb, context, suppress_context, notes):
    exc = cls(*args)
    if state:
        exc.__setstate__(state)
    exc.__cause__, exc.__context__, exc.__suppress_context__ = cause, context, suppress_context
    exc.__traceback__ = tb
    if notes is not None:
        exc.__notes__ = notes
    return exc


# The kernels load this module's source as "_dlexec_serialization"; functions they pickle by
# reference (``_restore_exception``) must resolve under that name here too.
sys.modules.setdefault("_dlexec_serialization", sys.modules[__name__])


def dumps(obj, pickler: type[Pickler] = Pickler, modules: set | None = None) -> Frames:
    """Serialize ``obj`` to frames: the pickle stream, then its out-of-band buffers.

    If ``modules`` is given, the names of the modules that functions and classes in
    ``obj`` come from are added to it.
    """
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    instance = pickler(stream, protocol=PROTOCOL, buffer_callback=buffers.append, recurse=True)
    instance.modules = modules
    instance.dump(obj)
    return [stream.getbuffer(), *(_raw(b) for b in buffers)]


def loads(frames: Frames):
    """Rebuild an object from the frames made by :func:`dumps`."""
    return dill.loads(frames[0], buffers=frames[1:])


def _raw(buffer: pickle.PickleBuffer):
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: copy it once
        return bytes(buffer)


# --- exceptions ---------------------------------------------------------------------


def exception_info(exc: BaseException) -> dict:
    """What the client needs to show ``exc`` even if it cannot unpickle it: JSON-safe."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": _safe_str(exc),
        "text": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
        "traceback": Traceback(exc.__traceback__).as_dict() if exc.__traceback__ else None,
    }


def dump_exception(exc: BaseException) -> tuple[dict, Frames]:
    """Serialize an exception with its causes and tracebacks.

    Returns ``(info, frames)``; ``frames`` is empty when the exception cannot be pickled,
    and ``info["pickle_error"]`` says why.
    """
    info = exception_info(exc)
    try:
        frames = dumps(exc, pickler=_ExceptionPickler)
        # Prove it loads here too: an exception that pickles but cannot be rebuilt (a custom
        # __init__ with required arguments, say) would otherwise only fail on the client.
        loads(frames)
    except Exception as error:  # noqa: BLE001 - any failure means: send the text instead
        info["pickle_error"] = f"{type(error).__name__}: {_safe_str(error)}"
        return info, []
    return info, frames


def _safe_str(obj) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(obj).__name__}>"
