"""Serialization shared by the client and the kernels: dill with out-of-band buffers.

An object becomes a list of *frames*: the pickle stream first, then one frame per
pickle-protocol-5 buffer (NumPy arrays, ``bytearray``, ``PickleBuffer``), so large data
travels as binary message buffers without copies, base64 or JSON.

Plain data (numbers, strings, containers, arrays, instances of importable classes) goes
through the standard library's C pickler, 10 to 100 times faster than dill; whatever only
dill can pickle by value (functions, lambdas, classes and instances from ``__main__``)
makes it start again with dill. The stream's first byte says which unpickler reads it.

:class:`Shared` objects (``DatalayerExecutor.share``) and cached callables travel once per
runtime as *blobs*; a pickle refers to one by key, and the kernel keeps them in ``BLOBS``.

Exceptions travel with their chained causes and their tracebacks, plus a text rendering
that the client falls back to when the exception class cannot be rebuilt. A traceback
travels as a description of each frame (file, function, first line, failing line and, on
Python >= 3.11, the failing expression's position); the client rebuilds real frames from
it whose code objects say the same, so that Python's carets and IPython's context point at
what failed (tblib's frames start at the failing line and mark a stub's columns).

This module's source is also shipped into every kernel, so it may import only the
standard library, dill and tblib.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import pickle
import sys
import traceback
import types
import uuid

import dill
from tblib import pickling_support

PROTOCOL = 5
_PLAIN, _DILL = b"P", b"D"  # the stream's first byte: which unpickler reads it

Frames = list  # [pickle stream, *out-of-band buffers]; bytes-like items

#: In a kernel: the blobs received, by key (the loaded object, or a BlobError).
BLOBS: dict = {}


class _NeedsDill(Exception):
    """The C pickler met something that only dill pickles right."""


def _is_ndarray(cls) -> bool:
    return cls.__name__ == "ndarray" and cls.__module__ == "numpy"


class Pickler(dill.Pickler):
    """dill, except that NumPy arrays use their own zero-copy protocol-5 reduction.

    dill registers an ndarray reducer that copies the data in-band; ``__reduce_ex__(5)``
    hands the array's memory to ``buffer_callback`` instead. If ``modules`` is a set, the
    modules of the functions and classes met are added to it (the client uses that to
    ship the user's own modules to runtimes that do not have them).
    """

    modules: set | None = None
    shared: list | None = None  # the Shared objects met, if a list

    def reducer_override(self, obj):
        cls = type(obj)
        reduced = _special_reduction(self, obj, cls)
        if reduced is not None:
            return reduced
        if self.modules is not None:
            if cls is types.FunctionType or isinstance(obj, type):
                self.modules.add(getattr(obj, "__module__", None))
            elif cls is types.ModuleType:  # a module used by a function sent by value
                self.modules.add(obj.__name__)
        return NotImplemented


def _special_reduction(pickler, obj, cls):
    """What both picklers do alike: NumPy arrays out of band, Shared objects by key."""
    if _is_ndarray(cls):
        return obj.__reduce_ex__(PROTOCOL)
    if cls is Shared:
        return _reduce_shared(pickler, obj)
    return None


#: What dill pickles by value, or differently from the standard pickler.
_DILL_ONLY = (types.FunctionType, types.CodeType, types.ModuleType, types.MethodType, types.CellType,
              types.FrameType, types.GeneratorType, types.TracebackType, BaseException)


class _PlainPickler(pickle.Pickler):
    """The C pickler, for data; raises _NeedsDill at anything dill would pickle otherwise.

    The C pickler handles ``None``, numbers, strings, bytes and the builtin containers
    itself and calls ``reducer_override`` for everything else only.
    """

    modules: set | None = None
    shared: list | None = None

    def reducer_override(self, obj):
        cls = type(obj)
        reduced = _special_reduction(self, obj, cls)
        if reduced is not None:
            return reduced
        if obj is _shared:  # what a Shared object unpickles with: by reference, as dill does
            return NotImplemented
        if isinstance(obj, _DILL_ONLY) or cls.__module__ == "__main__":
            raise _NeedsDill
        if isinstance(obj, type):
            if obj.__module__ == "__main__" or "<locals>" in obj.__qualname__:
                raise _NeedsDill
            if self.modules is not None:
                self.modules.add(obj.__module__)
        return NotImplemented


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


# The kernels load this module's source as "_dlexec_serialization"; functions they pickle by
# reference (``_restore_exception``) must resolve under that name here too.
sys.modules.setdefault("_dlexec_serialization", sys.modules[__name__])


def dumps(obj, pickler: type[Pickler] | None = None, modules: set | None = None,
          shared: list | None = None) -> Frames:
    """Serialize ``obj`` to frames: the pickle stream, then its out-of-band buffers.

    If ``modules`` is given, the names of the modules that functions and classes in
    ``obj`` come from are added to it; if ``shared`` is a list, the :class:`Shared`
    objects met are appended to it.
    """
    if pickler is None:
        if _is_simple(obj):  # numbers and strings: no pickler of our own to set up
            return [_PLAIN + pickle.dumps(obj, PROTOCOL)]
        try:
            return _dump(obj, _PlainPickler, _PLAIN, {}, modules, shared)
        except Exception:  # noqa: BLE001 - _NeedsDill, or something only dill can pickle
            pass
        pickler = Pickler
    return _dump(obj, pickler, _DILL, {"recurse": True}, modules, shared)


_SIMPLE = frozenset({int, float, str, bytes, bool, complex, type(None)})


def _is_simple(obj) -> bool:
    """A number or a string, or a tuple or list of them."""
    cls = type(obj)
    return cls in _SIMPLE or ((cls is tuple or cls is list) and _SIMPLE.issuperset(map(type, obj)))


def dumps_call(args: tuple, kwargs: dict, modules: set | None = None, shared: list | None = None) -> Frames:
    """:func:`dumps` of a call's ``(args, kwargs)``, with a shortcut for plain numbers and strings."""
    if _SIMPLE.issuperset(map(type, args)) and (not kwargs or _SIMPLE.issuperset(map(type, kwargs.values()))):
        return [_PLAIN + pickle.dumps((args, kwargs), PROTOCOL)]
    return dumps((args, kwargs), modules=modules, shared=shared)


def _dump(obj, pickler, header: bytes, options: dict, modules, shared) -> Frames:
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    stream.write(header)
    instance = pickler(stream, protocol=PROTOCOL, buffer_callback=buffers.append, **options)
    instance.modules = set() if modules is not None else None
    instance.shared = [] if shared is not None else None
    instance.dump(obj)
    if modules is not None:  # only once it worked: a failed plain attempt adds nothing
        modules |= instance.modules
    if shared is not None:
        shared.extend(instance.shared)
    # A small stream is copied out (faster than exporting a view); a large one is not.
    head = stream.getvalue() if stream.tell() < 65536 else stream.getbuffer()
    return [head, *(_raw(b) for b in buffers)]


def loads(frames: Frames):
    """Rebuild an object from the frames made by :func:`dumps`."""
    stream = memoryview(frames[0])
    if stream[:1] == _PLAIN:
        return pickle.loads(stream[1:], buffers=frames[1:])
    return dill.loads(stream[1:], buffers=frames[1:])


# --- many small frames travel as one buffer ----------------------------------------------------

PACK_LIMIT = 65536  # frames smaller than this are joined into one message buffer


def pack(frames: Frames) -> tuple[list | None, list]:
    """``(layout, buffers)``: the small frames joined into the first buffer, the large ones
    after it, untouched; ``layout`` is None when there was nothing worth joining.

    A batch of a hundred tasks is then a few message buffers rather than a hundred: each
    buffer costs ZeroMQ and jupyter-client a fixed amount of work on both sides.
    """
    sizes = [frame.nbytes if type(frame) is memoryview else len(frame) for frame in frames]
    small = [frame for frame, size in zip(frames, sizes) if size < PACK_LIMIT]
    if len(small) < 2:
        return None, list(frames)
    layout = [size if size < PACK_LIMIT else -1 for size in sizes]
    return layout, [b"".join(small), *(frame for frame, size in zip(frames, sizes) if size >= PACK_LIMIT)]


def unpack(layout: list, buffers: list) -> Frames:
    """The frames that :func:`pack` made ``buffers`` of (views, no copies)."""
    joined = memoryview(buffers[0]).cast("B")
    large = iter(buffers[1:])
    frames, position = [], 0
    for size in layout:
        if size < 0:
            frames.append(next(large))
        else:
            frames.append(joined[position : position + size])
            position += size
    return frames


# --- integrity: the binary buffers, as signed as the rest of the message -------------------


class DigestMismatchError(ValueError):
    """A message's binary buffers are not the ones that were sent: nothing of it was unpickled."""


def digests(buffers) -> list[str]:
    """The SHA-256 of each buffer (hex), to put in the message's content.

    jupyter-client signs (HMAC) a message's JSON parts but not its binary buffers; with
    their digests in the signed content, altered buffers are caught before unpickling.
    SHA-256: the fastest cryptographic hash in the standard library where the CPU has SHA
    instructions (1.7 GB/s on the 2-core test machine; BLAKE2b 0.9, SHA-512 0.8, MD5 0.7);
    a checksum (CRC32) would be no faster there and can be forged. Hash what ``pack``
    returns: a handful of buffers per message, not every small frame.
    """
    return [hashlib.sha256(buffer).hexdigest() for buffer in buffers]


def check_digests(content: dict, buffers, required: bool = False, what: str = "message") -> None:
    """Raise :class:`DigestMismatchError` unless ``buffers`` match ``content["digests"]``.

    Without digests in ``content`` there is nothing to check, unless ``required`` (the
    sender was asked for them) and there are buffers.
    """
    expected = content.get("digests")
    if expected is None:
        if required and buffers:
            raise DigestMismatchError(
                f"dlexec: a {what} arrived with {len(buffers)} binary buffers but no digests for them, "
                "so it was not unpickled; the runtime's dlexec worker is not the one this client installed"
            )
        return
    advice = ("so nothing of it was unpickled. Something between this client and the kernel changes data: "
              "use https, check the proxies on the way, and report it if it persists")
    if len(expected) != len(buffers):
        raise DigestMismatchError(
            f"dlexec: a {what} arrived with {len(buffers)} buffers where {len(expected)} were sent (buffers were "
            f"altered in transit), {advice}"
        )
    for index, (digest, buffer) in enumerate(zip(expected, buffers)):
        if hashlib.sha256(buffer).hexdigest() != digest:
            raise DigestMismatchError(
                f"dlexec: buffer {index + 1} of {len(buffers)} of a {what} was altered in transit (its SHA-256 "
                f"does not match the digest in the signed message), {advice}"
            )


# --- blobs: what travels once per runtime ----------------------------------------------------


class Blob:
    """Serialized once, sent once per runtime: a callable or a :class:`Shared` object."""

    __slots__ = ("key", "frames", "nbytes", "modules", "uses_user_modules", "__weakref__")

    def __init__(self, key: str, frames: Frames, modules: set):
        self.key, self.frames, self.modules = key, frames, modules
        self.nbytes = sum(memoryview(f).nbytes for f in frames)
        self.uses_user_modules: bool | None = None  # the client works it out, on first use

    @classmethod
    def of(cls, obj, key: str | None = None) -> Blob:
        """``obj`` serialized; ``key`` defaults to a hash of the serialized bytes."""
        modules: set = set()
        frames = dumps(obj, modules=modules)
        if key is None:
            digest = hashlib.blake2b(digest_size=16)
            for frame in frames:
                digest.update(frame)
            key = digest.hexdigest()
        return cls(key, frames, modules)


class Shared:
    """An object sent to each runtime once, however many tasks use it (``executor.share``).

    Pass it to tasks in place of the object: in the runtime, the task receives the object
    itself (one copy per runtime, shared by the tasks that run there: do not modify it).
    """

    __slots__ = ("blob", "type_name")

    def __init__(self, obj):
        self.type_name = type(obj).__name__
        self.blob = Blob.of(obj, key=f"shared-{uuid.uuid4().hex}")

    @classmethod
    def of_blob(cls, blob: Blob, type_name: str) -> Shared:
        """A handle on something already serialized (a cached callable)."""
        shared = cls.__new__(cls)
        shared.blob, shared.type_name = blob, type_name
        return shared

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes

    def __reduce__(self):
        raise TypeError("a dlexec Shared object can only be passed to tasks of a DatalayerExecutor")

    def __repr__(self) -> str:
        return f"<dlexec.Shared {self.type_name}, {self.blob.nbytes} bytes serialized>"


def _reduce_shared(pickler, obj: Shared):
    if pickler.shared is None:
        raise TypeError("a dlexec Shared object can only be passed to tasks of a DatalayerExecutor")
    pickler.shared.append(obj.blob)
    return _shared, (obj.blob.key,)


class BlobError:
    """A blob that could not be loaded in the kernel: its tasks fail with ``error``."""

    def __init__(self, error: BaseException):
        self.error = error


def load_blob(key: str, frames: Frames) -> None:
    """In a kernel: load a blob into ``BLOBS`` (or the reason it cannot be)."""
    try:
        BLOBS[key] = loads(frames)
    except Exception as exc:  # noqa: BLE001 - the tasks that use it report it
        BLOBS[key] = BlobError(exc)


def blob(key: str):
    """In a kernel: a loaded blob; raises why it could not be loaded."""
    try:
        value = BLOBS[key]
    except KeyError:
        raise LookupError(f"dlexec: object {key} was not sent to this runtime") from None
    if type(value) is BlobError:
        raise value.error
    return value


def _shared(key: str):
    return blob(key)


# Pickled by reference as "_dlexec_serialization._shared", the kernels' name for this module.
_shared.__module__ = "_dlexec_serialization"


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
        "traceback": traceback_entries(exc.__traceback__) if exc.__traceback__ else None,
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
        except Exception:  # noqa: BLE001 - a frame that cannot be rebuilt is left out, not the error
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
    if firstlineno > lineno:
        firstlineno = lineno
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
