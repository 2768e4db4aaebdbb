"""The etcd client's members: one at a time, the next when one fails. Real etcd, plus the
two ways a member fails in a cluster: nothing listens (its process died), or the TCP
connection is accepted and then nothing ever answers (a cut link, or a member stuck)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from pyswarm.manager.store.backends.etcd import EtcdBackend
from pyswarm.manager.store.backends.etcd_election import Lease
from pyswarm.manager.store.backends.etcd_members import Members, is_local
from tests.etcd_fixtures import (  # noqa: F401 - fixtures
    MAX_TXN_OPS,
    EtcdCluster,
    EtcdServer,
    etcd_cluster,
    etcd_server,
)
from tests.unit.test_store_contract import run


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An address that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


def _dead_address() -> str:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_members_on_this_host_come_first() -> None:
    assert is_local("127.0.0.1:2379") and is_local("[::1]:2379")
    # TEST-NET-1: never an address of this machine; binding to it fails, nothing is sent
    assert not is_local("192.0.2.7:2379")
    assert not is_local("etcd.example:2379")
    members = Members(["192.0.2.7:2379", "127.0.0.1:2379", "192.0.2.8:2379"])
    assert members.endpoints == ["127.0.0.1:2379", "192.0.2.7:2379", "192.0.2.8:2379"]
    assert members.pinned == "127.0.0.1:2379"


def test_a_dead_member_moves_the_pin_and_the_next_call_works(
        etcd_server: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        backend = EtcdBackend([_dead_address(), etcd_server.endpoint],
                              prefix=f"/pyswarm-test/{uuid.uuid4().hex}/",
                              max_txn_ops=MAX_TXN_OPS)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await backend.leader("manager")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert backend.members.pinned == etcd_server.endpoint
        assert await backend.leader("manager") is None  # answered
        await backend.close()

    run(body())


def test_a_lease_outlives_a_member_that_never_answers(
        etcd_server: EtcdServer, black_hole: str) -> None:  # noqa: F811
    """The partition case: with round_robin, a share of the keep-alives went to the cut
    member, each hanging until the lease had run out. One exchange now gets EXCHANGE
    seconds, then the next member."""
    async def body() -> None:
        members = Members([etcd_server.endpoint, black_hole])
        lease = await Lease.grant(members, 2)
        members._pinned = members.endpoints.index(black_hole)  # the cut member is pinned
        deadline = time.monotonic() + 4.5  # more than two TTLs
        while time.monotonic() < deadline:
            assert not lease.lost.is_set(), "the lease lapsed on a silent member"
            await asyncio.sleep(0.1)
        assert members.pinned == etcd_server.endpoint
        assert lease.left() > 0.5
        await lease.revoke()
        await members.close()

    run(body())


def test_a_registration_outlives_its_members_death_and_return(
        etcd_cluster: EtcdCluster) -> None:  # noqa: F811
    """The roster fault the HA lab tests hit: the member under a keep-alive stream died,
    the next write on that stream raised InvalidStateError ("RPC already finished"), and
    that killed the registration task for good, silently: the manager showed unreachable
    forever. Each member in turn dies and comes back; the key stays."""
    async def body() -> None:
        prefix = f"/pyswarm-test/{uuid.uuid4().hex}/"
        backend = EtcdBackend(etcd_cluster.endpoints, prefix=prefix)
        task = asyncio.create_task(backend.register("m", b"here", 2))

        async def registered() -> bool:
            reader = EtcdBackend(etcd_cluster.endpoints, prefix=prefix)
            try:
                for _ in range(len(etcd_cluster.endpoints)):  # any member that answers
                    try:
                        return "m" in (await reader.roster("manager"))[1]
                    except grpc.aio.AioRpcError:
                        continue
                return False
            finally:
                await reader.close()

        await asyncio.sleep(1)
        assert await registered()
        for name in ("m1", "m2"):
            await asyncio.to_thread(etcd_cluster.kill, name)
            await asyncio.sleep(5)  # 2.5 lease TTLs
            assert not task.done(), task.exception() if task.done() else ""
            # if the member was etcd's leader, the lease may lapse during etcd's election
            # (about as long as the 2 s TTL): then it is registered again
            deadline = time.monotonic() + 10
            while not await registered():
                assert time.monotonic() < deadline, f"the key went with {name}"
                await asyncio.sleep(0.2)
            etcd_cluster.start(name, existing=True)
            await asyncio.to_thread(etcd_cluster.wait_healthy)
        await asyncio.sleep(1)
        assert await registered()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await backend.close()

    run(body())


async def _etcds_leader(endpoints: list[str]) -> str:
    """The endpoint of etcd's leader, once every member reports the same one (during a
    transfer they may not, for a moment)."""
    from aetcd import rpc

    for _ in range(50):
        by_id, leaders = {}, set()
        for endpoint in endpoints:
            one = Members([endpoint])
            reply = await one.call(lambda ch: rpc.MaintenanceStub(ch).Status(
                rpc.StatusRequest(), timeout=5))
            by_id[reply.header.member_id] = endpoint
            leaders.add(reply.leader)
            await one.close()
        if len(leaders) == 1:
            return by_id[leaders.pop()]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the members disagree on etcd's leader: {leaders}")


def test_a_candidate_beside_etcds_leader_lets_another_lead(
        etcd_cluster: EtcdCluster) -> None:  # noqa: F811
    """Two candidates at once: the one whose member is etcd's leader would commit first;
    it waits, so that one machine's death never takes both leaders."""
    from pyswarm.manager.store.backends.etcd_election import campaign

    async def body() -> None:
        leader = await _etcds_leader(etcd_cluster.endpoints)
        follower = next(e for e in etcd_cluster.endpoints if e != leader)
        beside = Members([leader, follower])
        apart = Members([follower, leader])
        key = f"/pyswarm-test/{uuid.uuid4().hex}.election/manager".encode()
        first = asyncio.create_task(campaign(beside, key, b"beside", 2))
        second = asyncio.create_task(campaign(apart, key, b"apart", 2))
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {second}, "the candidate apart from etcd's leader leads"
        term = second.result()
        await term.resign()  # then the other one takes over: it only waited
        await asyncio.wait_for(first, 10)
        await first.result().resign()
        for m in (beside, apart):
            await m.close()

    run(body())


def test_a_leader_hands_etcds_leadership_away_from_its_own_member(
        etcd_cluster: EtcdCluster) -> None:  # noqa: F811
    """A manager that leads while its own machine's member is etcd's leader (it was alone,
    or etcd elected that member later) asks etcd to move its leadership elsewhere: else
    that machine's death costs etcd's election and then the lease, in series."""
    from pyswarm.manager.store.backends.etcd_election import campaign

    async def body() -> None:
        leader = await _etcds_leader(etcd_cluster.endpoints)
        follower = next(e for e in etcd_cluster.endpoints if e != leader)
        beside = Members([leader, follower])  # pinned at etcd's leader: its own member
        key = f"/pyswarm-test/{uuid.uuid4().hex}.election/manager".encode()
        term = await asyncio.wait_for(campaign(beside, key, b"beside", 2), 10)
        deadline = asyncio.get_running_loop().time() + 10
        while (now := await _etcds_leader(etcd_cluster.endpoints)) == leader:
            assert asyncio.get_running_loop().time() < deadline, "etcd's leader stayed"
            await asyncio.sleep(0.2)
        assert now != leader
        assert not term.lost.is_set(), "the lease survived the move"
        await term.resign()
        await beside.close()

    run(body())
