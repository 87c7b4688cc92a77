"""Backends: one module per way of reaching a kernel, behind :class:`base.Runtime`.

:func:`create_runtime` is the only place that knows the backends by name, so the
executor and :class:`dlexec.RuntimeService` never import a backend module themselves.
"""

from __future__ import annotations

import os

from .base import Runtime

BACKENDS = ("local", "jupyter", "datalayer")
DEFAULT_BACKEND = "local"


def resolve_backend(backend: str | None) -> str:
    """The backend to use: the argument, else ``$DLEXEC_BACKEND``, else ``local``."""
    name = backend or os.environ.get("DLEXEC_BACKEND") or DEFAULT_BACKEND
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown dlexec backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return name


def create_runtime(backend: str | None, name: str, **options) -> Runtime:
    """A new, not yet started runtime of the given backend.

    Settings not given as options come from the environment: ``$DLEXEC_JUPYTER_URL`` and
    ``$DLEXEC_JUPYTER_TOKEN`` for ``jupyter``; ``$DATALAYER_API_KEY``, ``$DATALAYER_RUN_URL``
    and ``$DATALAYER_IAM_URL`` for ``datalayer``.
    """
    backend = resolve_backend(backend)
    if backend == "local":
        from .local import LocalRuntime

        return LocalRuntime(name, **options)
    if backend == "jupyter":
        from .jupyter import JupyterServerRuntime

        if options.get("url") is None:
            options["url"] = os.environ.get("DLEXEC_JUPYTER_URL")
        if options.get("token") is None:
            options["token"] = os.environ.get("DLEXEC_JUPYTER_TOKEN")
        return JupyterServerRuntime(name, **options)
    if backend == "datalayer":
        from .datalayer import DatalayerRuntime

        return DatalayerRuntime(name, **options)  # the client reads the DATALAYER_* variables
    raise AssertionError(backend)  # pragma: no cover - resolve_backend checked it


def prepare(backend: str | None) -> str:
    """Resolve the backend and do, in the caller's (main) thread, what it needs there: for
    remote kernels (a server's or paid runtimes), a SIGTERM handler that lets the program
    delete them on exit. A local kernel exits by itself when this process does."""
    backend = resolve_backend(backend)
    if backend != "local":
        from .signals import install_sigterm_handler

        install_sigterm_handler()
    return backend


__all__ = ["BACKENDS", "Runtime", "create_runtime", "prepare", "resolve_backend"]
