"""The manager's store: an indexed in-memory view of the cluster's objects with
transactions and watches, kept durable (and shared between managers) by a backend.

    store = await Store.open(open_backend("sqlite", state_dir))
    await store.update(lambda tx: tx.create(task), retries=3)
    for task in store.view().find("task", service_id=sid): ...
    async for item in store.watch({"task"}): ...   # Event..., Commit, Event..., Commit
"""

from .backends import (
    Backend,
    Change,
    ChangeBatch,
    MemoryBackend,
    Op,
    Record,
    SqliteBackend,
    open_backend,
)
from .errors import VersionConflict
from .model import KINDS, kind_of
from .store import Store
from .tx import ReadTx, WriteTx
from .watch import Commit, Event, Watch

__all__ = [
    "KINDS",
    "Backend",
    "Change",
    "ChangeBatch",
    "Commit",
    "Event",
    "MemoryBackend",
    "Op",
    "ReadTx",
    "Record",
    "SqliteBackend",
    "Store",
    "VersionConflict",
    "Watch",
    "WriteTx",
    "kind_of",
    "open_backend",
]
