"""Snapshots of a runtime's variables, kept on this machine for local runtimes.

A snapshot is a folder ``<store>/<uid>/`` with ``snapshot.json`` (what it is) and
``variables.pickle`` (each variable as the dill frames the kernel sent). The frames are
sent back to a new kernel as they are, so restoring never needs the variables' classes
on the client. The store is ``$DLEXEC_SNAPSHOT_DIR``, else the user data folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
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


def save(name: str | None, description: str | None, environment: str, variables: dict[str, list],
         skipped: dict[str, str]) -> RuntimeSnapshotModel:
    """Write a snapshot; ``variables`` maps names to serialized frames."""
    uid = uuid.uuid4().hex
    name = name or f"snapshot-{uid[:12]}"
    folder = store_dir() / uid
    folder.mkdir(parents=True, exist_ok=False, mode=0o700)
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
            found.append(RuntimeSnapshotModel(**json.loads(meta.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda snap: snap.metadata.get("created_at", 0))


def get(uid_or_name: str) -> RuntimeSnapshotModel:
    """A snapshot by uid, or by name (the newest of that name)."""
    matches = [snap for snap in list_snapshots() if uid_or_name in (snap.uid, snap.name)]
    if not matches:
        known = ", ".join(snap.name for snap in list_snapshots()) or "none"
        raise LookupError(f"no local snapshot {uid_or_name!r} in {store_dir()} (known: {known})")
    return matches[-1]


def load_variables(snapshot: RuntimeSnapshotModel) -> dict[str, list[bytes]]:
    """The serialized variables of a snapshot, ready for the worker's ``set`` request."""
    with open(store_dir() / snapshot.uid / "variables.pickle", "rb") as data:
        return pickle.load(data)


def delete(uid_or_name: str) -> bool:
    """Delete a snapshot; False if there was none."""
    try:
        snapshot = get(uid_or_name)
    except LookupError:
        return False
    shutil.rmtree(store_dir() / snapshot.uid, ignore_errors=True)
    return True
