"""Snapshots of the Datalayer API, under ``runtime-snapshots`` (SDK 1.1.x) or ``sandbox-snapshots``
(later versions): a 404 of one switches to the other."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

from ..errors import DatalayerError, NotFoundError, UnknownNameError
from .models import Snapshot
from .transport import Transport

#: The snapshots collection: its SDK 1.1.x name first, then its later one (tried on a 404).
SNAPSHOT_PATHS = ("runtime-snapshots", "sandbox-snapshots")


class SnapshotsAPI(Transport):
    """The snapshots part of :class:`~dlexec.datalayer.DatalayerClient`; ``_snapshot_path`` is the
    collection's current name."""

    _snapshot_path: str

    def create_snapshot(self, pod_name: str, name: str | None = None, description: str | None = None,
                        stop: bool = True, *, poll_attempts: int = 10, poll_interval: float = 1.0) -> Snapshot:
        """Snapshot a runtime (``stop``: the server stops it afterwards) and return the new snapshot.

        Creation may be asynchronous: the snapshot is looked up in the list (by the uid the server
        answered, else by name) up to ``poll_attempts`` times, ``poll_interval`` seconds apart.
        """
        name = name or f"snapshot-{uuid.uuid4().hex[:12]}"
        body = {"pod_name": pod_name, "name": name, "description": description or name, "stop": bool(stop)}
        created = self._snapshots("POST", "", json=body).get("snapshot") or {}
        url = self._run(f"/{self._snapshot_path}")
        uid = created.get("uid")
        for attempt in range(max(1, poll_attempts)):
            matches = [s for s in self.list_snapshots() if (s.uid == uid if uid else s.name == name)]
            if matches:
                return matches[-1]
            if attempt + 1 < poll_attempts:
                time.sleep(poll_interval)
        raise DatalayerError(f"snapshot {name!r} of {pod_name} was accepted but is not listed after "
                             f"{poll_attempts} attempts", method="POST", url=url)

    def list_snapshots(self) -> list[Snapshot]:
        return [Snapshot.from_json(s) for s in self._snapshots("GET", "").get("snapshots") or []]

    def get_snapshot(self, uid: str) -> Snapshot:
        """One snapshot by uid; :class:`NotFoundError` if there is none."""
        data = self._snapshots("GET", f"/{quote(uid, safe='')}").get("snapshot")
        if not isinstance(data, dict):
            raise DatalayerError("the answer has no 'snapshot'", status=200, method="GET",
                                 url=self._run(f"/{self._snapshot_path}/{quote(uid, safe='')}"))
        return Snapshot.from_json(data)

    def delete_snapshot(self, uid_or_name: str) -> bool:
        """Delete a snapshot given its uid or name: True if deleted, False if it was already gone."""
        uid = self._find_snapshot(uid_or_name).uid
        try:
            self._snapshots("DELETE", f"/{quote(uid, safe='')}")
        except NotFoundError:
            return False
        return True

    def _snapshots(self, method: str, suffix: str, json: dict | None = None) -> dict:
        """A request to the snapshots collection (``suffix``: "" or "/uid"). On a 404, if the
        collection itself is missing under the current name, the other name is used from now on."""
        for attempt in range(2):
            url = self._run(f"/{self._snapshot_path}{suffix}")
            try:
                if method == "GET":
                    return self._get(url)
                if method == "DELETE":
                    return self._delete(url)
                return self._request(method, url, json=json)
            except NotFoundError:
                if attempt or not self._switch_snapshot_path(probe=bool(suffix) or method != "GET"):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _switch_snapshot_path(self, probe: bool) -> bool:
        """After a 404: whether the snapshots collection is missing under its current name (then
        switch to the other). ``probe``: the 404 may be the item's (a snapshot or pod unknown), so
        list the collection to tell."""
        if probe:
            try:
                self._get(self._run(f"/{self._snapshot_path}"))
                return False  # the collection is there: the 404 was real
            except NotFoundError:
                pass
        current = self._snapshot_path
        self._snapshot_path = next(p for p in SNAPSHOT_PATHS if p != current)
        return True

    def _find_snapshot(self, uid_or_name: str) -> Snapshot:
        """A snapshot by uid, else by name (the last listed of that name)."""
        snapshots = self.list_snapshots()
        matches = ([s for s in snapshots if s.uid == uid_or_name]
                   or [s for s in snapshots if s.name == uid_or_name])
        if matches:
            return matches[-1]
        valid = ", ".join(f"{s.name} ({s.uid})" for s in snapshots) or "none"
        raise UnknownNameError(f"unknown snapshot {uid_or_name!r}; available: {valid}")
