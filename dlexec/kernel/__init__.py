"""The code that runs inside a kernel (standard library, dill and tblib only), imported under its real name.

The client imports it too: :mod:`dlexec.kernel.wire` is the protocol both sides speak.
"""
