"""A remote exception is re-raised here with its type, its cause and the remote frames.

Run it from the repository root or from ``examples/``:

    python examples/remote_traceback.py              # catch the error and look at it
    python examples/remote_traceback.py --uncaught   # let it escape: Python prints it, exit 1

The task raises ``ValueError`` from a ``KeyError`` inside a kernel. ``future.result()``
raises that very ``ValueError`` (not a wrapper), with ``__cause__`` set, and its traceback
goes through the lines of ``read_port`` and ``lookup`` as they ran in the kernel.
"""

import os
import sys
import traceback

try:
    from dlexec import DatalayerExecutor
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec import DatalayerExecutor


def lookup(settings, key):
    return settings[key]


def read_port(settings):
    try:
        return int(lookup(settings, "port"))
    except KeyError as exc:
        raise ValueError(f"no port in the settings (keys: {sorted(settings)})") from exc


if __name__ == "__main__":
    settings = {"host": "localhost", "user": "ada"}
    with DatalayerExecutor(max_workers=1) as ex:
        print("port:", ex.submit(read_port, {"port": "8888"}).result())
        future = ex.submit(read_port, settings)

        if "--uncaught" in sys.argv[1:]:
            future.result()  # raises: the traceback printed by Python shows the remote frames

        try:
            future.result()
        except ValueError as exc:
            print("caught:   ", type(exc), "-", exc)
            print("cause:    ", type(exc.__cause__), "-", repr(exc.__cause__))
            print("exception():", repr(future.exception()))
            print("\n--- traceback.format_exception(exc) ---")
            print("".join(traceback.format_exception(exc)), end="")
            print("--- end ---")
