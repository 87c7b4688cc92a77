"""Imports modules from the source the client sent: dlexec's kernel side, and the user's modules.

This module is how dlexec's code gets into a kernel. The client's bootstrap
(:mod:`dlexec.bootstrap`) sends its source with the sources of dlexec's kernel-side
modules and runs :func:`bootstrap`, which installs one :class:`SourceFinder` at the front
of ``sys.meta_path`` and imports :mod:`dlexec.kernel.worker` under its real name:

* from the kernel's own dlexec if it has the same kernel-side sources (a local kernel,
  same environment): the finder then starts empty;
* otherwise from the sources, which the finder holds (a remote kernel without dlexec, or
  with another version of it, which is then unloaded if it was loaded).

The worker then adds the user's modules that the client ships to the same finder
(:meth:`SourceFinder.update`). Being exec'd on its own first, this module imports only the
standard library, and nothing of dlexec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

#: The package whose kernel side the bootstrap installs.
PACKAGE = "dlexec"


class SourceFinder:
    """A meta-path finder for modules given as source: ``[name, filename, source, is_package, digest]``."""

    def __init__(self):
        self.sources: dict[str, tuple] = {}  # name -> (filename, source, is_package, digest)

    def update(self, entries) -> None:
        for name, filename, source, is_package, digest in entries:
            old = self.sources.get(name)
            self.sources[name] = (filename, source, is_package, digest)
            if old is not None and old[3] != digest:
                sys.modules.pop(name, None)  # a new version: import it afresh next time

    def source(self, name: str) -> str | None:
        entry = self.sources.get(name)
        return entry[1] if entry is not None else None

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.sources:
            return None
        filename, _, is_package, _ = self.sources[fullname]
        return importlib.util.spec_from_loader(fullname, self, origin=filename, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        filename, source, _, _ = self.sources[module.__name__]
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the source the client sent


def bootstrap(entries: list, settings: dict):
    """Install the finder, import the worker under its real name and install it (see the
    module's doc). ``entries``: the kernel-side modules, as :meth:`SourceFinder.update`
    takes them; ``settings``: :func:`dlexec.kernel.worker.install`'s."""
    for path in reversed(settings.get("sys_path") or ()):  # where the kernel's own dlexec may be
        if path not in sys.path:
            sys.path.insert(0, path)
    finder = SourceFinder()
    if not all(_digest(_current_source(name)) == digest for name, _, _, _, digest in entries):
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]  # another dlexec (or none): ours replaces it
        finder.update(entries)
    # A new list rather than an insertion: another thread may be going through the old one.
    sys.meta_path = [finder, *sys.meta_path]  # the user's current code wins over any installed copy
    joblib_hooked = "dlexec._joblib_hook" in sys.modules
    worker = importlib.import_module(PACKAGE + ".kernel.worker")
    if not joblib_hooked and "dlexec._joblib_hook" in sys.modules:
        # ``import dlexec`` makes joblib register dlexec's backend once imported: a client's
        # business, not a kernel's (it would import dlexec's client side when a task imports joblib).
        sys.modules["dlexec._joblib_hook"].uninstall()
    return worker.install(settings, finder=finder)


def _current_source(name: str) -> str | None:
    """The source of module ``name`` as this kernel has it loaded, or would import it."""
    module = sys.modules.get(name)
    if module is not None:
        loader = getattr(module, "__loader__", None)
        try:
            return loader.source(name) if isinstance(loader, SourceFinder) else loader.get_source(name)
        except Exception:  # noqa: BLE001 - no source to compare: not ours
            return None
    spec = importlib.util.find_spec(PACKAGE)  # not a submodule's: that would import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], *name.split(".")[1:])
    path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
    try:
        with open(path, encoding="utf-8") as source_file:
            return source_file.read()
    except (OSError, UnicodeDecodeError):
        return None


def _digest(text: str | None) -> str | None:
    return hashlib.sha1(text.encode("utf-8")).hexdigest() if text is not None else None
