"""The ``"datalayer"`` joblib backend, registered when joblib is imported, without importing it.

joblib knows third-party backends only through ``register_parallel_backend``, which needs
joblib imported (about 0.1 s, NumPy included): its own table of lazily registered backends
(``joblib.parallel.EXTERNAL_BACKENDS``) is private, lives in joblib too, and is read by
``parallel_config`` but not by ``Parallel(backend=...)``. So ``import dlexec`` does this:

* if ``joblib.parallel`` is already imported, the backend is registered at once;
* otherwise a finder at the front of ``sys.meta_path`` waits for the import of
  ``joblib.parallel`` (``import joblib`` imports it), lets the usual finder and loader do
  it, registers the backend right after that module has run, and removes itself.

Either way ``joblib.parallel_config(backend="datalayer")`` and ``Parallel(backend="datalayer")``
work after ``import dlexec``, in whatever order the two are imported. A failure to register
is logged, never raised into the import of joblib.
"""

from __future__ import annotations

import logging
import sys

_TARGET = "joblib.parallel"
_log = logging.getLogger("dlexec")


def install() -> None:
    """Register the backend now if joblib is imported, else when it is."""
    if _TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        # A new list rather than an insertion: another thread may be going through the old one.
        sys.meta_path = [_Finder(), *sys.meta_path]


def _register() -> None:
    try:
        from .joblib_backend import register_joblib

        register_joblib()
    except Exception:  # noqa: BLE001 - joblib must import anyway
        _log.warning("dlexec: could not register the 'datalayer' joblib backend", exc_info=True)


def uninstall() -> None:
    sys.meta_path = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]


class _Finder:
    """Finds nothing itself: for ``joblib.parallel`` it asks the finders after it, and wraps
    the loader they give so that the backend is registered once the module has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if isinstance(finder, _Finder) or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        pass


class _RegisteringLoader:
    """The real loader, then the registration; the module keeps the real loader."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            uninstall()
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        _register()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)
