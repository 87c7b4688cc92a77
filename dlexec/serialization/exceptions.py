"""Exceptions to frames and back, with their chained causes and tracebacks.

An exception travels with its chained causes and its tracebacks, plus a text rendering
that the client falls back to when the exception class cannot be rebuilt. A traceback
travels as a description of each frame (file, function, first line, failing line and, on
Python >= 3.11, the failing expression's position); the client rebuilds real frames from
it whose code objects say the same, so that Python's carets and IPython's context point at
what failed (tblib's frames start at the failing line and mark a stub's columns).
"""

from __future__ import annotations

import itertools
import sys
import traceback
import types

from tblib import pickling_support

from .pickling import PROTOCOL, Pickler, dumps, loads


class _ExceptionPickler(Pickler):
    """Pickles exceptions with their chain and tracebacks, without touching copyreg."""

    def reducer_override(self, obj):
        if isinstance(obj, types.TracebackType):
            return restore_traceback, (traceback_entries(obj),)
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


def exception_info(exc: BaseException) -> dict:
    """What the client needs to show ``exc`` even if it cannot unpickle it: JSON-safe."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": _safe_str(exc),
        "text": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
        "traceback": traceback_entries(exc.__traceback__) if exc.__traceback__ else None,
    }


def dump_exception(exc: BaseException) -> tuple[dict, list]:
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


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11), or its equivalent on 3.10."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10: kept, though tracebacks do not show notes there
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]


def _safe_str(obj) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(obj).__name__}>"


# --- tracebacks: the remote frames, rebuilt with their own lines and positions ------------------
#
# A frame object can only be made by running code, so each remote frame becomes a call of a
# stub function whose code object is given the remote frame's file name, names, first line,
# argument names and a location table that maps each of its instructions to the failing
# line and columns. Python's traceback printers (the C one and the traceback module) read
# the line and the carets' columns from that table; IPython (stack_data, inspect) reads the
# function's first line from co_firstlineno to number the context and place its arrow.

_POSITIONS = sys.version_info >= (3, 11)  # co_positions, co_qualname, the 3.11 location table
_VARFLAGS = 0x04 | 0x08  # CO_VARARGS | CO_VARKEYWORDS


def traceback_entries(tb) -> list:
    """Each frame of a traceback as JSON-safe values: ``[filename, name, qualname,
    firstlineno, lineno, end_lineno, colno, end_colno, module, module_file, args]`` where
    ``args`` is ``[argcount, posonlyargcount, kwonlyargcount, varargs flags, names]``.
    Positions (Python >= 3.11) are those of the instruction that was running, as the
    traceback module shows them; None where unknown."""
    entries = []
    while tb is not None:
        code, lineno = tb.tb_frame.f_code, tb.tb_lineno
        end_lineno = colno = end_colno = None
        if _POSITIONS and tb.tb_lasti >= 0:
            try:
                start, end_lineno, colno, end_colno = next(itertools.islice(code.co_positions(), tb.tb_lasti // 2,
                                                                            None))
            except Exception:  # noqa: BLE001 - no positions then
                start = None
            if start != lineno:
                end_lineno = colno = end_colno = None
        nargs = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
        module_globals = tb.tb_frame.f_globals
        entries.append([
            code.co_filename, code.co_name, getattr(code, "co_qualname", code.co_name), code.co_firstlineno,
            lineno, end_lineno, colno, end_colno,
            _str_or_none(module_globals.get("__name__")), _str_or_none(module_globals.get("__file__")),
            [code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags & _VARFLAGS,
             list(code.co_varnames[:nargs])],
        ])
        tb = tb.tb_next
    return entries


def _str_or_none(value):
    return value if type(value) is str else None


class _TracebackMaker(Exception):
    """Raised by the stub that a rebuilt frame runs."""


class _RemoteValue:
    """What a rebuilt frame holds for each argument: the values stayed in the runtime."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<remote>"


_REMOTE_VALUE = _RemoteValue()


def _stub():
    raise _TracebackMaker


def restore_traceback(entries):
    """A real traceback whose frames say what the remote ones said (see traceback_entries)."""
    top = previous = None
    for entry in entries or ():
        try:
            tb = _rebuild_frame(entry)
        except Exception:  # noqa: BLE001, S112 - a frame that cannot be rebuilt is left out, not the error
            continue
        if previous is None:
            top = tb
        else:
            previous.tb_next = tb
        previous = tb
    return top


def _rebuild_frame(entry):
    filename, name, qualname, firstlineno, lineno, end_lineno, colno, end_colno, module, module_file, args = entry
    argcount, posonly, kwonly, varflags, names = args
    code = _frame_code(filename, name, qualname, firstlineno, lineno, end_lineno, colno, end_colno)
    code = code.replace(co_argcount=argcount, co_posonlyargcount=posonly, co_kwonlyargcount=kwonly,
                        co_varnames=tuple(names), co_nlocals=len(names),
                        co_flags=(code.co_flags & ~_VARFLAGS) | varflags)
    module_globals = {"__name__": module, "_TracebackMaker": _TracebackMaker}
    if module_file is not None:
        module_globals["__file__"] = module_file
    function = types.FunctionType(code, module_globals)
    keywords = {kw: _REMOTE_VALUE for kw in names[argcount : argcount + kwonly]}
    try:
        function(*[_REMOTE_VALUE] * argcount, **keywords)
    except _TracebackMaker as exc:
        return exc.__traceback__.tb_next  # the stub's frame, alone
    raise RuntimeError("the traceback stub did not raise")  # pragma: no cover


def _frame_code(filename, name, qualname, firstlineno, lineno, end_lineno, colno, end_colno):
    """The stub's code, as if it were the remote function failing at ``lineno``."""
    if lineno is None:
        lineno = firstlineno
    if _POSITIONS:
        code = _stub.__code__
        return code.replace(co_filename=filename, co_name=name, co_qualname=qualname, co_firstlineno=firstlineno,
                            co_linetable=_location_table(len(code.co_code) // 2, firstlineno, lineno, end_lineno,
                                                         colno, end_colno))
    # Python 3.10: line numbers are deltas from co_firstlineno; compile the raise that many
    # lines below the def (no columns there).
    firstlineno = min(firstlineno, lineno)
    body = "\n" * (lineno - firstlineno) if lineno > firstlineno else ""
    source = f"def _stub():{body} raise _TracebackMaker" if body else "def _stub(): raise _TracebackMaker"
    module_code = compile(source, filename, "exec")
    code = next(const for const in module_code.co_consts if isinstance(const, types.CodeType))
    return code.replace(co_name=name, co_firstlineno=firstlineno)


def _location_table(units: int, firstlineno: int, lineno: int, end_lineno, colno, end_colno) -> bytes:
    """A code object's location table (Python >= 3.11, Objects/locations.md) that maps each
    of its ``units`` code units to one position: the long form with columns, else the form
    without them (no carets rather than wrong ones)."""
    table = bytearray()
    delta = lineno - firstlineno  # the first entry's line is relative to co_firstlineno, the others to it
    columns = None not in (end_lineno, colno, end_colno) and end_lineno >= lineno
    while units > 0:
        length = min(units, 8)
        units -= length
        if columns:
            table.append(0x80 | (14 << 3) | (length - 1))
            _write_varint(table, (delta << 1) if delta >= 0 else ((-delta) << 1) | 1)
            _write_varint(table, end_lineno - lineno)
            _write_varint(table, colno + 1)
            _write_varint(table, end_colno + 1)
        else:
            table.append(0x80 | (13 << 3) | (length - 1))
            _write_varint(table, (delta << 1) if delta >= 0 else ((-delta) << 1) | 1)
        delta = 0
    return bytes(table)


def _write_varint(table: bytearray, value: int) -> None:
    while value >= 64:
        table.append(64 | (value & 63))
        value >>= 6
    table.append(value)
