"""The Datalayer API's records, in the SDK's shapes: environments, runtimes, snapshots."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..snapshots import RuntimeSnapshotModel


@dataclasses.dataclass
class Environment:
    """An environment runtimes are created from; ``burning_rate`` is in credits per second."""

    name: str
    title: str = ""
    description: str = ""
    language: str = ""
    burning_rate: float = 0.0
    owner: str = ""
    visibility: str = ""
    resources: Any = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> Environment:
        return cls(name=data.get("name", ""), title=data.get("title") or "", description=data.get("description") or "",
                   language=data.get("language") or "", burning_rate=_float(data.get("burning_rate")) or 0.0,
                   owner=data.get("owner") or "", visibility=data.get("visibility") or "",
                   resources=data.get("resources"), raw=data)


@dataclasses.dataclass
class RuntimeInfo:
    """A live runtime. ``ingress`` is its Jupyter Server's base URL and ``token`` that server's
    token (not the Datalayer API key); ``started_at``/``expired_at`` are epoch seconds."""

    pod_name: str
    uid: str = ""
    given_name: str = ""
    environment_name: str = ""
    environment_title: str = ""
    type: str = ""
    burning_rate: float | None = None
    ingress: str = ""
    token: str = dataclasses.field(default="", repr=False)
    reservation_id: str = ""
    started_at: float | None = None
    expired_at: float | None = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> RuntimeInfo:
        text = {key: str(data.get(key) or "") for key in (
            "uid", "given_name", "environment_name", "environment_title", "type", "ingress", "token",
            "reservation_id")}
        return cls(pod_name=data.get("pod_name", ""), burning_rate=_float(data.get("burning_rate")),
                   started_at=_float(data.get("started_at")), expired_at=_float(data.get("expired_at")),
                   raw=data, **text)


@dataclasses.dataclass
class Snapshot:
    """A runtime snapshot stored by Datalayer. ``uid`` identifies it: names may repeat (given a
    name, the client takes the last snapshot listed with it); ``raw`` is the server's JSON."""

    uid: str
    name: str = ""
    description: str = ""
    environment: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)
    status: str = ""
    size: Any = None
    updated_at: Any = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> Snapshot:
        return cls(uid=data.get("uid", ""), name=data.get("name") or "", description=data.get("description") or "",
                   environment=data.get("environment") or "", metadata=data.get("metadata") or {},
                   status=data.get("status") or "", size=data.get("size"), updated_at=data.get("updated_at"),
                   raw=data)

    def to_model(self) -> RuntimeSnapshotModel:
        """The same snapshot as a :class:`dlexec.RuntimeSnapshotModel` (the seed API's type)."""
        return RuntimeSnapshotModel(self.uid, self.name, self.description, self.environment, dict(self.metadata))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None

