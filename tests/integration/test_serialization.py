"""Serialization and traceback rebuilding, in one process (no kernel needed)."""

from __future__ import annotations

import traceback

import numpy as np
import pytest

from dlexec import RemoteError, serialization
from dlexec.tracebacks import rebuild_exception


def test_numpy_arrays_travel_out_of_band_without_copies():
    array = np.arange(1_000_000, dtype=np.float64)
    frames = serialization.dumps({"a": array})
    assert len(frames) == 2  # the pickle stream, then the array's memory
    assert len(frames[0]) < 1000  # the data is not in the stream
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float64), array)
    back = serialization.loads(frames)["a"]
    np.testing.assert_array_equal(back, array)


def test_non_contiguous_arrays_and_plain_objects_round_trip():
    array = np.arange(100).reshape(10, 10)[:, ::2]
    value = {"array": array, "text": "é", "nested": [1, (2, 3)], "bytes": b"\x00" * 10}
    back = serialization.loads(serialization.dumps(value))
    np.testing.assert_array_equal(back["array"], array)
    assert back["nested"] == [1, (2, 3)] and back["text"] == "é" and back["bytes"] == b"\x00" * 10


def test_lambdas_and_closures_round_trip():
    offset = 10

    def add(x):
        return x + offset

    assert serialization.loads(serialization.dumps(lambda x: x * 2))(4) == 8
    assert serialization.loads(serialization.dumps(add))(1) == 11


def _raise_chained():
    try:
        raise KeyError("inner")
    except KeyError as exc:
        raise ValueError("outer", 42) from exc


def test_exception_chain_and_traceback_survive():
    try:
        _raise_chained()
    except ValueError as exc:
        info, frames = serialization.dump_exception(exc)
    assert frames and "pickle_error" not in info
    rebuilt = rebuild_exception(info, frames)
    assert type(rebuilt) is ValueError and rebuilt.args == ("outer", 42)
    assert type(rebuilt.__cause__) is KeyError and rebuilt.__cause__.args == ("inner",)
    names = [frame.name for frame in traceback.extract_tb(rebuilt.__traceback__)]
    assert names[-1] == "_raise_chained"
    text = "".join(traceback.format_exception(rebuilt))
    assert 'raise ValueError("outer", 42) from exc' in text
    assert "The above exception was the direct cause" in text


class _HoldsGenerator(Exception):
    def __init__(self):
        super().__init__("has a generator")
        self.generator = (i for i in range(3))  # dill cannot serialize generators


def test_unpicklable_exception_becomes_remote_error_with_text_and_frames():
    def fail():
        raise _HoldsGenerator()

    try:
        fail()
    except _HoldsGenerator as exc:
        info, frames = serialization.dump_exception(exc)
    assert frames == [] and "generator" in info["pickle_error"]
    error = rebuild_exception(info, frames)
    assert isinstance(error, RemoteError)
    assert error.type_name.endswith("_HoldsGenerator") and error.message == "has a generator"
    assert "raise _HoldsGenerator()" in error.traceback_text
    assert [f.name for f in traceback.extract_tb(error.__traceback__)][-1] == "fail"
    assert "could not be serialized remotely" in str(error)


class _TwoArgs(Exception):
    def __init__(self, a, b):  # the args do not match __init__: a classic unpickling trap
        super().__init__(f"{a}-{b}")


def test_exception_with_custom_init_is_rebuilt():
    try:
        raise _TwoArgs(1, 2)
    except _TwoArgs as exc:
        info, frames = serialization.dump_exception(exc)
    rebuilt = rebuild_exception(info, frames)
    assert isinstance(rebuilt, (_TwoArgs, RemoteError))
    assert "1-2" in str(rebuilt)


def test_exception_that_cannot_be_rebuilt_here_falls_back_to_text():
    try:
        raise RuntimeError("remote only")
    except RuntimeError as exc:
        info, _ = serialization.dump_exception(exc)
    error = rebuild_exception(info, [b"not a pickle"])
    assert isinstance(error, RemoteError)
    assert error.type_name == "builtins.RuntimeError" and "remote only" in error.traceback_text
    assert "could not be rebuilt here" in str(error)


@pytest.mark.parametrize("value", [None, 0, "", [], {}, frozenset({1})])
def test_falsy_values_round_trip(value):
    assert serialization.loads(serialization.dumps(value)) == value
