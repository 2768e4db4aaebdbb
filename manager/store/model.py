"""The kinds of object the store holds and the index keys each one is found by.

One table (`KINDS`) names every kind; one function (`index_values`) says which fields a kind
is indexed by, so the memory view's indexes and a transaction's view of its own writes agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message

from pyswarm.proto.objects_pb2 import Cluster, Config, Network, Node, Secret, Service, Task

KINDS: dict[str, type[Message]] = {
    "node": Node,
    "service": Service,
    "task": Task,
    "network": Network,
    "secret": Secret,
    "config": Config,
    # One object: the root CA and join tokens every manager admits nodes with.
    "cluster": Cluster,
}
_KIND_OF_TYPE: dict[type[Message], str] = {cls: kind for kind, cls in KINDS.items()}

# Index fields per kind. Tasks are looked up by their service and their node (the
# orchestrator and the dispatcher); everything else by name (servicers resolve names).
INDEX_FIELDS: dict[str, tuple[str, ...]] = {
    kind: (("service_id", "node_id") if kind == "task" else ("name",)) for kind in KINDS
}


def kind_of(obj: Message) -> str:
    """The store kind of a message ("task" for a Task...); TypeError for anything else."""
    try:
        return _KIND_OF_TYPE[type(obj)]
    except KeyError:
        raise TypeError(f"not a stored object: {type(obj).__name__}") from None


def check_kind(kind: str) -> type[Message]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}") from None


def index_values(kind: str, obj: Message) -> dict[str, str]:
    """The index keys of one object. A node's name is its hostname (as `docker node ls`)."""
    if kind == "task":
        return {"service_id": obj.service_id, "node_id": obj.node_id}  # type: ignore[attr-defined]
    if kind == "node":
        return {"name": obj.description.hostname}  # type: ignore[attr-defined]
    return {"name": obj.spec.name}  # type: ignore[attr-defined]


def now_rfc3339() -> str:
    """The current time as RFC 3339 in UTC with milliseconds ("2024-05-01T12:00:00.000Z")."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode(kind: str, data: bytes, version: int) -> Message:
    """Parse a stored object and stamp it with the version its backend reports.

    Backends store the bytes the store gives them; the version of the last write is the
    backend's own bookkeeping (sqlite's revision column, etcd's mod_revision), because it is
    only known once the write has committed.
    """
    obj = KINDS[kind]()
    obj.ParseFromString(data)
    obj.meta.version = version  # type: ignore[attr-defined]
    return obj
