"""The store: the memory view, its transactions and watchers, over a durable backend.

Write path (`update`): run fn on a WriteTx (synchronously, so it sees one stable view),
commit its writes to the backend in one atomic commit, stamp every written object with the
commit's revision as meta.version, publish the next snapshot, then the events and a Commit.
Writes from one Store are serialized by one lock.

Leader-only writes (`fenced=True`: the orchestrator, allocator, scheduler and dispatcher)
carry the store's `fence`, the current term of this manager's leadership, when its backend
is shared (etcd): without a term they fail at once with NotLeader, and a term that ended
makes them fail whole at the backend. Writes of the API (a service created, a node
drained) are not fenced: every manager serves the API, as every kube-apiserver does, and
compare-and-swap on versions keeps them safe.

Foreign writes (other managers sharing an etcd cluster) arrive through the backend's watch
and are applied under the same lock, so a watcher sees each commit's events together and
own and foreign commits never interleave. A change is applied only if it is newer than the
object in memory: the watch also carries this store's own commits, which are already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message

from pyswarm.common.errors import InvalidArgument

from ..metrics import Metrics
from .backends.base import Backend, ChangeBatch, Fence, Op
from .errors import NotLeader, VersionConflict
from .memory import Snapshot
from .model import KINDS, decode
from .tx import ReadTx, Write, WriteTx
from .watch import Event, Watch

T = TypeVar("T")
log = logging.getLogger(__name__)

# How long a retry after a conflict waits for the watch to bring the memory view up to the
# revision the conflict was seen at. Past it the retry runs anyway (and may conflict again).
CATCH_UP_TIMEOUT = 5.0
# Commits of one split write (Store.batch past etcd's --max-txn-ops) in flight at once. One
# after another, each waited for its answer and then for its turn on a busy event loop: at
# 1,000 nodes a scheduler pass of 10,000 tasks awaited 79 commits and was mostly waiting.
COMMITS_IN_FLIGHT = 8


def _first_failure(failures: list[BaseException]) -> BaseException:
    """What a split commit raises when chunks failed: the end of the term above all; then
    the conflict seen at the highest revision (the retry waits for the view to reach it);
    then the first failure."""
    for failure in failures:
        if isinstance(failure, NotLeader):
            return failure
    conflicts = [f for f in failures if isinstance(f, VersionConflict)]
    if conflicts:
        return max(conflicts, key=lambda c: c.revision)
    return failures[0]


def _event(kind: str, new: Message | None, old: Message | None) -> Event:
    if new is None:
        assert old is not None
        return Event("delete", kind, old, old)
    return Event("create" if old is None else "update", kind, new, old)


class Store:
    def __init__(self, backend: Backend, snapshot: Snapshot):
        self._backend = backend
        self._snapshot = snapshot
        self._lock = asyncio.Lock()
        self._watches: set[Watch] = set()
        self._watched = snapshot.revision  # foreign commits applied up to here
        self._progress = asyncio.Condition()
        self._watch_task: asyncio.Task[None] | None = None
        # (kind, id) -> revision of its delete, until the watch has passed that revision:
        # a late echo of an older write must not bring a deleted object back.
        self._tombstones: dict[tuple[str, str], int] = {}
        # The manager's counters live with the store every loop shares (manager/metrics.py).
        self.metrics = Metrics()
        # This manager's term as leader, while it leads (set by manager/leadership.py).
        self.fence: Fence | None = None

    @classmethod
    async def open(cls, backend: Backend) -> Store:
        """Load every object from the backend and follow other writers' commits."""
        revision, records = await backend.load()
        writes = [
            (kind, id, decode(kind, rec.data, rec.version))
            for kind, by_id in records.items()
            if kind in KINDS  # a newer manager's kinds are left alone
            for id, rec in by_id.items()
        ]
        store = cls(backend, Snapshot().apply(writes, revision))
        changes = backend.watch()
        if changes is not None:
            store._watch_task = asyncio.create_task(store._follow(changes))
        return store

    @property
    def shared(self) -> bool:
        """Whether other managers write this store too (etcd): leader-only writes are then
        fenced, and need a term."""
        return self._watch_task is not None

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def revision(self) -> int:
        return self._snapshot.revision

    def view(self) -> ReadTx:
        """A read-only view of the current snapshot; it never changes once taken."""
        return ReadTx(self._snapshot)

    def watch(self, kinds: set[str] | None = None) -> Watch:
        """Events of every commit from now on (only of `kinds`, if given), each commit's
        events followed by a Commit. Close the watch when done with it."""
        for kind in kinds or ():
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}")
        watch = Watch(kinds, self._watches.discard)
        self._watches.add(watch)
        return watch

    async def update(
        self, fn: Callable[[WriteTx], T], *, retries: int = 0, atomic: bool = True,
        fenced: bool = False,
    ) -> T:
        """Run fn on a write transaction and commit what it wrote; fn's result.

        If fn raises, nothing is written. On VersionConflict (from fn's own checks or from
        the backend) fn is run again, on fresh reads, up to `retries` times.

        atomic=False lets a write larger than the backend's per-commit limit (etcd's
        --max-txn-ops) go out as several commits, each atomic on its own, several in
        flight at once (COMMITS_IN_FLIGHT): if one of them conflicts, the others may stay
        committed. Only for writers that re-derive their work from the store (the
        orchestrator, the scheduler), never for user requests.
        """
        attempt = 0
        while True:
            try:
                async with self._lock:
                    tx = WriteTx(self._snapshot)
                    fence = self._term() if fenced else None
                    result = fn(tx)
                    await self._commit(tx.writes(), atomic, fence)
                    return result
            except VersionConflict as conflict:
                if attempt >= retries:
                    raise
                attempt += 1
                await self._catch_up(conflict.revision)

    async def batch(self, fn: Callable[[WriteTx], T], *, retries: int = 0,
                    fenced: bool = False) -> T:
        """`update(fn, atomic=False)`: for bulk writes that may exceed one backend commit."""
        return await self.update(fn, retries=retries, atomic=False, fenced=fenced)

    def _term(self) -> Fence | None:
        if not self.shared:
            return None  # the only manager: nothing to fence
        if self.fence is None:
            raise NotLeader("this manager is not the leader")
        return self.fence

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        for watch in list(self._watches):
            watch.close()
        await self._backend.close()

    # ---- own commits --------------------------------------------------------------------

    async def _commit(self, writes: list[Write], atomic: bool, fence: Fence | None) -> None:
        if not writes:
            return
        limit = self._backend.max_ops
        if limit is not None and fence is not None:
            limit -= 1  # the fence's compare is one of the commit's ops
        if limit is None or len(writes) <= limit:
            revision = await self._send(writes, fence)
            self._applied(writes, revision)
            return
        if atomic:
            raise InvalidArgument(
                f"{len(writes)} writes exceed the backend's limit of {limit} per atomic "
                "commit; split the work or use Store.batch()"
            )
        # Chunks are independent commits: COMMITS_IN_FLIGHT of them go out together, and
        # those that landed are applied in the order of their revisions. Once one has
        # failed, those not sent yet are not sent (as when they went one at a time): a
        # store that is down fails the write once, not once per chunk.
        chunks = [writes[i : i + limit] for i in range(0, len(writes), limit)]
        gate = asyncio.Semaphore(COMMITS_IN_FLIGHT)
        failures: list[BaseException] = []

        async def send(chunk: list[Write]) -> int | None:
            async with gate:
                if failures:
                    return None
                try:
                    return await self._send(chunk, fence)
                except Exception as exc:
                    failures.append(exc)
                    raise

        results = await asyncio.gather(*(send(c) for c in chunks), return_exceptions=True)
        landed = sorted(((r, c) for r, c in zip(results, chunks, strict=True)
                         if isinstance(r, int)), key=lambda rc: rc[0])
        for revision, chunk in landed:
            self._applied(chunk, revision)
        if failures:
            raise _first_failure(failures)

    async def _send(self, writes: list[Write], fence: Fence | None) -> int:
        """One commit of `writes` to the backend: its revision."""
        ops = [
            Op(w.kind, w.id, w.obj.SerializeToString() if w.obj else None, w.expected_version)
            for w in writes
        ]
        started = time.perf_counter()
        revision = await self._backend.commit(ops, fence)
        self.metrics.add("store_commit_seconds", time.perf_counter() - started)
        self.metrics.add("store_commits")
        self.metrics.add("store_writes", len(ops))
        return revision

    def _applied(self, writes: list[Write], revision: int) -> None:
        """`writes` landed at `revision`: stamp them and publish them."""
        for w in writes:
            if w.obj is not None:
                w.obj.meta.version = revision  # type: ignore[attr-defined]
        self._apply(((w.kind, w.id, w.obj) for w in writes), revision)

    # ---- foreign commits ----------------------------------------------------------------

    async def _follow(self, batches: AsyncIterator[ChangeBatch]) -> None:
        try:
            async for batch in batches:
                async with self._lock:
                    self._apply_foreign(batch)
                async with self._progress:
                    self._watched = max(self._watched, batch.revision)
                    self._progress.notify_all()
                if self._tombstones:
                    self._tombstones = {k: r for k, r in self._tombstones.items()
                                        if r > self._watched}
        except asyncio.CancelledError:
            raise
        except Exception:
            # The backend's watch retries what it can; past that this view is stale.
            log.exception("store: the backend's watch failed; the memory view is now stale")

    def _apply_foreign(self, batch: ChangeBatch) -> None:
        writes: list[tuple[str, str, Message | None]] = []
        for change in batch.changes:
            if change.kind not in KINDS:
                continue
            old = self._snapshot.get(change.kind, change.id)
            if old is not None and old.meta.version >= change.version:  # type: ignore[attr-defined]
                continue  # our own commit, or older than what we have
            if old is None and self._tombstones.get((change.kind, change.id), -1) >= change.version:
                continue  # older than our delete of it
            if change.data is None:
                if old is not None:
                    writes.append((change.kind, change.id, None))
                continue
            new = decode(change.kind, change.data, change.version)
            writes.append((change.kind, change.id, new))
        if writes:
            self._apply(writes, batch.revision)

    async def _catch_up(self, revision: int) -> None:
        """Wait until foreign commits up to `revision` are in memory (when there are any)."""
        if self._watch_task is None or revision <= self._watched:
            return
        await self._backend.request_progress()
        async with self._progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._watched >= revision),
                    CATCH_UP_TIMEOUT,
                )

    # ---- both ---------------------------------------------------------------------------

    def _apply(self, writes: Iterable[tuple[str, str, Message | None]], revision: int) -> None:
        before = self._snapshot
        writes = list(writes)
        self._snapshot = before.apply(writes, revision)
        if self._watch_task is not None:
            for kind, id, new in writes:
                if new is None:
                    self._tombstones[(kind, id)] = revision
                else:
                    self._tombstones.pop((kind, id), None)
        events = [_event(kind, new, before.get(kind, id)) for kind, id, new in writes]
        for watch in list(self._watches):
            watch.publish(events, revision)
