"""Blobs: what travels once per runtime (a cached callable, a :class:`Shared` object).

A pickle refers to a blob by key. A kernel's worker keeps the blobs it received in its own
:class:`BlobStore`, and makes it the *active* store while it unpickles, so that a Shared
object's reference (:func:`shared_value`) resolves in the store of the worker that reads
it: several workers may live in one process (an in-process fake runtime).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import uuid
from collections.abc import Iterator


class Blob:
    """Serialized once, sent once per runtime: a callable or a :class:`Shared` object."""

    __slots__ = ("__weakref__", "frames", "key", "modules", "nbytes", "uses_user_modules")

    def __init__(self, key: str, frames: list, modules: set):
        self.key, self.frames, self.modules = key, frames, modules
        self.nbytes = sum(memoryview(f).nbytes for f in frames)
        self.uses_user_modules: bool | None = None  # the client works it out, on first use

    @classmethod
    def of(cls, obj, key: str | None = None) -> Blob:
        """``obj`` serialized; ``key`` defaults to a hash of the serialized bytes."""
        from .pickling import dumps  # here: pickling imports this module

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


def reduce_shared(pickler, obj: Shared):
    """The picklers' reduction of a Shared object: its key (the pickler collects its blob)."""
    if pickler.shared is None:
        raise TypeError("a dlexec Shared object can only be passed to tasks of a DatalayerExecutor")
    pickler.shared.append(obj.blob)
    return shared_value, (obj.blob.key,)


class BlobError:
    """A blob that could not be loaded in the kernel: its tasks fail with ``error``."""

    def __init__(self, error: BaseException):
        self.error = error


class BlobStore:
    """The blobs a worker received, by key: the loaded object, or why it could not be loaded."""

    def __init__(self):
        self._items: dict = {}

    def load(self, key: str, frames: list) -> None:
        """Unpickle a blob and keep it (or the reason it cannot be loaded)."""
        from .pickling import loads  # here: pickling imports this module

        try:
            with self.active():
                self._items[key] = loads(frames)
        except Exception as exc:  # noqa: BLE001 - the tasks that use it report it
            self._items[key] = BlobError(exc)

    def get(self, key: str):
        """A loaded blob; raises why it could not be loaded."""
        try:
            value = self._items[key]
        except KeyError:
            raise LookupError(f"dlexec: object {key} was not sent to this runtime") from None
        if type(value) is BlobError:
            raise value.error
        return value

    def pop(self, key: str, default=None):
        return self._items.pop(key, default)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @contextlib.contextmanager
    def active(self) -> Iterator[BlobStore]:
        """Shared objects unpickled in this block (in this thread) resolve here."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


#: The store used outside a worker's ``active()`` block (the client's tests).
DEFAULT_STORE = BlobStore()
_active: contextvars.ContextVar[BlobStore] = contextvars.ContextVar("dlexec_blobs", default=DEFAULT_STORE)


def shared_value(key: str):
    """What a Shared object unpickles as: the object, from the active store (pickled by reference)."""
    return _active.get().get(key)
