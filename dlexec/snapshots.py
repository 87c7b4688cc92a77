"""Snapshots of a runtime's variables, kept on this machine for local runtimes.

A snapshot is a folder ``<store>/<uid>/`` with ``snapshot.json`` (what it is) and
``variables.pickle`` (each variable as the dill frames the kernel sent). The frames are
sent back to a new kernel as they are, so restoring never needs the variables' classes
on the client. The store is ``$DLEXEC_SNAPSHOT_DIR``, else the user data folder.

Ids and names come from users and command lines, so they are checked before any file
operation: a folder is ``store_dir() / uid`` only for a uid of 32 hex digits, a name is
only ever compared (never a path), and ``variables.pickle`` is read with an unpickler that
refuses every class and function (it holds only names and bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import time
import uuid
from pathlib import Path


@dataclasses.dataclass
class RuntimeSnapshotModel:
    """A snapshot, as the seed API returns it."""

    uid: str
    name: str
    description: str
    environment: str
    metadata: dict = dataclasses.field(default_factory=dict)


def store_dir() -> Path:
    """Where local snapshots live."""
    configured = os.environ.get("DLEXEC_SNAPSHOT_DIR")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("dlexec")) / "snapshots"


_UID = re.compile(r"[0-9a-f]{32}")


def check_uid(uid) -> str:
    """``uid`` if it is a local snapshot id (32 lowercase hex digits); ValueError otherwise."""
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise ValueError(f"not a local snapshot id: {uid!r} (ids are 32 hex digits, as `dlexec snapshots ls` shows)")
    return uid


def check_name(name) -> str:
    """``name`` if it can name a snapshot: not empty, no path separators, no control characters."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or any(char in name for char in "/\\")
        or not name.isprintable()
        or len(name) > 255
    ):
        raise ValueError(
            f"not a valid snapshot name or id: {name!r}; a snapshot name is up to 255 printable characters "
            "without '/' or '\\' (see `dlexec snapshots ls`)"
        )
    return name


def _folder(uid: str) -> Path:
    """The folder of a snapshot: only ever for a checked uid."""
    return store_dir() / check_uid(uid)


def save(name: str | None, description: str | None, environment: str, variables: dict[str, list],
         skipped: dict[str, str]) -> RuntimeSnapshotModel:
    """Write a snapshot; ``variables`` maps names to serialized frames."""
    uid = uuid.uuid4().hex
    name = check_name(name) if name else f"snapshot-{uid[:12]}"
    store_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = _folder(uid)
    folder.mkdir(exist_ok=False, mode=0o700)
    with open(folder / "variables.pickle", "wb") as out:
        pickle.dump({key: [bytes(frame) for frame in frames] for key, frames in variables.items()}, out,
                    protocol=5)
    metadata = {
        "created_at": time.time(),
        "variables": sorted(variables),
        "skipped": skipped,
        "format": "dlexec-local-1",
    }
    model = RuntimeSnapshotModel(uid, name, description or name, environment, metadata)
    (folder / "snapshot.json").write_text(json.dumps(dataclasses.asdict(model), indent=2))
    return model


def list_snapshots() -> list[RuntimeSnapshotModel]:
    """Every local snapshot, oldest first."""
    found = []
    root = store_dir()
    if not root.is_dir():
        return found
    for meta in root.glob("*/snapshot.json"):
        try:
            snapshot = RuntimeSnapshotModel(**json.loads(meta.read_text()))
            if check_uid(snapshot.uid) == meta.parent.name:  # not a file planted to point elsewhere
                found.append(snapshot)
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda snap: snap.metadata.get("created_at", 0))


def get(uid_or_name: str) -> RuntimeSnapshotModel:
    """A snapshot by uid, or by name (the newest of that name); ValueError for neither."""
    if not (isinstance(uid_or_name, str) and _UID.fullmatch(uid_or_name)):
        check_name(uid_or_name)
    matches = [snap for snap in list_snapshots() if uid_or_name in (snap.uid, snap.name)]
    if not matches:
        known = ", ".join(snap.name for snap in list_snapshots()) or "none"
        raise LookupError(f"no local snapshot {uid_or_name!r} in {store_dir()} (known: {known})")
    return matches[-1]


def load_variables(snapshot: RuntimeSnapshotModel) -> dict[str, list[bytes]]:
    """The serialized variables of a snapshot, ready for the worker's ``set`` request."""
    with open(_folder(snapshot.uid) / "variables.pickle", "rb") as data:
        try:
            variables = _DataUnpickler(data).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise ValueError(f"snapshot {snapshot.uid} is damaged or was altered, so it was not loaded: {exc}") from exc
    if not isinstance(variables, dict):
        raise ValueError(f"snapshot {snapshot.uid} is damaged: its variables file holds a {type(variables).__name__}")
    return variables


class _DataUnpickler(pickle.Unpickler):
    """Reads names and bytes only: a variables file cannot run code on this machine."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"a snapshot's variables file may not refer to {module}.{name}")


def delete(uid_or_name: str) -> bool:
    """Delete a snapshot; False if there was none."""
    try:
        snapshot = get(uid_or_name)
    except LookupError:
        return False
    shutil.rmtree(_folder(snapshot.uid), ignore_errors=True)
    return True
