"""dlexec's kernel side imports only the standard library, dill and tblib, and the bootstrap
installs it whether or not the kernel can import dlexec itself.

Each test runs the client's bootstrap code (:func:`dlexec.bootstrap.bootstrap_code`) in a
fresh interpreter, with a stand-in for IPython's kernel that records what is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

from dlexec import bootstrap

# A fresh interpreter: a stand-in kernel, the bootstrap, then the probe given as argv[2].
KERNEL = textwrap.dedent("""
    import builtins, json, sys

    class Session:
        def __init__(self):
            self.sent = []

        def send(self, stream, msg_type, content, parent=None, ident=None, buffers=()):
            self.sent.append((msg_type, content, list(buffers)))

    class Kernel:
        shell_handlers, control_handlers, session = {}, {}, Session()

    class IPython:
        kernel, user_ns = Kernel(), {}

    builtins.get_ipython = lambda: IPython
    before = set(sys.modules)
    exec(open(sys.argv[1]).read(), {})
    exec(sys.argv[2])
""")

# A run request of one task that uses a shipped user module (built with the kernel's own dlexec).
RUN_TASK = textwrap.dedent("""
    from dlexec import serialization
    from dlexec.kernel.wire import REPLY, Task, TaskResult
    source = "def triple(x):\\n    return 3 * x\\n"
    fn = serialization.Blob.of(eval("lambda x: __import__('shipuser').triple(x)"))
    args = serialization.dumps_call((5,), {})
    content = {"op": "run", "blobs": [[fn.key, len(fn.frames)]], "tasks": [Task(1, len(args), None, fn.key)],
               "modules": [["shipuser", "/nowhere/shipuser.py", source, False, "v1"]]}
    handle = Kernel.shell_handlers["dlexec_request"]
    handle(None, [], {"content": content, "buffers": [*fn.frames, *args]})
    msg_type, reply, frames = Kernel.session.sent[-1]
    result = TaskResult(*reply["results"][0])
    finder = sys.meta_path[0]
    print(json.dumps({
        "reply": msg_type == REPLY and reply["status"],
        "result": result.status == "ok" and serialization.loads(frames),
        "dlexec": sys.modules["dlexec"].__file__,
        "loader": type(sys.modules["dlexec.kernel.worker"].__loader__).__name__,
        "finder": type(finder).__name__,
        "sources": sorted(finder.sources),
        "handlers": sorted([*Kernel.shell_handlers, *Kernel.control_handlers]),
    }))
""")


def _run_kernel(tmp_path, probe: str, args=(), env=None) -> dict:
    code = tmp_path / "bootstrap.py"
    code.write_text(bootstrap.bootstrap_code({}))
    out = subprocess.run([sys.executable, *args, "-c", KERNEL, str(code), probe], capture_output=True, text=True,
                         check=False, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_kernel_side_imports_only_the_standard_library_dill_and_tblib(tmp_path):
    # (without __main__'s aliases: multiprocessing, which dill imports, names it __mp_main__ too)
    probe = ("print(json.dumps(sorted(name for name in set(sys.modules) - before "
             "if sys.modules[name] is not sys.modules['__main__'])))")
    loaded = _run_kernel(tmp_path, probe)
    assert "dlexec.kernel.worker" in loaded
    foreign = [name for name in loaded if name.partition(".")[0] not in sys.stdlib_module_names
               and name.partition(".")[0] not in {"dill", "tblib"} and name not in bootstrap.KERNEL_MODULES]
    assert foreign == []
    assert bootstrap.KERNEL_MODULES <= set(loaded)  # and each module listed is one a kernel needs


def test_a_kernel_with_the_same_dlexec_imports_its_own(tmp_path):
    result = _run_kernel(tmp_path, RUN_TASK)
    assert result["reply"] == "ok" and result["result"] == 15
    assert result["loader"] == "SourceFileLoader"  # dlexec's own files, nothing shipped
    assert result["finder"] == "SourceFinder" and result["sources"] == ["shipuser"]
    assert result["handlers"] == ["dlexec_cancel", "dlexec_request"]


def test_a_kernel_without_dlexec_gets_the_sources(tmp_path):
    # No site module: no .pth files, so no dlexec (an editable install is one); dill and
    # tblib from the site-packages folder on PYTHONPATH; the working directory holds no dlexec.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    result = _run_kernel(tmp_path, RUN_TASK, args=["-S"], env=env)
    assert result["reply"] == "ok" and result["result"] == 15
    assert result["loader"] == "SourceFinder"  # imported from the sources the bootstrap carried
    assert result["dlexec"] == os.path.join(os.path.dirname(bootstrap.__file__), "__init__.py")
    assert set(result["sources"]) == bootstrap.KERNEL_MODULES | {"shipuser"}


def test_dlexec_is_hidden_without_site(tmp_path):
    """What the test above relies on."""
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    out = subprocess.run([sys.executable, "-S", "-c", "import dill, tblib; import dlexec"], capture_output=True,
                         text=True, check=False, cwd=tmp_path, env=env, timeout=60)
    assert "No module named 'dlexec'" in out.stderr
