"""Callables serialized once, not at every ``submit``.

Serializing a function defined in ``__main__`` or a notebook means pickling its code and
the globals it uses, by value: about 0.3 ms with dill, more than the rest of a task's
round trip. :class:`CallableCache` keeps the serialized function (a
:class:`~dlexec.serialization.Blob`, sent once per runtime by its content hash) and
serializes again only if what the pickle is made of changed: the function object, its
code, defaults and closure, or the object any global name it uses (and the functions it
calls) refers to. A function redefined, or a global reassigned, is therefore sent anew.
An object modified in place (``config["x"] = 2``) is not seen, as by a
``ProcessPoolExecutor`` worker that has already imported it: pass such state as an
argument. Other callables (bound methods, ``functools.partial``, objects) are serialized
at every call.
"""

from __future__ import annotations

import threading
import types
from collections import OrderedDict
from functools import lru_cache

from .serialization import Blob

_MISSING = object()
_CACHE_SIZE = 128


class CallableCache:
    """Plain functions -> their serialized form, while it is still what dill would make."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict[int, tuple] = OrderedDict()  # id(fn) -> (fn, dependencies, blob)
        self._lock = threading.Lock()

    def blob(self, fn) -> Blob:
        if type(fn) is not types.FunctionType:
            return Blob.of(fn)
        dependencies = _dependencies(fn)
        with self._lock:
            entry = self._entries.get(id(fn))
            if entry is not None and entry[0] is fn and _same(entry[1], dependencies):
                self._entries.move_to_end(id(fn))
                return entry[2]
        blob = Blob.of(fn)
        with self._lock:  # the entry holds fn and its dependencies: their ids cannot be reused
            self._entries[id(fn)] = (fn, dependencies, blob)
            self._entries.move_to_end(id(fn))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return blob


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _dependencies(fn: types.FunctionType, seen: set | None = None) -> tuple:
    """The objects ``fn``'s pickle is made of: compared by identity to detect a change."""
    seen = set() if seen is None else seen
    seen.add(id(fn))
    parts = [fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__]
    for cell in fn.__closure__ or ():
        try:
            parts.append(cell.cell_contents)
        except ValueError:  # an empty cell
            parts.append(_MISSING)
    namespace = fn.__globals__
    for name in _global_names(fn.__code__):
        value = namespace.get(name, _MISSING)
        parts.append(value)
        # A helper defined next to fn is pickled with it: its own dependencies count too.
        if type(value) is types.FunctionType and value.__globals__ is namespace and id(value) not in seen:
            parts.extend(_dependencies(value, seen))
    return tuple(parts)


@lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the code nested in it) may look up as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))
