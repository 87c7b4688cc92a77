"""Quickstart: DatalayerExecutor is a drop-in ProcessPoolExecutor whose workers are Jupyter kernels.

Run it from the repository root or from ``examples/``:

    python examples/quickstart.py

It starts two local ipykernels, runs a few tasks in them and stops them again.
"""

import os
import sys

try:
    from dlexec import DatalayerExecutor
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec import DatalayerExecutor


def square(x):
    return x * x


def hello(name):
    print(f"hello {name}, from the kernel with pid {os.getpid()}")  # printed by the kernel
    return os.getpid()


if __name__ == "__main__":
    print(f"client pid: {os.getpid()}")
    # The same code as with concurrent.futures.ProcessPoolExecutor(max_workers=2):
    with DatalayerExecutor(max_workers=2) as ex:
        print("squares:", list(ex.map(square, range(10))))
        future = ex.submit(pow, 2, 100)
        print("2 ** 100 =", future.result())
        kernel_pid = ex.submit(hello, "world").result()
        print(f"the task ran in process {kernel_pid}")
    print("done: the kernels are stopped")
