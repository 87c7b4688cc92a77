"""Serialization shared by the client and the kernels: dill with out-of-band buffers.

* :mod:`.pickling`: objects to *frames* (the pickle stream, then its protocol-5 buffers)
  and back; the C pickler for plain data, dill for what only dill pickles by value.
* :mod:`.framing`: frames to message buffers (many small frames joined into one) and the
  buffers' digests, checked before anything is unpickled.
* :mod:`.blobs`: what travels once per runtime (:class:`Shared` objects, cached callables)
  and the per-worker :class:`BlobStore` that keeps them in a kernel.
* :mod:`.exceptions`: exceptions with their causes and tracebacks, the remote frames
  rebuilt on the client with their own lines and positions.

A kernel imports this package (it is part of dlexec's kernel side, :mod:`dlexec.kernel`),
so it imports only the standard library, dill and tblib.
"""

from __future__ import annotations

from .blobs import DEFAULT_STORE, Blob, BlobError, BlobStore, Shared
from .exceptions import add_note, dump_exception, exception_info, restore_traceback, traceback_entries
from .framing import PACK_LIMIT, DigestMismatchError, check_digests, digests, pack, unpack
from .pickling import _PLAIN, PROTOCOL, Frames, Pickler, dumps, dumps_call, loads

#: The blob store outside a worker (a kernel's worker has its own): ``load_blob`` and
#: ``BLOBS`` read and fill it, as a worker does with its store.
BLOBS = DEFAULT_STORE
load_blob = DEFAULT_STORE.load

__all__ = [
    "BLOBS",
    "PACK_LIMIT",
    "PROTOCOL",
    "_PLAIN",
    "Blob",
    "BlobError",
    "BlobStore",
    "DigestMismatchError",
    "Frames",
    "Pickler",
    "Shared",
    "add_note",
    "check_digests",
    "digests",
    "dump_exception",
    "dumps",
    "dumps_call",
    "exception_info",
    "load_blob",
    "loads",
    "pack",
    "restore_traceback",
    "traceback_entries",
    "unpack",
]
