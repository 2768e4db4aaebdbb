"""The store's behaviour, run over every backend: memory, sqlite and a real etcd server.

Tests are plain functions driving `asyncio.run` (no pytest-asyncio): each builds its stores
inside its own event loop from a `place` — a factory of backend handles on one storage
(the same dict, the same sqlite file, the same etcd key prefix).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyswarm.common.errors import Conflict, InvalidArgument, NotFound
from pyswarm.manager.store import (
    Backend,
    Commit,
    Event,
    MemoryBackend,
    Op,
    SqliteBackend,
    Store,
    VersionConflict,
    Watch,
    WriteTx,
    open_backend,
)
from pyswarm.manager.store.store import COMMITS_IN_FLIGHT
from pyswarm.proto.objects_pb2 import Cluster, Node, Service, Task
from tests.etcd_fixtures import MAX_TXN_OPS, etcd_server  # noqa: F401 - a fixture


@dataclass
class Place:
    name: str
    backend: Callable[[], Backend]  # a new handle on the same storage
    shared: bool  # other handles' writes reach a store through its watch (etcd)


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "memory":
        mem = MemoryBackend()
        yield Place("memory", lambda: mem, False)
    elif request.param == "sqlite":
        yield Place("sqlite", lambda: SqliteBackend(tmp_path / "manager.db"), False)
    else:
        server = request.getfixturevalue("etcd_server")
        from pyswarm.manager.store.backends.etcd import EtcdBackend

        prefix = f"/pyswarm-test/{uuid.uuid4().hex}/"
        yield Place(
            "etcd",
            lambda: EtcdBackend([server.endpoint], prefix=prefix, max_txn_ops=MAX_TXN_OPS),
            True,
        )


def run(body: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(body, 60))


def task(id: str, service_id: str = "svc1", node_id: str = "", slot: int = 1) -> Task:
    t = Task(id=id, service_id=service_id, node_id=node_id, slot=slot)
    t.spec.container.image = "busybox"
    return t


def service(id: str, name: str) -> Service:
    s = Service(id=id)
    s.spec.name = name
    return s


def node(id: str, hostname: str) -> Node:
    n = Node(id=id)
    n.description.hostname = hostname
    return n


def copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


async def drain(watch: Watch, until_commits: int) -> list[Event | Commit]:
    """Read the watch until `until_commits` Commit markers have arrived."""
    seen: list[Event | Commit] = []
    commits = 0
    while commits < until_commits:
        item = await asyncio.wait_for(watch.__anext__(), 10)
        seen.append(item)
        commits += isinstance(item, Commit)
    return seen


# ---- CRUD and indexes ---------------------------------------------------------------------


def test_create_get_update_delete(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        await store.update(lambda tx: tx.create(service("s1", "web")))
        got = store.view().get("service", "s1")
        assert isinstance(got, Service) and got.spec.name == "web"
        assert got.meta.version == store.revision > 0
        assert got.meta.created_at.endswith("Z") and got.meta.updated_at == got.meta.created_at

        with pytest.raises(Conflict):
            await store.update(lambda tx: tx.create(service("s1", "again")))

        changed = copy(got)
        changed.spec.name = "www"
        await store.update(lambda tx: tx.update(changed))
        now = store.view().get("service", "s1")
        assert now is not None and now.spec.name == "www"
        assert now.meta.version > got.meta.version
        assert now.meta.created_at == got.meta.created_at
        assert got.spec.name == "web", "an old view's object never changes"

        await store.update(lambda tx: tx.delete("service", "s1"))
        assert store.view().get("service", "s1") is None
        with pytest.raises(NotFound):
            await store.update(lambda tx: tx.delete("service", "s1"))
        await store.close()

    run(body())


def test_the_cluster_object_round_trips_and_is_found_by_name(place: Place) -> None:
    """The cluster kind (root CA, join tokens) is kept and shared like every other kind."""

    async def body() -> None:
        store = await Store.open(place.backend())
        cluster = Cluster(id="c1")
        cluster.spec.name = "default"
        cluster.root_ca.ca_cert = b"-----BEGIN CERTIFICATE-----"
        cluster.join_tokens.worker = "PSWMTKN-1-w"
        await store.update(lambda tx: tx.create(cluster))
        other = await Store.open(place.backend())
        (found,) = other.view().find("cluster", name="default")
        assert isinstance(found, Cluster) and found.join_tokens.worker == "PSWMTKN-1-w"
        assert found.root_ca.ca_cert == cluster.root_ca.ca_cert
        await other.close()
        await store.close()

    run(body())


def test_find_by_indexes(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())

        def fill(tx: WriteTx) -> None:
            tx.create(service("s1", "web"))
            tx.create(service("s2", "db"))
            tx.create(node("n1", "host-a"))
            tx.create(task("t1", "s1", "n1"))
            tx.create(task("t2", "s1", ""))
            tx.create(task("t3", "s2", "n1"))
            tx.create(task("x4", "s2", ""))

        await store.update(fill)
        view = store.view()

        def ids(objs: list[Any]) -> list[str]:
            return sorted(o.id for o in objs)

        assert ids(view.find("task", service_id="s1")) == ["t1", "t2"]
        assert ids(view.find("task", node_id="n1")) == ["t1", "t3"]
        assert ids(view.find("task", node_id="")) == ["t2", "x4"]
        assert ids(view.find("task", service_id="s2", node_id="n1")) == ["t3"]
        assert ids(view.find("task", prefix="t")) == ["t1", "t2", "t3"]
        assert ids(view.find("task", service_id="s2", prefix="x")) == ["x4"]
        assert ids(view.find("service", name="db")) == ["s2"]
        assert ids(view.find("node", name="host-a")) == ["n1"]
        assert ids(view.find("task", service_id="nope")) == []
        assert ids(view.all("task")) == ["t1", "t2", "t3", "x4"]
        with pytest.raises(ValueError):
            view.find("service", node_id="n1")

        def move(tx: WriteTx) -> list[str]:
            t = copy(tx.get("task", "t2"))
            t.node_id = "n1"
            tx.update(t)
            tx.delete("task", "t1")
            tx.create(task("t5", "s1", "n1"))
            return ids(tx.find("task", node_id="n1"))  # the tx sees its own writes

        assert await store.update(move) == ["t2", "t3", "t5"]
        assert ids(store.view().find("task", node_id="n1")) == ["t2", "t3", "t5"]
        assert ids(store.view().find("task", node_id="")) == ["x4"]
        assert ids(view.find("task", node_id="n1")) == ["t1", "t3"], "a view is a snapshot"
        await store.close()

    run(body())


# ---- optimistic locking -------------------------------------------------------------------


def test_stale_update_conflicts_and_retries_rerun_fn(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        await store.update(lambda tx: tx.create(task("t1")))
        stale = copy(store.view().get("task", "t1"))
        fresh = copy(stale)
        fresh.status.message = "first"
        await store.update(lambda tx: tx.update(fresh))

        stale.status.message = "lost"
        with pytest.raises(VersionConflict):
            await store.update(lambda tx: tx.update(stale))

        calls: list[int] = []

        def bump(tx: WriteTx) -> None:
            calls.append(1)
            t = stale if len(calls) == 1 else copy(tx.get("task", "t1"))
            t.status.message = f"attempt {len(calls)}"
            tx.update(t)

        await store.update(bump, retries=2)
        assert len(calls) == 2
        got = store.view().get("task", "t1")
        assert got is not None and got.status.message == "attempt 2"
        await store.close()

    run(body())


def test_failing_fn_writes_nothing(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        watch = store.watch()
        revision = store.revision

        def half(tx: WriteTx) -> None:
            tx.create(task("t1"))
            tx.create(task("t2"))
            raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError):
            await store.update(half)
        assert store.view().all("task") == []
        assert store.revision == revision and watch.pending() == 0
        await store.close()
        reopened = await Store.open(place.backend())
        assert reopened.view().all("task") == []
        await reopened.close()

    run(body())


def test_backend_commit_is_all_or_nothing(place: Place) -> None:
    async def body() -> None:
        backend = place.backend()
        await backend.load()
        rev = await backend.commit([Op("task", "a", b"", 0), Op("task", "b", b"", 0)])
        with pytest.raises(VersionConflict) as caught:
            await backend.commit(
                [Op("task", "a", task("a").SerializeToString(), rev), Op("task", "b", b"", 0)]
            )
        assert caught.value.kind == "task" and caught.value.id == "b"
        _, objects = await backend.load()
        assert objects["task"]["a"].version == rev and objects["task"]["a"].data == b""
        await backend.close()

    run(body())


def test_multi_object_commit_conflicting_on_one_writes_none(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        await store.update(lambda tx: [tx.create(task("t1")), tx.create(task("t2"))])
        stale2 = copy(store.view().get("task", "t2"))
        # Another writer changes t2 behind the store's back (sqlite: a second handle on the
        # file; etcd: another client). The store may or may not have seen it yet: either
        # its own check or the backend's compare-and-swap must refuse the whole commit.
        other = place.backend()
        await other.load()
        changed = copy(stale2)
        changed.status.message = "other"
        await other.commit([Op("task", "t2", changed.SerializeToString(), stale2.meta.version)])
        await other.close()

        def both(tx: WriteTx) -> None:
            t1 = copy(tx.get("task", "t1"))
            t1.status.message = "mine"
            tx.update(t1)
            stale2.status.message = "mine"
            tx.update(stale2)

        with pytest.raises(VersionConflict):
            await store.update(both)
        t1 = store.view().get("task", "t1")
        assert t1 is not None and t1.status.message == ""
        await store.close()
        reopened = await Store.open(place.backend())
        t1, t2 = reopened.view().get("task", "t1"), reopened.view().get("task", "t2")
        assert t1 is not None and t1.status.message == ""
        assert t2 is not None and t2.status.message == "other"
        await reopened.close()

    run(body())


# ---- watch --------------------------------------------------------------------------------


def test_watch_sees_events_then_commit_filtered_by_kind(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        everything = store.watch()
        tasks_only = store.watch({"task"})
        await store.update(lambda tx: [tx.create(service("s1", "web")), tx.create(task("t1"))])
        first = store.revision
        await store.update(lambda tx: tx.create(node("n1", "host")))
        t = copy(store.view().get("task", "t1"))
        t.node_id = "n1"
        await store.update(lambda tx: tx.update(t))
        await store.update(lambda tx: tx.delete("task", "t1"))

        seen = await drain(everything, 4)
        shape = [(i.action, i.kind) if isinstance(i, Event) else "commit" for i in seen]
        assert shape == [
            ("create", "service"), ("create", "task"), "commit",
            ("create", "node"), "commit",
            ("update", "task"), "commit",
            ("delete", "task"), "commit",
        ]
        assert seen[2] == Commit(first)
        update = seen[5]
        assert isinstance(update, Event) and update.old is not None
        assert update.old.node_id == "" and update.obj.node_id == "n1"

        seen = await drain(tasks_only, 3)
        shape = [(i.action, i.kind) if isinstance(i, Event) else "commit" for i in seen]
        assert shape == [("create", "task"), "commit", ("update", "task"), "commit",
                         ("delete", "task"), "commit"]
        assert tasks_only.pending() == 0, "no Commit for a commit without a task in it"
        tasks_only.close()
        assert [i async for i in tasks_only] == []
        await store.close()

    run(body())


# ---- durability ---------------------------------------------------------------------------


def test_reopen_gives_back_every_object_with_its_version(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        await store.update(lambda tx: [tx.create(task(f"t{i}", node_id="n1")) for i in range(5)])
        await store.update(lambda tx: tx.create(service("s1", "web")))
        t = copy(store.view().get("task", "t3"))
        t.status.message = "changed"
        await store.update(lambda tx: tx.update(t))
        await store.update(lambda tx: tx.delete("task", "t4"))
        before = {(o.id, o.meta.version) for k in ("task", "service") for o in store.view().all(k)}
        revision = store.revision
        await store.close()

        again = await Store.open(place.backend())
        view = again.view()
        after = {(o.id, o.meta.version) for k in ("task", "service") for o in view.all(k)}
        assert after == before
        assert again.revision >= revision
        t3 = view.get("task", "t3")
        assert t3 is not None and t3.status.message == "changed"
        assert sorted(o.id for o in view.find("task", node_id="n1")) == ["t0", "t1", "t2", "t3"]
        t3c = copy(t3)
        t3c.status.message = "after restart"
        await again.update(lambda tx: tx.update(t3c))  # versions still line up
        await again.close()

    run(body())


# ---- bulk ---------------------------------------------------------------------------------


def test_ten_thousand_task_creates_in_one_update(place: Place) -> None:
    async def body() -> None:
        store = await Store.open(place.backend())
        watch = store.watch({"task"})
        start = time.perf_counter()
        await store.update(
            lambda tx: [tx.create(task(f"t{i:05}", f"svc{i % 10}", slot=i)) for i in range(10000)]
        )
        took = time.perf_counter() - start
        print(f"\n{place.name}: 10,000 task creates in one update: {took:.2f} s")
        assert len(store.view().find("task", service_id="svc3")) == 1000
        assert watch.pending() == 10001
        start = time.perf_counter()
        await store.close()
        again = await Store.open(place.backend())
        print(f"{place.name}: reopening 10,000 tasks: {time.perf_counter() - start:.2f} s")
        assert len(again.view().all("task")) == 10000
        await again.close()

    run(body())


def test_batch_splits_past_the_backend_limit_only_when_asked(place: Place) -> None:
    async def body() -> None:
        backend = place.backend()
        store = await Store.open(backend)
        backend.max_ops = 100
        watch = store.watch()
        with pytest.raises(InvalidArgument):
            await store.update(lambda tx: [tx.create(task(f"t{i}")) for i in range(250)])
        assert store.view().all("task") == []
        await store.batch(lambda tx: [tx.create(task(f"t{i}")) for i in range(250)])
        assert len(store.view().all("task")) == 250
        assert len(await drain(watch, 3)) == 253, "three commits of 100, 100 and 50"
        await store.close()

    run(body())


def _held_answers(backend: Backend, fail_call: int = 0) -> dict[str, int]:
    """Wrap backend.commit: each commit is made at once, but its answer is held back, the
    first one longest (so answers come back out of revision order); call `fail_call` (from
    1) fails with a conflict instead. Returns live counters: calls, most commits in flight."""
    seen = {"calls": 0, "in_flight": 0, "most": 0}
    commit = backend.commit

    async def held(ops: list[Any], fence: Any = None) -> int:
        seen["calls"] += 1
        call = seen["calls"]
        seen["in_flight"] += 1
        seen["most"] = max(seen["most"], seen["in_flight"])
        try:
            if call == fail_call:
                await asyncio.sleep(0.01)
                raise VersionConflict("injected", kind="task", id=ops[0].id)
            revision = await commit(ops, fence)
            await asyncio.sleep(0.05 if call == 1 else 0.01)
            return revision
        finally:
            seen["in_flight"] -= 1

    backend.commit = held  # type: ignore[method-assign]
    return seen


def test_a_split_batch_sends_its_commits_together_and_publishes_them_in_order(
        place: Place) -> None:
    async def body() -> None:
        backend = place.backend()
        store = await Store.open(backend)
        backend.max_ops = 100
        watch = store.watch({"task"})
        seen = _held_answers(backend)
        await store.batch(lambda tx: [tx.create(task(f"t{i:03}")) for i in range(450)])
        assert seen["calls"] == 5 and seen["most"] > 1, seen
        items = await drain(watch, 5)
        revisions = [i.revision for i in items if isinstance(i, Commit)]
        assert revisions == sorted(revisions), "watchers see commits in revision order"
        # every event is published with its own commit, stamped with its revision
        events: list[Event] = []
        for item in items:
            if isinstance(item, Commit):
                assert {e.obj.meta.version for e in events} == {item.revision}
                events = []
            else:
                events.append(item)
        assert len(store.view().all("task")) == 450
        await store.close()

    run(body())


def test_a_split_batch_keeps_the_commits_that_landed_when_one_conflicts(
        place: Place) -> None:
    """A chunk's conflict fails the batch; the chunks that landed are in the view as in the
    backend (nothing lost, nothing the view does not know), and a retry writes the rest."""
    async def body() -> None:
        backend = place.backend()
        store = await Store.open(backend)
        backend.max_ops = 100
        seen = _held_answers(backend, fail_call=2)

        def missing(tx: WriteTx) -> None:
            for i in range(450):
                if tx.get("task", f"t{i:03}") is None:
                    tx.create(task(f"t{i:03}"))

        with pytest.raises(VersionConflict):
            await store.batch(missing)
        landed = {t.id for t in store.view().all("task")}
        assert len(landed) == 350, "the four chunks that did not conflict"
        assert f"t{100:03}" not in landed  # the second chunk's first task
        again = await Store.open(place.backend())  # what the backend itself holds
        assert {t.id for t in again.view().all("task")} == landed
        await again.close()
        seen["calls"] = 100  # no more injected conflicts
        await store.batch(missing, retries=1)
        assert len(store.view().all("task")) == 450
        await store.close()

    run(body())


def test_a_split_batch_sends_no_more_commits_once_one_failed(place: Place) -> None:
    """A store that is down fails the write once, not once per chunk: after a failure the
    chunks not sent yet stay unsent (those already in flight may land)."""
    async def body() -> None:
        backend = place.backend()
        store = await Store.open(backend)
        backend.max_ops = 100
        seen = _held_answers(backend, fail_call=1)
        with pytest.raises(VersionConflict):
            await store.batch(lambda tx: [tx.create(task(f"t{i:04}")) for i in range(2000)])
        assert seen["calls"] == COMMITS_IN_FLIGHT, "twenty chunks, only the first wave sent"
        assert len(store.view().all("task")) == 100 * (COMMITS_IN_FLIGHT - 1)
        await store.close()

    run(body())


# ---- open_backend -------------------------------------------------------------------------


def test_open_backend_urls(tmp_path: Path) -> None:
    default = open_backend("sqlite", tmp_path)
    assert isinstance(default, SqliteBackend) and default.path == tmp_path / "manager.db"
    explicit = open_backend("sqlite:///var/lib/x.db", tmp_path)
    assert isinstance(explicit, SqliteBackend) and explicit.path == Path("/var/lib/x.db")
    with pytest.raises(InvalidArgument):
        open_backend("sqlite://relative.db", tmp_path)
    with pytest.raises(InvalidArgument):
        open_backend("zookeeper://x", tmp_path)
