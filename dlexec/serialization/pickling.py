"""Objects to frames and back: dill, with the C pickler for plain data and protocol-5 buffers.

An object becomes a list of *frames*: the pickle stream first, then one frame per
pickle-protocol-5 buffer (NumPy arrays, ``bytearray``, ``PickleBuffer``), so large data
travels as binary message buffers without copies, base64 or JSON.

Plain data (numbers, strings, containers, arrays, instances of importable classes) goes
through the standard library's C pickler, 10 to 100 times faster than dill; whatever only
dill can pickle by value (functions, lambdas, classes and instances from ``__main__``)
makes it start again with dill. The stream's first byte says which unpickler reads it.
"""

from __future__ import annotations

import io
import pickle
import types

import dill

from .blobs import Shared, reduce_shared, shared_value

PROTOCOL = 5
_PLAIN, _DILL = b"P", b"D"  # the stream's first byte: which unpickler reads it

Frames = list  # [pickle stream, *out-of-band buffers]; bytes-like items


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
        return reduce_shared(pickler, obj)
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
        if obj is shared_value:  # what a Shared object unpickles with: by reference, as dill does
            return NotImplemented
        if isinstance(obj, _DILL_ONLY) or cls.__module__ == "__main__":
            raise _NeedsDill
        if isinstance(obj, type):
            if obj.__module__ == "__main__" or "<locals>" in obj.__qualname__:
                raise _NeedsDill
            if self.modules is not None:
                self.modules.add(obj.__module__)
        return NotImplemented


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
        except Exception:  # noqa: BLE001, S110 - _NeedsDill, or something only dill can pickle
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


def _raw(buffer: pickle.PickleBuffer):
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: copy it once
        return bytes(buffer)
