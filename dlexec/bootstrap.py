"""The code that installs dlexec's worker in a kernel (client side).

A kernel runs :func:`bootstrap_code` first: from a startup file (a local kernel) or as an
``execute_request``. It carries the sources of dlexec's *kernel-side modules*
(:data:`KERNEL_MODULES`: what a kernel imports of dlexec, standard library, dill and tblib
besides) and execs one of them, :mod:`dlexec.kernel.finder`, whose
:func:`~dlexec.kernel.finder.bootstrap` installs one meta-path finder and imports
:mod:`dlexec.kernel.worker` under its real name: from the kernel's own dlexec when it has
the same kernel-side sources (a local kernel: the same environment), else from the sources
sent. The user's modules later go through the same finder (:mod:`dlexec.modules`).

If the worker cannot be installed (no dill in the kernel...), every dlexec request is
answered with the error, so that the client's first one (``info``) reports it rather than
waiting for an answer.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from .kernel.wire import REPLY, REQUEST

_ROOT = Path(__file__).resolve().parent
#: The packages that run in a kernel, all of their modules.
_KERNEL_PACKAGES = ("kernel", "serialization")
#: ``import dlexec`` runs these too (``dlexec/__init__.py`` imports them eagerly).
_TOP_LEVEL = ("__init__", "_joblib_hook")
_FINDER = "dlexec.kernel.finder"


def _kernel_files() -> dict[str, Path]:
    files = {"dlexec" if stem == "__init__" else f"dlexec.{stem}": _ROOT / f"{stem}.py" for stem in _TOP_LEVEL}
    for package in _KERNEL_PACKAGES:
        for path in sorted((_ROOT / package).glob("*.py")):
            name = f"dlexec.{package}" if path.stem == "__init__" else f"dlexec.{package}.{path.stem}"
            files[name] = path
    return files


_FILES = _kernel_files()
#: dlexec's kernel-side modules, by name: never shipped as user modules (:mod:`dlexec.modules`).
KERNEL_MODULES: frozenset[str] = frozenset(_FILES)


@functools.lru_cache(maxsize=4)
def _entries(versions: tuple) -> list[list]:
    entries = []
    for name, path in _FILES.items():
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        entries.append([name, str(path), text, path.name == "__init__.py", digest])
    return entries


def kernel_sources() -> list[list]:
    """The kernel-side modules as :class:`~dlexec.kernel.finder.SourceFinder` entries:
    ``[name, filename, source, is_package, digest]`` (read again when a file changed)."""
    versions = []
    for path in _FILES.values():
        stat = path.stat()
        versions.append((stat.st_mtime_ns, stat.st_size))
    return _entries(tuple(versions))


# Run by the kernel: exec the finder's source, then let it do the rest (see the module's doc).
_BOOTSTRAP = """\
def __dlexec_bootstrap(entries, settings):
    try:
        filename, source = next((entry[1], entry[2]) for entry in entries if entry[0] == {finder!r})
        namespace = {{"__name__": {finder!r}, "__file__": filename}}
        exec(compile(source, filename, "exec"), namespace)
        namespace["bootstrap"](entries, settings)
    except BaseException as exc:
        error = type(exc).__name__ + ": " + str(exc)
        kernel = get_ipython().kernel

        def refuse(stream, idents, msg):
            kernel.session.send(stream, {reply!r}, {{"status": "error", "error": error, "final": True}},
                                parent=msg, ident=idents)

        kernel.shell_handlers[{request!r}] = refuse
try:
    __dlexec_bootstrap({entries!r}, {settings!r})
finally:
    del __dlexec_bootstrap
"""


def bootstrap_code(settings: dict) -> str:
    """The code that installs the worker in a kernel, with ``settings`` for
    :func:`dlexec.kernel.worker.install` (``Runtime.worker_settings()``)."""
    return _BOOTSTRAP.format(finder=_FINDER, entries=kernel_sources(), settings=settings, request=REQUEST,
                             reply=REPLY)
