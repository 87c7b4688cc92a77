"""The code that installs dlexec's worker in a kernel (temporary: being reworked)."""

from __future__ import annotations

from pathlib import Path

from . import serialization, worker

_SOURCES = (
    ("_dlexec_serialization", Path(serialization.__file__)),
    ("_dlexec_worker", Path(worker.__file__)),
)

# Run by the kernel, from a startup file or an execute_request. If the worker cannot be
# installed (no dill in the kernel...), every dlexec request is answered with the error, so
# that the client's first one (``info``) reports it rather than waiting for an answer.
_BOOTSTRAP = """\
def __dlexec_bootstrap(sources, settings):
    import sys, types
    try:
        for name, source in sources:
            module = types.ModuleType(name)
            module.__file__ = "<" + name + ">"
            sys.modules[name] = module
            exec(compile(source, module.__file__, "exec"), module.__dict__)
        sys.modules["_dlexec_worker"].install(settings)
    except BaseException as exc:
        error = type(exc).__name__ + ": " + str(exc)
        kernel = get_ipython().kernel

        def refuse(stream, idents, msg):
            kernel.session.send(stream, {reply!r}, {{"status": "error", "error": error, "final": True}},
                                parent=msg, ident=idents)

        kernel.shell_handlers[{request!r}] = refuse
try:
    __dlexec_bootstrap({sources!r}, {settings!r})
finally:
    del __dlexec_bootstrap
"""


def bootstrap_code(settings: dict) -> str:
    """The code that installs the worker: its source and this runtime's settings."""
    sources = [(name, path.read_text()) for name, path in _SOURCES]
    return _BOOTSTRAP.format(sources=sources, settings=settings, request=worker.REQUEST, reply=worker.REPLY)
