"""The code that runs inside a kernel (standard library, dill and tblib only).

The client imports it too: :mod:`dlexec.kernel.wire` is the protocol both sides speak.
"""
