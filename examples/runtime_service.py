"""RuntimeService: drive one kernel directly (the Datalayer runtime API).

Run it from the repository root or from ``examples/``:

    python examples/runtime_service.py

It starts one local ipykernel, runs code in it, moves variables in and out, shows what
a failing cell returns, runs a file, and stops the kernel.
"""

import os
import sys
import tempfile

try:
    from dlexec import RuntimeService
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec import RuntimeService


if __name__ == "__main__":
    with RuntimeService("demo") as rt:
        print(rt)

        print("\n1. Run a cell: stdout and the execute_result come back")
        resp = rt.execute_code("x = 1 + 1\nprint('x is', x)\nx * 21")
        print("   success:", resp.success, "-", resp.message)
        print("   stdout: ", repr(resp.stdout))
        print("   result: ", resp.result)

        print("\n2. Variables in, one variable's value out")
        mean = rt.execute_code(
            "mean = sum(values) / len(values)",
            variables={"values": [3, 1, 4, 1, 5, 9, 2, 6]},
            output="mean",
        )
        print("   mean =", mean)

        print("\n3. set_variables / get_variable (any object dill can serialize)")
        rt.set_variables({"a": 6, "b": 7, "scale": lambda v: v * 10})
        rt.execute_code("c = scale(a * b)")
        print("   c =", rt.get_variable("c"))
        print("   undefined variable ->", rt.get_variable("no_such_name"))

        print("\n4. A failing cell: success is False, the traceback is in stderr")
        resp = rt.execute_code("import sys\nprint('about to fail', file=sys.stderr)\n1 / 0")
        print("   success:", resp.success, "-", resp.message)
        print("   error:  ", resp.error["ename"], resp.error["evalue"])
        print("   stderr:")
        print("".join(f"   | {line}\n" for line in resp.stderr.splitlines()), end="")

        print("\n5. Run a .py file in the kernel")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "script.py")
            with open(path, "w") as f:
                f.write("import os\nkernel_pid = os.getpid()\nprint('hello from', __name__)\n")
            resp = rt.execute_file(path)
            print("   stdout:", repr(resp.stdout))
            print(f"   kernel_pid = {rt.get_variable('kernel_pid')} (this process: {os.getpid()})")
    print("\nafter the with block:", rt)
