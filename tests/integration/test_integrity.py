"""Integrity and trust: buffer digests checked before unpickling, snapshot ids checked
before any file operation."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import dlexec
from dlexec import serialization, snapshots
from dlexec.channel import KernelChannel
from dlexec.runtimes.jupyter import JupyterServerRuntime

pytestmark = pytest.mark.timeout(120)

ARRAY = np.arange(100_000, dtype=np.float64)  # 800 kB: a buffer of its own, not packed


def _flipped(msg: dict, buffers) -> list:
    """``buffers`` with one byte of the last one changed, for dlexec messages with buffers."""
    buffers = list(buffers or ())
    if msg["header"]["msg_type"].startswith("dlexec_") and buffers:
        last = bytearray(buffers[-1])
        last[len(last) // 2] ^= 0xFF
        buffers[-1] = bytes(last)
    return buffers


@pytest.fixture
def jupyter(jupyter_server) -> dict:
    return {"backend": "jupyter", "url": jupyter_server.url, "token": jupyter_server.token}


def _tamper_requests(monkeypatch, runtime_class) -> None:
    """Requests from now on have a byte flipped after dlexec sent them (on their way to the kernel)."""
    send = runtime_class.send
    monkeypatch.setattr(runtime_class, "send", lambda self, channel, msg, buffers=(): send(
        self, channel, msg, _flipped(msg, buffers)))


def _tamper_replies(monkeypatch) -> None:
    """Replies from kernels created from now on have a byte flipped before dlexec reads them."""
    on_message = KernelChannel._on_message

    def tampered(self, channel, msg):
        msg["buffers"] = _flipped(msg, msg.get("buffers"))
        return on_message(self, channel, msg)

    monkeypatch.setattr(KernelChannel, "_on_message", tampered)


# -- the digests themselves -------------------------------------------------------------------


def test_digests_match_only_the_same_bytes():
    buffers = [b"abc", memoryview(ARRAY), bytearray(b"x" * 70_000)]
    content = {"digests": serialization.digests(buffers)}
    serialization.check_digests(content, buffers)
    serialization.check_digests(content, [bytes(b) for b in buffers])
    altered = [buffers[0], ARRAY.copy(), buffers[2]]
    altered[1][5] = -1
    with pytest.raises(serialization.DigestMismatchError, match=r"buffer 2 of 3 .*altered"):
        serialization.check_digests(content, altered)
    with pytest.raises(serialization.DigestMismatchError, match="2 buffers .* 3"):
        serialization.check_digests(content, buffers[:2])
    with pytest.raises(serialization.DigestMismatchError, match="no digests"):
        serialization.check_digests({}, buffers, required=True)
    serialization.check_digests({}, [], required=True)  # nothing to check


# -- altered in transit: refused by the kernel, refused by the client ------------------------------


def test_kernel_refuses_an_altered_request(monkeypatch, jupyter):
    with dlexec.RuntimeService("integrity", **jupyter) as rt:
        rt.set_variable("x", ARRAY)
        _tamper_requests(monkeypatch, JupyterServerRuntime)
        with pytest.raises(dlexec.ExecutionError, match="altered"):
            rt.set_variable("x", ARRAY + 1)
        monkeypatch.undo()
        assert float(rt.execute_code("s = float(x.sum())", output="s")) == float(ARRAY.sum())  # unchanged


def test_client_refuses_an_altered_reply(monkeypatch, jupyter):
    _tamper_replies(monkeypatch)
    with dlexec.RuntimeService("integrity", **jupyter) as rt:
        rt.set_variable("x", ARRAY)
        with pytest.raises(dlexec.ExecutionError, match="altered"):
            rt.get_variable("x")


def test_executor_tasks_fail_on_altered_buffers(monkeypatch, jupyter):
    with dlexec.DatalayerExecutor(1, **jupyter) as ex:
        assert ex.submit(np.sum, ARRAY).result(timeout=60) == ARRAY.sum()
        with monkeypatch.context() as patch:
            _tamper_requests(patch, JupyterServerRuntime)
            error = ex.submit(np.sum, ARRAY + 1).exception(timeout=60)
        assert isinstance(error, serialization.DigestMismatchError) and "altered" in str(error)
        assert ex.submit(np.sum, ARRAY).result(timeout=60) == ARRAY.sum()  # the runtime still works
    _tamper_replies(monkeypatch)
    with dlexec.DatalayerExecutor(1, **jupyter) as ex:
        error = ex.submit(np.negative, ARRAY).exception(timeout=60)
    assert isinstance(error, serialization.DigestMismatchError) and "altered" in str(error)


def test_local_kernels_check_digests_when_asked(monkeypatch):
    from dlexec.runtimes.local import LocalRuntime

    with dlexec.RuntimeService("integrity") as rt:
        assert rt.channel.digests is False  # same user, private sockets: nothing to protect against
        rt.channel.digests = True
        rt.set_variable("x", ARRAY)
        assert float(rt.get_variable("x").sum()) == float(ARRAY.sum())
        _tamper_requests(monkeypatch, LocalRuntime)
        with pytest.raises(dlexec.ExecutionError, match="altered"):
            rt.set_variable("x", ARRAY + 1)


# -- snapshots: ids and names are never paths ------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DLEXEC_SNAPSHOT_DIR", str(tmp_path / "store"))
    return tmp_path / "store"


def _frames(value) -> list:
    return [bytes(frame) for frame in serialization.dumps(value)]


BAD = ["../../etc", "..", ".", "/etc/passwd", "a/b", "a\\b", "", "x\x00y"]


@pytest.mark.parametrize("bad", BAD)
def test_snapshot_lookups_refuse_path_like_names(store, bad):
    with pytest.raises(ValueError, match="snapshot"):
        snapshots.get(bad)
    with pytest.raises(ValueError, match="snapshot"):
        snapshots.delete(bad)
    if bad:  # no name: a default one
        with pytest.raises(ValueError, match="snapshot"):
            snapshots.save(bad, None, "env", {"x": _frames(1)}, {})


@pytest.mark.parametrize("uid", ["../../etc", "0" * 31, "g" * 32, "/" + "0" * 31, "0" * 32 + "/.."])
def test_snapshot_files_only_for_valid_uids(store, uid):
    model = snapshots.RuntimeSnapshotModel(uid, "name", "description", "env")
    with pytest.raises(ValueError, match="snapshot id"):
        snapshots.load_variables(model)


def test_planted_snapshot_with_a_bad_uid_is_ignored(store):
    good = snapshots.save("good", None, "env", {"x": _frames(1)}, {})
    planted = store / "planted"
    planted.mkdir(parents=True)
    meta = {"uid": "../../etc", "name": "evil", "description": "", "environment": "env", "metadata": {}}
    (planted / "snapshot.json").write_text(json.dumps(meta))
    assert [snap.uid for snap in snapshots.list_snapshots()] == [good.uid]
    with pytest.raises(LookupError):
        snapshots.get("evil")


def test_snapshot_round_trip_and_safe_loading(store):
    model = snapshots.save("nightly-2024.05", "a description", "env", {"x": _frames([1, 2])}, {})
    assert snapshots.get(model.uid) == snapshots.get("nightly-2024.05") == model
    assert serialization.loads(snapshots.load_variables(model)["x"]) == [1, 2]
    # A variables file that would run code when loaded on this machine is refused.
    (store / model.uid / "variables.pickle").write_bytes(pickle.dumps({"x": [print]}))
    with pytest.raises(ValueError, match="snapshot"):
        snapshots.load_variables(model)
    assert snapshots.delete("nightly-2024.05") is True
    assert snapshots.list_snapshots() == []
