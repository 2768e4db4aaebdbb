"""What only a shared backend does: two stores (two managers) on one etcd key prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from pyswarm.common.errors import Conflict
from pyswarm.manager.store import Commit, Event, Store, VersionConflict, WriteTx
from tests.etcd_fixtures import MAX_TXN_OPS, EtcdServer, etcd_server  # noqa: F401 - a fixture
from tests.unit.test_store_contract import copy, drain, run, service, task


@pytest.fixture
def new_store(etcd_server: EtcdServer) -> Callable[[], asyncio.Future[Store]]:  # noqa: F811
    from pyswarm.manager.store.backends.etcd import EtcdBackend

    prefix = f"/pyswarm-test/{uuid.uuid4().hex}/"

    def open_one() -> asyncio.Future[Store]:
        backend = EtcdBackend([etcd_server.endpoint], prefix=prefix, max_txn_ops=MAX_TXN_OPS)
        return asyncio.ensure_future(Store.open(backend))

    return open_one


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the other store never caught up")


def test_a_write_through_one_store_reaches_the_others_view_and_watch(new_store) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        a, b = await new_store(), await new_store()
        watch = b.watch({"task"})
        await a.update(lambda tx: [tx.create(task("t1")), tx.create(task("t2"))])
        seen = await drain(watch, 1)
        assert [(i.action, i.obj.id) for i in seen if isinstance(i, Event)] == [
            ("create", "t1"), ("create", "t2")
        ]
        assert seen[-1] == Commit(a.revision)
        got = b.view().get("task", "t1")
        assert got is not None and got.meta.version == a.revision

        t = copy(got)
        t.node_id = "n1"
        await b.update(lambda tx: tx.update(t))  # b's view is current: no conflict
        await eventually(lambda: a.view().find("task", node_id="n1") != [])
        await a.update(lambda tx: tx.delete("task", "t2"))
        seen = await drain(watch, 2)
        actions = [(i.action, i.obj.id) for i in seen if isinstance(i, Event)]
        assert actions == [("update", "t1"), ("delete", "t2")], "own commit, then a's delete"
        await eventually(lambda: b.view().get("task", "t2") is None)
        await a.close()
        await b.close()

    run(body())


def test_a_lost_race_is_retried_on_fresh_reads(new_store) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        a, b = await new_store(), await new_store()
        await a.update(lambda tx: tx.create(service("s1", "web")))
        await eventually(lambda: b.view().get("service", "s1") is not None)

        # Both managers bump a counter label from what they read; b wins the first race.
        stale_in_a = copy(a.view().get("service", "s1"))
        mine = copy(b.view().get("service", "s1"))
        mine.spec.labels["n"] = "1"
        await b.update(lambda tx: tx.update(mine))
        calls: list[int] = []

        def bump(tx: WriteTx) -> None:
            calls.append(1)
            s = stale_in_a if len(calls) == 1 else copy(tx.get("service", "s1"))
            s.spec.labels["n"] = str(int(s.spec.labels.get("n", "0")) + 1)
            tx.update(s)

        await a.update(bump, retries=3)
        assert len(calls) == 2
        final = a.view().get("service", "s1")
        assert final is not None and final.spec.labels["n"] == "2"
        await eventually(lambda: b.view().get("service", "s1").spec.labels["n"] == "2")  # type: ignore[union-attr]

        # Two creates of one id: the loser sees a Conflict after its retry re-reads.
        await b.update(lambda tx: tx.create(task("dup")))
        with pytest.raises((Conflict, VersionConflict)):
            await a.update(lambda tx: tx.create(task("dup")), retries=1)
        await a.close()
        await b.close()

    run(body())


def test_leader_election_hands_over_when_the_leader_resigns(etcd_server: EtcdServer) -> None:  # noqa: F811
    from pyswarm.manager.store.backends.etcd import EtcdBackend

    prefix = f"/pyswarm-test/{uuid.uuid4().hex}/"

    async def body() -> None:
        one, two = (EtcdBackend([etcd_server.endpoint], prefix=prefix) for _ in range(2))
        first = await one.campaign("leader", b"manager-1", ttl=5)
        assert await two.leader("leader") == b"manager-1"
        second = asyncio.ensure_future(two.campaign("leader", b"manager-2", ttl=5))
        await asyncio.sleep(0.3)
        assert not second.done(), "only one leader at a time"
        await first.resign()
        assert first.lost.is_set()
        lead = await asyncio.wait_for(second, 10)
        assert await one.leader("leader") == b"manager-2" and not lead.lost.is_set()
        await lead.resign()
        assert await one.leader("leader") is None
        await one.close()
        await two.close()

    run(body())


@pytest.mark.parametrize("code, details", [
    ("UNKNOWN", "raft proposal dropped"),  # etcd's leader changed under the proposal
    ("UNAVAILABLE", "etcdserver: leader changed"),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
])
def test_a_commit_etcd_dropped_in_a_leader_change_is_reported_safe_to_retry(
        code: str, details: str) -> None:
    """A commit that etcd drops while its raft leader changes was not applied: the caller
    hears StoreUnavailable ("retrying it is safe", which the CLI and the loops act on), not
    an unexpected error. (HA lab test: a `service scale` during a failover got etcd's
    "raft proposal dropped" as an internal error.)"""
    import grpc

    from pyswarm.manager.store.backends.base import Op
    from pyswarm.manager.store.backends.etcd import EtcdBackend
    from pyswarm.manager.store.errors import StoreUnavailable

    class Dropping:
        async def call(self, fn):  # type: ignore[no-untyped-def]
            raise grpc.aio.AioRpcError(getattr(grpc.StatusCode, code), grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details=details)

    backend = EtcdBackend(["127.0.0.1:1"], prefix="/t/")
    backend.members = Dropping()  # type: ignore[assignment]
    backend.dropped_retry_s = 0.3  # a proposal dropped for longer than this is reported
    with pytest.raises(StoreUnavailable, match="retrying it is safe"):
        asyncio.run(backend.commit([Op("task", "t1", b"x", 0)]))


def test_a_proposal_etcd_dropped_is_sent_again_and_the_write_lands() -> None:
    """etcd drops a proposal (never appended to its log) while its raft leader changes.
    The manager sends the same guarded transaction again until etcd has a leader, so a
    user's `service scale` during an etcd election takes a moment longer instead of
    failing. (HA lab test, CI: `service scale` right after a partition answered "raft
    proposal dropped".)"""
    import grpc

    from pyswarm.manager.store.backends.base import Op
    from pyswarm.manager.store.backends.etcd import EtcdBackend

    sent: list[object] = []

    class DropsTwice:
        async def call(self, fn):  # type: ignore[no-untyped-def]
            sent.append(fn)
            if len(sent) <= 2:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), details="raft proposal dropped")
            from aetcd import rpc
            reply = rpc.TxnResponse(succeeded=True)
            reply.header.revision = 42
            return reply

    backend = EtcdBackend(["127.0.0.1:1"], prefix="/t/")
    backend.members = DropsTwice()  # type: ignore[assignment]
    assert asyncio.run(backend.commit([Op("task", "t1", b"x", 0)])) == 42
    assert len(sent) == 3 and sent[0] is sent[1] is sent[2], "the same guarded Txn each time"
