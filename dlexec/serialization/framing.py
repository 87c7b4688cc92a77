"""Frames to message buffers and back, with the buffers' digests.

Many small frames travel as one buffer (:func:`pack`, :func:`unpack`); the buffers' SHA-256
digests travel in the signed content and are checked before anything is unpickled
(:func:`digests`, :func:`check_digests`).
"""

from __future__ import annotations

import hashlib

PACK_LIMIT = 65536  # frames smaller than this are joined into one message buffer


def pack(frames: list) -> tuple[list | None, list]:
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


def unpack(layout: list, buffers: list) -> list:
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
