"""Moved to :mod:`dlexec.kernel` (the worker: :mod:`dlexec.kernel.worker`); the message types are here until their users import :mod:`dlexec.kernel.wire`."""

from .kernel.wire import CANCEL, REPLY, REQUEST  # noqa: F401
