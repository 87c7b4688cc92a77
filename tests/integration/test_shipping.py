"""Only the user modules a payload needs travel to a remote runtime (and ``ship_modules``).

The Jupyter Server's kernels do not have the test folder on their path, so what they can
import of the modules written here is exactly what the client shipped.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time

import pytest

import dlexec
from dlexec import modules, serialization
from dlexec.bootstrap import KERNEL_MODULES

pytestmark = pytest.mark.timeout(120)

PASSWORD = "hunter2-must-not-travel"

SOURCES = {
    "shiphelpers.py": """
        def double(x):
            return 2 * x
    """,
    "shiptasks.py": """
        import shiphelpers
        from shippkg.sub import triple


        def work(x):
            return shiphelpers.double(x) + 1


        def work_pkg(x):
            return triple(x)


        class Thing:
            def __init__(self, x):
                self.x = x

            def twice(self):
                return shiphelpers.double(self.x)
    """,
    "shipsettings.py": f"""
        PASSWORD = {PASSWORD!r}
    """,
    "shippkg/__init__.py": "",
    "shippkg/sub.py": """
        from . import util


        def triple(x):
            return util.times(x, 3)
    """,
    "shippkg/util.py": """
        STATE = []


        def times(x, n):
            return x * n


        def setup(value):
            STATE.append(value)


        def state():
            return list(STATE)
    """,
    "shipprobe.py": """
        import sys


        def shipped():
            '''The names of the user modules this kernel received from the client (not dlexec's own).'''
            finders = [f for f in sys.meta_path if type(f).__name__ == "SourceFinder"]
            return sorted(name for name in finders[0].sources if not name.startswith("dlexec")) if finders else []


        def importable(name):
            try:
                __import__(name)
            except ModuleNotFoundError:
                return False
            return True


        def loaded(prefix):
            return sorted(name for name in sys.modules if name.startswith(prefix))


        def attribute(obj, name):
            return getattr(obj, name)
    """,
}
TASKS_CLOSURE = ["shiphelpers", "shippkg", "shippkg.sub", "shippkg.util", "shiptasks"]


@pytest.fixture
def user_code(tmp_path):
    """The modules above, importable from ``tmp_path`` and imported in this process."""
    for relative, source in SOURCES.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        imported = {name: importlib.import_module(name) for name in ("shiptasks", "shipsettings", "shipprobe")}
        yield imported
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.startswith("ship")]:
            del sys.modules[name]


@pytest.fixture
def jupyter(jupyter_server) -> dict:
    """Keyword arguments for a kernel on the test Jupyter Server (which lacks these modules)."""
    return {"backend": "jupyter", "url": jupyter_server.url, "token": jupyter_server.token}


# -- what is shipped: the closure, worked out on the client --------------------------------


def _names(entries) -> list[str]:
    return sorted(entry[0] for entry in entries)


def test_only_the_referenced_modules_and_their_imports(user_code):
    shipped: dict = {}
    entries = modules.sources_to_ship(shipped, {"shiptasks"})
    assert _names(entries) == TASKS_CLOSURE  # not shipsettings, not dlexec, not the tests
    assert all(PASSWORD not in entry[2] for entry in entries)
    assert modules.sources_to_ship(shipped, {"shiptasks"}) == []  # already there
    assert _names(modules.sources_to_ship(shipped, {"shipprobe", "json", None})) == ["shipprobe"]


def test_a_changed_module_is_shipped_again(user_code):
    shipped: dict = {}
    modules.sources_to_ship(shipped, {"shiptasks"})
    helpers = sys.modules["shiphelpers"]
    with open(helpers.__file__, "a") as source:
        source.write("\nCHANGED = True\n")
    stat = os.stat(helpers.__file__)
    os.utime(helpers.__file__, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _names(modules.sources_to_ship(shipped, {"shiptasks"})) == ["shiphelpers"]


def test_ship_modules_restricts_to_named_packages(user_code):
    assert modules.sources_to_ship({}, {"shiptasks"}, packages=False) == []
    assert _names(modules.sources_to_ship({}, {"shiptasks"}, packages=["shiptasks"])) == ["shiptasks"]
    assert _names(modules.sources_to_ship({}, {"shiptasks"}, packages=["shiptasks", "shippkg"])) == [
        "shippkg", "shippkg.sub", "shippkg.util", "shiptasks"]


def test_dlexec_travels_only_when_imported(user_code, tmp_path):
    (tmp_path / "shipuser.py").write_text("import dlexec.errors\nimport dlexec.serialization\n\nVALUE = 1\n")
    importlib.import_module("shipuser")
    names = _names(modules.sources_to_ship({}, {"shipuser"}))
    assert {"shipuser", "dlexec.errors"} <= set(names)
    assert not set(names) & KERNEL_MODULES  # every kernel has those already (dlexec.bootstrap)
    assert not any(name.startswith("dlexec") for name in _names(modules.sources_to_ship({}, {"shiptasks"})))


def test_ship_modules_must_be_a_bool_or_a_list():
    with pytest.raises(TypeError, match="ship_modules"):
        dlexec.RuntimeService("bad", ship_modules="shiptasks")
    with pytest.raises(TypeError, match="ship_modules"):
        dlexec.RuntimeService("bad", ship_modules=[1])
    with pytest.raises(ValueError, match="mypkg"):
        dlexec.RuntimeService("bad", ship_modules=["mypkg.sub"])
    with pytest.raises(TypeError, match="ship_modules"):  # when the executor is made, not in a worker thread
        dlexec.DatalayerExecutor(1, ship_modules="shiptasks")


# -- what arrives: kernels on a Jupyter Server ---------------------------------------------


def test_executor_ships_what_the_task_needs_and_nothing_else(user_code, jupyter):
    tasks, probe = user_code["shiptasks"], user_code["shipprobe"]
    with dlexec.DatalayerExecutor(1, **jupyter) as ex:
        assert ex.submit(tasks.work, 3).result(timeout=60) == 7  # shiphelpers came along
        assert ex.submit(tasks.work_pkg, 2).result(timeout=60) == 6  # shippkg and its relative import
        assert ex.submit(probe.shipped).result(timeout=60) == sorted([*TASKS_CLOSURE, "shipprobe"])
        assert ex.submit(probe.importable, "shipsettings").result(timeout=60) is False
        assert set(ex.submit(probe.loaded, "dlexec").result(timeout=60)) <= KERNEL_MODULES  # the worker only


def test_modules_of_arguments_and_initializers_travel(user_code, jupyter):
    tasks, probe = user_code["shiptasks"], user_code["shipprobe"]
    util = sys.modules["shippkg.util"]
    with dlexec.DatalayerExecutor(1, initializer=util.setup, initargs=("ready",), **jupyter) as ex:
        assert ex.submit(probe.shipped).result(timeout=60) == ["shippkg", "shippkg.util", "shipprobe"]
        assert ex.submit(util.state).result(timeout=60) == ["ready"]
        thing = tasks.Thing(5)  # an argument whose class comes from a user module
        assert ex.submit(getattr, thing, "x").result(timeout=60) == 5
        assert ex.submit(probe.shipped).result(timeout=60) == sorted([*TASKS_CLOSURE, "shipprobe"])


def test_modules_of_shared_objects_travel(user_code, jupyter):
    tasks, probe = user_code["shiptasks"], user_code["shipprobe"]
    with dlexec.DatalayerExecutor(1, **jupyter) as ex:
        shared = ex.share(tasks.Thing(3))  # its class's module: not one the task's module imports
        assert ex.submit(probe.attribute, shared, "x").result(timeout=60) == 3


def test_a_module_used_by_a_function_sent_by_value(user_code, jupyter):
    namespace = {"__name__": "__main__", "shiphelpers": sys.modules["shiphelpers"]}
    exec("def quadruple(x):\n    return shiphelpers.double(shiphelpers.double(x))\n", namespace)
    found: set = set()
    serialization.dumps(namespace["quadruple"], modules=found)
    assert "shiphelpers" in found  # the module object it uses, pickled by name
    with dlexec.DatalayerExecutor(1, **jupyter) as ex:
        assert ex.submit(namespace["quadruple"], 3).result(timeout=60) == 12


def test_ship_modules_false_ships_nothing(user_code, jupyter):
    tasks = user_code["shiptasks"]
    with dlexec.DatalayerExecutor(1, ship_modules=False, **jupyter) as ex:
        error = ex.submit(tasks.work, 3).exception(timeout=60)
    assert isinstance(error, ModuleNotFoundError) and "shiptasks" in str(error)


def test_ship_modules_list_ships_those_packages_only(user_code, jupyter):
    tasks, probe = user_code["shiptasks"], user_code["shipprobe"]
    with dlexec.DatalayerExecutor(1, ship_modules=["shiptasks", "shipprobe"], **jupyter) as ex:
        assert ex.submit(probe.shipped).result(timeout=60) == ["shipprobe"]
        error = ex.submit(tasks.work, 3).exception(timeout=60)
        assert isinstance(error, ModuleNotFoundError) and "shiphelpers" in str(error)
        assert ex.submit(probe.shipped).result(timeout=60) == ["shipprobe", "shiptasks"]


def test_runtime_service_ships_the_modules_of_variables(user_code, jupyter):
    tasks = user_code["shiptasks"]
    with dlexec.RuntimeService("shipping", **jupyter) as rt:
        rt.set_variable("thing", tasks.Thing(4))
        assert rt.execute_code("value = thing.twice()", output="value") == 8
        code = ("import sys\nnames = sorted(n for n in next(f for f in sys.meta_path "
                "if type(f).__name__ == 'SourceFinder').sources if not n.startswith('dlexec'))")
        assert rt.execute_code(code, output="names") == TASKS_CLOSURE
    with dlexec.RuntimeService("shipping-off", ship_modules=False, **jupyter) as rt:
        with pytest.raises(dlexec.ExecutionError, match="shiptasks"):
            rt.set_variable("thing", tasks.Thing(4))


def test_no_kernel_left(jupyter_server):
    deadline = time.monotonic() + 15
    while jupyter_server.kernels() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jupyter_server.kernels() == []
