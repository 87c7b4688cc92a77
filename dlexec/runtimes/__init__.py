"""Backends: one module per way of reaching a kernel, behind :class:`base.Runtime`.

:func:`create_runtime` is the only place that knows the backends by name, so the
executor and :class:`dlexec.RuntimeService` never import a backend module themselves.
"""

from __future__ import annotations

import os

from .base import Runtime

BACKENDS = ("local", "jupyter", "datalayer")
DEFAULT_BACKEND = "local"


#: The environment a runtime reports when none is chosen (the SDK's default): it selects no backend.
DEFAULT_ENVIRONMENT = "python-cpu-env"
#: Arguments that only mean something to Datalayer: giving one selects the ``datalayer`` backend.
DATALAYER_ARGUMENTS = ("run_url", "iam_url", "runtimes_url", "token", "environment", "pod_name", "ingress",
                       "jupyter_token")


def datalayer_arguments(options: dict) -> list[str]:
    """The Datalayer arguments among ``options`` (those given, not None): ``environment`` counts
    only when it is not the default one, which every backend reports."""
    return [name for name in DATALAYER_ARGUMENTS if options.get(name) is not None
            and not (name == "environment" and options[name] == DEFAULT_ENVIRONMENT)]


def resolve_backend(backend: str | None, options: dict | None = None) -> str:
    """The backend to use: the argument; else ``datalayer`` if ``options`` hold a Datalayer
    argument (:func:`datalayer_arguments`); else ``$DLEXEC_BACKEND``; else ``local``.

    Environment variables alone (an API key, a URL) never select ``datalayer``: paid runtimes
    start only when the code or ``$DLEXEC_BACKEND`` asks for them.
    """
    name = backend or ("datalayer" if options and datalayer_arguments(options) else None)
    name = name or os.environ.get("DLEXEC_BACKEND") or DEFAULT_BACKEND
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown dlexec backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return name


def create_runtime(backend: str | None, name: str, **options) -> Runtime:
    """A new, not yet started runtime of the given backend.

    Settings not given as options come from the environment: ``$DLEXEC_JUPYTER_URL`` and
    ``$DLEXEC_JUPYTER_TOKEN`` for ``jupyter``; ``$DATALAYER_API_KEY``, ``$DATALAYER_RUN_URL``,
    ``$DATALAYER_IAM_URL`` and ``$DATALAYER_RUNTIMES_URL`` (and the keyring) for ``datalayer``.
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


def prepare(backend: str | None, options: dict | None = None) -> str:
    """Resolve the backend (see :func:`resolve_backend`) and do, in the caller's (main) thread,
    what it needs there: for remote kernels (a server's or paid runtimes), a SIGTERM handler
    that lets the program delete them on exit. A local kernel exits by itself when this process does."""
    backend = resolve_backend(backend, options)
    if backend != "local":
        from .signals import install_sigterm_handler

        install_sigterm_handler()
    return backend


__all__ = ["BACKENDS", "DATALAYER_ARGUMENTS", "Runtime", "create_runtime", "datalayer_arguments", "prepare",
           "resolve_backend"]
