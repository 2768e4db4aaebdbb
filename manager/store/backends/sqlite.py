"""The embedded default backend: one SQLite file in the manager's state folder.

Policy:
- WAL mode: readers never block the writer, and a commit appends to the log instead of
  rewriting pages in place.
- synchronous=FULL: a commit is fsynced before `commit()` returns. With NORMAL a power cut
  can lose the last acknowledged commits (the database stays consistent, but the cluster
  would forget tasks it already told workers about). The store batches its writes, so the
  fsync per commit is paid rarely.
- Versions are compared inside BEGIN IMMEDIATE, which takes the write lock first, so the
  check and the write are one atomic step even if another process opens the file.
- sqlite3 blocks: every call runs on one dedicated thread that owns the connection, never
  on the event loop.
- The file holds secrets: it is created 0600.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .base import ChangeBatch, Fence, Op, Record
from .memory import check_op

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,   -- revision of the commit that last wrote it
    data    BLOB    NOT NULL,   -- the serialized protobuf message
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revision (
    only     INTEGER PRIMARY KEY CHECK (only = 0),
    revision INTEGER NOT NULL   -- the revision of the last commit
);
INSERT OR IGNORE INTO revision VALUES (0, 0);
"""


class SqliteBackend:
    max_ops: int | None = None

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._connect()
        return fn(self._db)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    async def load(self) -> tuple[int, dict[str, dict[str, Record]]]:
        def load(db: sqlite3.Connection) -> tuple[int, dict[str, dict[str, Record]]]:
            db.execute("BEGIN")  # one read transaction: the rows match the revision
            try:
                (revision,) = db.execute("SELECT revision FROM revision").fetchone()
                objects: dict[str, dict[str, Record]] = {}
                for kind, id, version, data in db.execute(
                    "SELECT kind, id, version, data FROM objects"
                ):
                    objects.setdefault(kind, {})[id] = Record(data, version)
            finally:
                db.execute("COMMIT")
            return revision, objects

        return await self._run(load)

    async def commit(self, ops: list[Op], fence: Fence | None = None) -> int:
        def commit(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                (revision,) = db.execute("SELECT revision FROM revision").fetchone()
                for op in ops:
                    row = db.execute(
                        "SELECT version FROM objects WHERE kind = ? AND id = ?", (op.kind, op.id)
                    ).fetchone()
                    check_op(op, row[0] if row else 0, revision)
                revision += 1
                db.executemany(
                    "INSERT OR REPLACE INTO objects (kind, id, version, data) VALUES (?,?,?,?)",
                    [(op.kind, op.id, revision, op.data) for op in ops if op.data is not None],
                )
                db.executemany(
                    "DELETE FROM objects WHERE kind = ? AND id = ?",
                    [(op.kind, op.id) for op in ops if op.data is None],
                )
                db.execute("UPDATE revision SET revision = ?", (revision,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return revision

        return await self._run(commit)

    def watch(self) -> AsyncIterator[ChangeBatch] | None:
        return None  # one manager owns the file

    async def request_progress(self) -> None:
        return None

    async def close(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            await self._run(close)
            self._db = None
        self._thread.shutdown(wait=True)
