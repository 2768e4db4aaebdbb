"""Transactions over a snapshot: reads, and writes checked against versions.

A `WriteTx` records its writes on top of the snapshot it started from; its reads see those
writes. Nothing reaches the memory view or the backend until the store commits the tx.

Policy on object ownership: `get`/`find`/`all` return the stored messages themselves, which
are shared by every view and must be treated as read-only (copy before changing). `create`
and `update` store a copy of what they are given, so the caller may keep using its message.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from pyswarm.common.errors import Conflict, InvalidArgument, NotFound

from .errors import VersionConflict
from .memory import Snapshot
from .model import INDEX_FIELDS, check_kind, index_values, kind_of, now_rfc3339


@dataclass(frozen=True)
class Write:
    """One object written by a tx: `obj` None deletes it; `expected_version` is the version
    the tx started from (0: it did not exist), checked again by the backend at commit."""

    kind: str
    id: str
    obj: Message | None
    expected_version: int


def _filters(kind: str, **given: str | None) -> dict[str, str]:
    filters = {name: value for name, value in given.items() if value is not None}
    unknown = set(filters) - set(INDEX_FIELDS[kind])
    if unknown:
        raise ValueError(f"{kind} is not indexed by {', '.join(sorted(unknown))}")
    return filters


def _matches(kind: str, obj: Message, filters: dict[str, str], prefix: str | None) -> bool:
    if prefix is not None and not obj.id.startswith(prefix):  # type: ignore[attr-defined]
        return False
    values = index_values(kind, obj)
    return all(values[name] == value for name, value in filters.items())


class ReadTx:
    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    @property
    def revision(self) -> int:
        """The store revision this view was taken at."""
        return self._snapshot.revision

    def get(self, kind: str, id: str) -> Message | None:
        check_kind(kind)
        return self._snapshot.get(kind, id)

    def find(
        self,
        kind: str,
        *,
        service_id: str | None = None,
        node_id: str | None = None,
        name: str | None = None,
        prefix: str | None = None,
    ) -> list[Message]:
        """Objects matching every given index key and, if given, whose id starts with prefix.

        Order is unspecified. An index key given as "" matches objects whose field is empty
        (`find("task", node_id="")`: tasks not placed yet).
        """
        check_kind(kind)
        filters = _filters(kind, service_id=service_id, node_id=node_id, name=name)
        return self._find_in_snapshot(kind, filters, prefix)

    def _find_in_snapshot(
        self, kind: str, filters: dict[str, str], prefix: str | None
    ) -> list[Message]:
        objects = self._snapshot.objects[kind]
        if not filters:
            found = objects.values()
            if prefix is None:
                return list(found)
            return [o for o in found if o.id.startswith(prefix)]  # type: ignore[attr-defined]
        sets = sorted(
            (self._snapshot.ids_by(kind, f, v) for f, v in filters.items()), key=len
        )
        ids = sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
        if prefix is not None:
            return [objects[i] for i in ids if i.startswith(prefix)]
        return [objects[i] for i in ids]

    def all(self, kind: str) -> list[Message]:
        check_kind(kind)
        return list(self._snapshot.objects[kind].values())


class WriteTx(ReadTx):
    def __init__(self, snapshot: Snapshot):
        super().__init__(snapshot)
        self._pending: dict[tuple[str, str], Message | None] = {}
        # The same writes by kind, so that a find in a large tx does not scan all of them.
        self._pending_by_kind: dict[str, dict[str, Message | None]] = {}
        self._expected: dict[tuple[str, str], int] = {}
        self._now = now_rfc3339()  # one timestamp for every write of the tx

    # ---- reads see the tx's own writes --------------------------------------------

    def get(self, kind: str, id: str) -> Message | None:
        check_kind(kind)
        key = (kind, id)
        if key in self._pending:
            return self._pending[key]
        return self._snapshot.get(kind, id)

    def find(
        self,
        kind: str,
        *,
        service_id: str | None = None,
        node_id: str | None = None,
        name: str | None = None,
        prefix: str | None = None,
    ) -> list[Message]:
        check_kind(kind)
        filters = _filters(kind, service_id=service_id, node_id=node_id, name=name)
        found = self._find_in_snapshot(kind, filters, prefix)
        mine = self._pending_by_kind.get(kind)
        if not mine:
            return found
        found = [o for o in found if o.id not in mine]  # type: ignore[attr-defined]
        found.extend(
            o for o in mine.values() if o is not None and _matches(kind, o, filters, prefix)
        )
        return found

    def all(self, kind: str) -> list[Message]:
        return self.find(kind)

    # ---- writes ---------------------------------------------------------------------

    def _record(self, kind: str, id: str, obj: Message | None) -> None:
        key = (kind, id)
        if key not in self._expected:
            base = self._snapshot.get(kind, id)
            self._expected[key] = base.meta.version if base is not None else 0  # type: ignore[attr-defined]
        self._pending[key] = obj
        self._pending_by_kind.setdefault(kind, {})[id] = obj

    def create(self, obj: Message) -> None:
        """Add a new object; Conflict if its id is taken. Sets meta.created_at/updated_at."""
        kind = kind_of(obj)
        id = obj.id  # type: ignore[attr-defined]
        if not id:
            raise InvalidArgument(f"a {kind} needs an id")
        if self.get(kind, id) is not None:
            raise Conflict(f"{kind} {id} already exists")
        stored = type(obj)()
        stored.CopyFrom(obj)
        meta = stored.meta  # type: ignore[attr-defined]
        meta.version = 0
        meta.created_at = meta.updated_at = self._now
        self._record(kind, id, stored)

    def update(self, obj: Message) -> None:
        """Replace an object; its meta.version must be the one stored (VersionConflict)."""
        kind = kind_of(obj)
        id = obj.id  # type: ignore[attr-defined]
        current = self.get(kind, id)
        if current is None:
            raise NotFound(f"{kind} {id} not found")
        have, want = obj.meta.version, current.meta.version  # type: ignore[attr-defined]
        if have != want:
            raise VersionConflict(
                f"{kind} {id} changed: the update was made from version {have}, "
                f"the store has {want}",
                kind=kind,
                id=id,
            )
        stored = type(obj)()
        stored.CopyFrom(obj)
        stored.meta.created_at = current.meta.created_at  # type: ignore[attr-defined]
        stored.meta.updated_at = self._now  # type: ignore[attr-defined]
        self._record(kind, id, stored)

    def delete(self, kind: str, id: str) -> None:
        """Remove an object; NotFound if there is none."""
        if self.get(kind, id) is None:
            raise NotFound(f"{kind} {id} not found")
        self._record(kind, id, None)

    def writes(self) -> list[Write]:
        """What to commit: one Write per object touched (a create then delete is none)."""
        return [
            Write(kind, id, obj, self._expected[(kind, id)])
            for (kind, id), obj in self._pending.items()
            if obj is not None or self._expected[(kind, id)] != 0
        ]
