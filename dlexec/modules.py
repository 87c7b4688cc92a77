"""Shipping the user's own modules to runtimes that do not have them.

A function or class from an importable module travels by reference: its module's name
and its own. A remote runtime has the packages of its image, but not the user's own
modules (the scripts and packages next to their code). So when a payload refers to one,
the client also sends the source of every loaded *user module* that the runtime has not
seen yet (or has seen in another version); the worker imports them from that source on
demand (a meta-path finder), so references resolve, relative imports work, and
tracebacks point at the client's files. A module that the shipped code imports and the
runtime lacks fails with the usual ``ModuleNotFoundError`` naming it.

A user module is a loaded ``.py`` module outside the standard library and the
site-packages folders. dlexec's own modules are shipped too, wherever they are
installed: the user's modules often import dlexec, and a runtime need not have it. Local
kernels share the client's files and ``sys.path``, so nothing is shipped to them.
"""

from __future__ import annotations

import hashlib
import os
import site
import sys
import sysconfig

_EXCLUDED_PACKAGES = {"__main__", "__mp_main__"}
_is_user: dict[str, bool] = {}
_sources: dict[str, tuple[float, list]] = {}  # filename -> (mtime, entry)


def _system_dirs() -> tuple[str, ...]:
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            paths.add(path)
    for path in [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]:
        paths.add(path)
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


_SYSTEM_DIRS = _system_dirs()


def is_user_module(name: str | None) -> bool:
    """Whether ``name`` is a loaded module of the user's own code (see the module doc)."""
    if not name:
        return False
    known = _is_user.get(name)
    if known is not None:
        return known
    module = sys.modules.get(name)
    filename = getattr(module, "__file__", None)
    top = name.split(".")[0]
    result = bool(
        filename
        and filename.endswith(".py")
        and top not in _EXCLUDED_PACKAGES
        and (top == "dlexec" or not os.path.realpath(filename).startswith(_SYSTEM_DIRS))
    )
    _is_user[name] = result
    return result


def user_modules(names) -> set[str]:
    """The user modules among ``names``."""
    return {name for name in names if is_user_module(name)}


def sources_to_ship(shipped: dict[str, str]) -> list[list]:
    """Entries ``[name, filename, source, is_package, digest]`` for every loaded user
    module not in ``shipped`` (name -> digest) in its current version; updates ``shipped``."""
    entries = []
    for name, module in list(sys.modules.items()):
        if not is_user_module(name):
            continue
        entry = _entry(name, module)
        if entry is not None and shipped.get(name) != entry[4]:
            shipped[name] = entry[4]
            entries.append(entry)
    return entries


def _entry(name: str, module) -> list | None:
    filename = module.__file__
    try:
        mtime = os.stat(filename).st_mtime
        cached = _sources.get(filename)
        if cached is None or cached[0] != mtime:
            with open(filename, encoding="utf-8") as source_file:
                source = source_file.read()
            digest = hashlib.sha1(source.encode("utf-8")).hexdigest()
            is_package = os.path.basename(filename) == "__init__.py"
            cached = (mtime, [filename, source, is_package, digest])
            _sources[filename] = cached
    except (OSError, UnicodeDecodeError):
        return None
    return [name, *cached[1]]
