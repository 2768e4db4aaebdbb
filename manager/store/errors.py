"""The store's own errors: a write lost an optimistic-locking race, or a leader-only write
came from a manager that does not lead."""

from __future__ import annotations

from pyswarm.common.errors import Conflict, Unavailable


class VersionConflict(Conflict):
    """A write expected an object at one version and found another (or found it gone/present).

    `revision` is the backend revision at which the conflict was seen (0 when unknown): a
    store sharing its backend with other writers waits until its memory view has caught up to
    it before re-running a transaction.
    """

    def __init__(self, message: str, *, kind: str = "", id: str = "", revision: int = 0):
        super().__init__(message)
        self.kind = kind
        self.id = id
        self.revision = revision


class NotLeader(Unavailable):
    """A leader-only write (the orchestrator's, scheduler's, allocator's, dispatcher's) from
    a manager that is not the leader, or whose leadership ended before the write landed."""


class StoreUnavailable(Unavailable):
    """The shared store could not be reached (etcd without a majority, or unreachable)."""
