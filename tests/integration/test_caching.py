"""The fast paths stay correct: callables serialized once, shared objects, batching, pipelining."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

from dlexec import DatalayerExecutor, Shared, serialization
from dlexec.callables import CallableCache

from ..conftest import run_script

pytestmark = pytest.mark.timeout(120)

LOADS = 0  # in a kernel: how many times a Counted callable was unpickled there


class Counted:
    """A callable that counts, in the kernel, how often it is unpickled."""

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        global LOADS
        LOADS += 1

    def __call__(self, x):
        return x, LOADS, os.getpid()


def identity_of(array):
    return id(array), os.getpid(), float(array.sum())


def fail_on_sevens(x):
    if x % 7 == 0:
        raise ValueError(f"seven divides {x}")
    return x * 2


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


# -- the callable cache, without kernels --------------------------------------------------------


def _main_function(source: str, namespace: dict):
    """Define a function as a notebook cell does (in ``__main__``); returns the last defined."""
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    name = source.split("def ", 1)[1].split("(", 1)[0]
    return namespace[name]


def test_an_unchanged_function_is_serialized_once():
    namespace = {"__name__": "__main__", "K": 3}
    f = _main_function("def f(x):\n    return x * K\n", namespace)
    cache = CallableCache()
    assert cache.blob(f) is cache.blob(f)


@pytest.mark.parametrize("change", ["redefine", "reassign a global", "redefine a helper", "new defaults"])
def test_a_changed_function_is_serialized_again(change):
    namespace = {"__name__": "__main__", "K": 3}
    _main_function("def helper(x):\n    return x + 1\n", namespace)
    f = _main_function("def f(x, y=1):\n    return helper(x) * K * y\n", namespace)
    cache = CallableCache()
    before = cache.blob(f)
    if change == "redefine":
        f = _main_function("def f(x, y=1):\n    return helper(x) * K * y * 10\n", namespace)
    elif change == "reassign a global":
        namespace["K"] = 4
    elif change == "redefine a helper":
        _main_function("def helper(x):\n    return x + 2\n", namespace)
    else:
        f.__defaults__ = (2,)
    after = cache.blob(f)
    assert after is not before and after.key != before.key
    assert serialization.loads(after.frames)(1) != serialization.loads(before.frames)(1)


def test_identical_content_has_the_same_key():
    namespace = {"__name__": "__main__"}
    first = _main_function("def f(x):\n    return x\n", namespace)
    second = _main_function("def f(x):\n    return x\n", namespace)
    cache = CallableCache()
    assert cache.blob(first).key == cache.blob(second).key


def test_plain_data_skips_dill_and_code_does_not():
    assert bytes(serialization.dumps({"a": [1, 2.5, "x"]})[0][:1]) == b"P"
    assert bytes(serialization.dumps(lambda x: x)[0][:1]) == b"D"
    namespace = {"__name__": "__main__"}
    exec("class Local:\n    pass\n", namespace)
    frames = serialization.dumps([namespace["Local"]()])
    assert bytes(frames[0][:1]) == b"D"  # a __main__ class travels by value


def test_a_shared_object_cannot_be_pickled_outside_a_task():
    with pytest.raises(TypeError, match="only be passed to tasks"):
        pickle.dumps(Shared([1, 2]))


# -- on kernels -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single():
    with DatalayerExecutor(1) as ex:
        yield ex


def test_map_sends_its_callable_once_per_runtime(single):
    results = list(single.map(Counted(), range(300)))
    assert [x for x, _, _ in results] == list(range(300))
    assert {loads for _, loads, _ in results} == {1}  # unpickled once, however many batches


def test_a_shared_object_is_sent_once_and_seen_by_every_task(single):
    array = np.arange(1_000_000, dtype=np.float64)
    shared = single.share(array)
    assert shared.nbytes >= array.nbytes and "ndarray" in repr(shared)
    results = [single.submit(identity_of, shared).result() for _ in range(5)]
    results += list(single.map(identity_of, [shared] * 5))
    assert len({(ident, pid) for ident, pid, _ in results}) == 1  # the same object in the kernel
    assert {total for _, _, total in results} == {float(array.sum())}


def test_a_shared_object_inside_an_argument(single):
    shared = single.share({"weights": [1, 2, 3]})
    assert single.submit(lambda d: sum(d[0]["weights"]), [shared]).result() == 6


def test_results_keep_their_order_and_errors_inside_batches(single):
    futures = [single.submit(fail_on_sevens, x) for x in range(1000)]
    for x, future in enumerate(futures):
        if x % 7 == 0:
            with pytest.raises(ValueError, match=f"seven divides {x}"):
                future.result()
        else:
            assert future.result() == x * 2
    assert list(single.map(fail_on_sevens, range(1, 7))) == [2, 4, 6, 8, 10, 12]


def test_tasks_not_yet_sent_can_be_cancelled():
    with DatalayerExecutor(1) as ex:
        blocker = ex.submit(sleep_then, "blocker", 1.0)  # not yet measured: nothing is sent behind it
        queued = [ex.submit(sleep_then, x, 0) for x in range(100)]
        assert all(future.cancel() for future in queued)
        assert blocker.result() == "blocker"


def test_tasks_pipelined_behind_a_running_one_finish_or_cancel_cleanly(single):
    list(single.map(sleep_then, range(200), [0] * 200))  # measured as short: pipelining on
    blocker = single.submit(sleep_then, "blocker", 0.5)
    queued = [single.submit(sleep_then, x, 0) for x in range(400)]
    cancelled = [future.cancel() for future in queued]
    assert blocker.result() == "blocker"
    for x, (future, was_cancelled) in enumerate(zip(queued, cancelled)):
        if was_cancelled:
            assert future.cancelled()
        else:  # already sent to the kernel (the documented window): it runs to completion
            assert future.result() == x
    assert sum(cancelled) >= 400 - 2 * 256


def test_a_redefined_main_function_runs_its_new_version(tmp_path):
    result = run_script(
        """
        from dlexec import DatalayerExecutor

        K = 2

        def helper(x):
            return x + 1

        def f(x):
            return helper(x) * K

        if __name__ == "__main__":
            with DatalayerExecutor(1) as ex:
                print("A", ex.submit(f, 1).result(), list(ex.map(f, [1, 2])))
                K = 10
                print("B", ex.submit(f, 1).result(), list(ex.map(f, [1, 2])))
                def helper(x):
                    return x + 100
                print("C", ex.submit(f, 1).result())
                def f(x):
                    return -x
                print("D", ex.submit(f, 1).result(), list(ex.map(f, [1, 2])))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["A 4 [4, 6]", "B 20 [20, 30]", "C 1010", "D -1 [-1, -2]"], result.stdout


def test_small_frames_travel_joined_and_large_ones_alone():
    large = bytes(range(256)) * 1024  # 256 KiB: sent as its own buffer, not copied
    frames = [b"a", memoryview(b"bc"), large, b"", b"def"]
    layout, buffers = serialization.pack(frames)
    assert len(buffers) == 2 and buffers[1] is large
    assert [bytes(f) for f in serialization.unpack(layout, buffers)] == [bytes(f) for f in frames]
    assert serialization.pack([b"only one"]) == (None, [b"only one"])


def test_joblib_batches_send_their_function_once_per_runtime():
    import joblib

    with joblib.parallel_config(backend="datalayer", n_jobs=2):
        results = joblib.Parallel(batch_size=4)(joblib.delayed(Counted())(x) for x in range(200))
    assert [x for x, _, _ in results] == list(range(200))
    assert {loads for _, loads, _ in results} == {1}  # 50 batches, one unpickling per kernel
