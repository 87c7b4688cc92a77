"""Shipping the user's own modules to runtimes that do not have them.

A function or class from an importable module travels by reference: its module's name
and its own. A remote runtime has the packages of its image, but not the user's own
modules (the scripts and packages next to their code). So the client sends the source of
the user modules a payload refers to (the pickler records the modules of the functions,
classes and modules it meets), plus the user modules those import, transitively, and
their parent packages: the imports are read from each module's source with :mod:`ast`
(``import x``, ``from x import y``, relative imports, at any depth in the file) and kept
when they name a loaded user module. Nothing else travels: not a ``settings.py`` that the
client imported but the task does not use. Each runtime gets a module once per version
(the caller keeps a name -> digest record); the worker imports them from that source on
demand (a meta-path finder), so references resolve, relative imports work, and
tracebacks point at the client's files. A module that the shipped code imports and the
runtime lacks fails with the usual ``ModuleNotFoundError`` naming it; so does one
imported by name at run time only (``importlib.import_module``), which the closure
cannot see.

A user module is a loaded ``.py`` module outside the standard library and the
site-packages folders. dlexec's own client-side modules count as user modules wherever
they are installed (a runtime need not have dlexec), so they travel when the user's code
imports them; its kernel-side modules (:data:`dlexec.bootstrap.KERNEL_MODULES`) never do:
every kernel has them already, installed by the bootstrap. Local kernels share the
client's files and ``sys.path``, so nothing is shipped to them. ``ship_modules``
(:func:`check_ship_modules`) turns shipping off, or restricts it to some top-level packages.
"""

from __future__ import annotations

import ast
import hashlib
import os
import site
import sys
import sysconfig
from collections.abc import Collection, Iterable

from .bootstrap import KERNEL_MODULES

#: Never shipped: the entry points.
_EXCLUDED_PACKAGES = {"__main__", "__mp_main__"}
_is_user: dict[str, bool] = {}
_files: dict[str, tuple[tuple[int, int], _Source]] = {}  # filename -> ((mtime_ns, size), source)


class _Source:
    """A module file as read once per version: its source, digest and (lazily) imports."""

    __slots__ = ("_imports", "digest", "filename", "is_package", "text")

    def __init__(self, filename: str, text: str):
        self.filename, self.text = filename, text
        self.is_package = os.path.basename(filename) == "__init__.py"
        self.digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        self._imports: list[tuple[int, str, tuple[str, ...] | None]] | None = None

    def imports(self) -> list[tuple[int, str, tuple[str, ...] | None]]:
        """``(level, module, names)`` of each import statement; ``names`` None for ``import x``."""
        if self._imports is None:
            found = []
            try:
                tree = ast.parse(self.text, self.filename)
            except (SyntaxError, ValueError):  # changed on disk since it was loaded: ship it as it is
                tree = None
            for node in ast.walk(tree) if tree is not None else ():
                if isinstance(node, ast.Import):
                    found.extend((0, alias.name, None) for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
            self._imports = found
        return self._imports


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
    if module is None:  # not loaded (yet): nothing to ship, and nothing to remember
        return False
    filename = getattr(module, "__file__", None)
    top = name.split(".")[0]
    result = bool(
        filename
        and filename.endswith(".py")
        and top not in _EXCLUDED_PACKAGES
        and name not in KERNEL_MODULES  # the kernel has them already: never replaced by a shipped copy
        and getattr(module, "__name__", None) == name  # not an alias of a module loaded under another name
        and (top == "dlexec" or not os.path.realpath(filename).startswith(_SYSTEM_DIRS))
    )
    _is_user[name] = result
    return result


def user_modules(names) -> set[str]:
    """The user modules among ``names``."""
    return {name for name in names if is_user_module(name)}


def check_ship_modules(value) -> bool | frozenset[str]:
    """``ship_modules`` as given to an executor or a RuntimeService: ``True`` (the modules
    payloads need), ``False`` (none), or the top-level packages that may be shipped."""
    if value is True or value is False:
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"ship_modules must be True, False or a list of top-level package names such as ['mypkg'], "
            f"not {value!r}"
        )
    names = list(value)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"ship_modules lists top-level package names (strings), not {name!r}")
        if not name.isidentifier():
            raise ValueError(
                f"ship_modules lists top-level package names: {name!r} is not one "
                f"(for 'mypkg.sub', write 'mypkg')"
            )
    return frozenset(names)


def needed_modules(names: Iterable[str | None], packages: bool | Collection[str] = True) -> set[str]:
    """The user modules among ``names``, with the user modules they import (transitively)
    and their parent packages; only those of ``packages`` if that is a collection."""
    if packages is False:
        return set()
    allowed = None if packages is True else frozenset(packages)
    found: set[str] = set()
    todo = [name for name in names if name]
    while todo:
        name = todo.pop()
        if name in found or not is_user_module(name):
            continue
        if allowed is not None and name.partition(".")[0] not in allowed:
            continue
        found.add(name)
        parent = name.rpartition(".")[0]
        if parent:  # importing a.b runs a/__init__.py first
            todo.append(parent)
        source = _read(sys.modules[name].__file__)
        if source is not None:
            todo.extend(_resolve(name, source))
    return found


def _resolve(name: str, source: _Source) -> list[str]:
    """The loaded modules that the import statements of module ``name`` name."""
    package = name if source.is_package else name.rpartition(".")[0]
    loaded = sys.modules
    found = []
    for level, target, names in source.imports():
        if level:  # relative: from . import x, from ..a import b
            parts = package.split(".") if package else []
            if level - 1 >= len(parts):
                continue  # beyond the top-level package: it would fail to import anyway
            base = ".".join(parts[: len(parts) - (level - 1)])
            target = f"{base}.{target}" if target else base
        if names is None:  # import a.b.c binds a and imports a, a.b, a.b.c
            parts = target.split(".")
            found.extend(".".join(parts[:end]) for end in range(1, len(parts) + 1))
        else:  # from a import b: b may be a submodule
            found.append(target)
            found.extend(f"{target}.{sub}" for sub in names if sub != "*")
    return [module for module in found if module in loaded]


def sources_to_ship(shipped: dict[str, str], names: Iterable[str | None],
                    packages: bool | Collection[str] = True) -> list[list]:
    """Entries ``[name, filename, source, is_package, digest]`` for :func:`needed_modules`
    of ``names`` that are not in ``shipped`` (name -> digest) in their current version;
    updates ``shipped``."""
    entries = []
    for name in sorted(needed_modules(names, packages)):
        source = _read(sys.modules[name].__file__)
        if source is not None and shipped.get(name) != source.digest:
            shipped[name] = source.digest
            entries.append([name, source.filename, source.text, source.is_package, source.digest])
    return entries


def _read(filename: str) -> _Source | None:
    """The module file's current version (cached per modification time and size)."""
    try:
        stat = os.stat(filename)
        version = (stat.st_mtime_ns, stat.st_size)
        cached = _files.get(filename)
        if cached is None or cached[0] != version:
            with open(filename, encoding="utf-8") as source_file:
                cached = (version, _Source(filename, source_file.read()))
            _files[filename] = cached
    except (OSError, UnicodeDecodeError):
        return None
    return cached[1]
