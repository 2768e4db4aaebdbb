"""The interface between the store and what makes its writes durable (and shared).

A backend keeps, per object, the serialized message and the version of its last write (the
backend revision of the commit that wrote it). Revisions only grow; a commit is atomic and
checks every object's expected version (compare-and-swap per key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class Op:
    """Write `data` (None: delete) to kind/id if the object's version is `expected_version`
    (0: the object must not exist)."""

    kind: str
    id: str
    data: bytes | None
    expected_version: int


@dataclass(frozen=True)
class Fence:
    """A leader's term: commit only while the election `key` is the one created at
    `revision`. A deposed leader's commit fails whole (NotLeader), so its in-flight work
    can never land after another manager has taken over, however late it arrives."""

    key: bytes
    revision: int


class Record(NamedTuple):
    data: bytes
    version: int


@dataclass(frozen=True)
class Change:
    """An object written by another writer: its new bytes (None: deleted) at `version`."""

    kind: str
    id: str
    data: bytes | None
    version: int


@dataclass(frozen=True)
class ChangeBatch:
    """Everything one foreign commit changed, or (no changes) a progress mark: every
    commit up to `revision` has been delivered."""

    revision: int
    changes: list[Change]


class Backend(Protocol):
    # The most ops one commit may carry (etcd's --max-txn-ops); None: no limit.
    max_ops: int | None

    async def load(self) -> tuple[int, dict[str, dict[str, Record]]]:
        """The current revision and every object (kind -> id -> record), read at that
        revision."""
        ...

    async def commit(self, ops: list[Op], fence: Fence | None = None) -> int:
        """Apply all ops atomically or none (VersionConflict naming the first object that
        failed its check; NotLeader if a `fence` was given and no longer holds); the
        commit's revision, which is every written object's version. Backends with one
        writer (sqlite, memory) have nothing to fence and ignore it."""
        ...

    def watch(self) -> AsyncIterator[ChangeBatch] | None:
        """Commits by other writers sharing this backend, from just after the loaded revision
        on, in revision order; None when nobody else can write (sqlite, memory)."""
        ...

    async def request_progress(self) -> None:
        """Ask the watch to send a progress mark soon (no-op without a watch)."""
        ...

    async def close(self) -> None: ...
