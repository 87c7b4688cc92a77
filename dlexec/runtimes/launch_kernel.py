"""Starts a local kernel for dlexec: ipykernel, as ``python -m ipykernel_launcher`` does, minus its debugger.

:class:`dlexec.runtimes.local.LocalRuntime` runs this file by its path, with the client's own
Python, for its default kernel (``kernel_name=None``); the arguments are ipykernel's
(``-f connection.json`` and options). It imports nothing of dlexec: the kernel's startup file
(``--IPKernelApp.exec_files``) runs the same bootstrap as every kernel (:mod:`dlexec.bootstrap`),
which imports the worker, ``dlexec.kernel.worker``, from this environment's dlexec.

The one difference with ``ipykernel_launcher``: ipykernel imports debugpy as it creates its
kernel, to serve the Jupyter debugger (``debug_request`` messages), which dlexec never sends.
That import is about 0.1 s, a third of what a kernel needs before it can answer. Here
ipykernel finds debugpy missing, so the kernel has no debugger (its ``kernel_info_reply``
does not list one); afterwards debugpy is importable again, for the tasks.
"""

import os
import sys

if __name__ == "__main__":
    # As ipykernel_launcher does with the working directory: this file's folder (dlexec/runtimes)
    # must not shadow top-level modules (``signals``, ``jupyter``...).
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.modules["debugpy"] = None  # type: ignore[assignment]  # ``import debugpy`` raises ImportError
    try:
        import ipykernel.debugger  # noqa: F401 - records that no debugger is available
    except ImportError:  # an ipykernel without it: nothing to skip
        pass
    finally:
        del sys.modules["debugpy"]

    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
