"""The manager's store: an indexed in-memory view of the cluster's objects with
transactions and watches, kept durable (and shared between managers) by a backend.

    store = await Store.open(open_backend("sqlite", state_dir))
    await store.update(lambda tx: tx.create(task), retries=3)
    for task in store.view().find("task", service_id=sid): ...
    async for item in store.watch({"task"}): ...   # Event..., Commit, Event..., Commit

Ids kept as keys (here and in the loops' own maps) are interned with sys.intern: protobuf
makes a new str each time a string field is read, so every map of task ids held a copy of
each, about 0.7 MB per map at 10,000 tasks (tracemalloc, bench/memprobe).
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
