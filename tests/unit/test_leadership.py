"""Leadership among managers on one etcd: fenced writes, terms, hand-over, the roster, and
where a follower sends a node. Real etcd, managers in this process."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.manager import ClusterIdentity, Manager
from pyswarm.manager.store import Store
from pyswarm.manager.store.errors import NotLeader
from tests.etcd_fixtures import MAX_TXN_OPS, EtcdServer, etcd_server  # noqa: F401 - a fixture
from tests.unit.test_store_contract import copy, run, service


def _backend(server: EtcdServer, prefix: str) -> Any:
    from pyswarm.manager.store.backends.etcd import EtcdBackend

    return EtcdBackend([server.endpoint], prefix=prefix, max_txn_ops=MAX_TXN_OPS)


def test_a_deposed_leaders_write_lands_nowhere_and_the_new_leaders_does(
        etcd_server: EtcdServer) -> None:  # noqa: F811
    """The crux of failover: a leader that has not yet noticed its term ended (stalled past
    its lease) must not be able to commit what it prepared."""
    prefix = f"/pyswarm-test/{uuid.uuid4().hex}/"

    async def body() -> None:
        a = await Store.open(_backend(etcd_server, prefix))
        b = await Store.open(_backend(etcd_server, prefix))
        await a.update(lambda tx: tx.create(_service(1)))
        term_a = await a.backend.campaign("manager", b"a", ttl=2)
        a.fence = term_a.fence
        await a.update(lambda tx: tx.update(_scaled(tx, 2)), fenced=True)  # it leads: lands

        # a's lease ends (it stalls; etcd expires the lease) but a still holds its fence
        await term_a.lease.revoke()
        term_b = await asyncio.wait_for(b.backend.campaign("manager", b"b", ttl=2), 10)
        b.fence = term_b.fence
        await _until(lambda: _replicas(b) == 2)
        with pytest.raises(NotLeader, match="leadership ended"):
            await a.update(lambda tx: tx.update(_scaled(tx, 7)), fenced=True)
        await b.update(lambda tx: tx.update(_scaled(tx, 3)), fenced=True)
        await _until(lambda: _replicas(a) == 3)
        assert _replicas(b) == 3, "the deposed leader's 7 never landed"
        # API writes are not fenced: every manager serves the API
        await a.update(lambda tx: tx.update(_scaled(tx, 4)), retries=3)
        await _until(lambda: _replicas(b) == 4)
        await term_b.resign()
        for s in (a, b):
            await s.close()

    run(body())


def test_a_leader_only_write_without_a_term_fails_at_once(etcd_server: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        store = await Store.open(_backend(etcd_server, f"/pyswarm-test/{uuid.uuid4().hex}/"))
        with pytest.raises(NotLeader, match="not the leader"):
            await store.update(lambda tx: tx.create(_service(1)), fenced=True)
        assert store.view().all("service") == []
        await store.close()

    run(body())


def _manager(server: EtcdServer, prefix: str, name: str, tmp: Any) -> Any:
    identity = ClusterIdentity("c1", name, f"etcd://{server.endpoint}{prefix}")
    return Manager.open(identity, tmp / name, ManagerConfig(), addr=f"{name}.example:2377")


def test_one_manager_leads_and_another_takes_over_when_it_stops(
        etcd_server: EtcdServer, tmp_path: Any) -> None:  # noqa: F811
    from pyswarm.manager.servicers import _dispatcher

    prefix = f"/pyswarm-test/{uuid.uuid4().hex}"

    class Host:
        def __init__(self, manager: Manager) -> None:
            self.manager = manager

    async def body() -> None:
        one = await _manager(etcd_server, prefix, "m1", tmp_path)
        await one.start()
        await _until(lambda: one.is_leader)
        two = await _manager(etcd_server, prefix, "m2", tmp_path)
        await two.start()
        await _until(lambda: two.terms.leader_id == "m1" and "m2" in two.terms.members)
        assert not two.is_leader and two.dispatcher is None
        assert two.terms.status_of("m1").leader and not two.terms.status_of("m2").leader
        assert two.terms.status_of("m2").reachability == "reachable"
        with pytest.raises(NotLeader, match="the leader is at m1.example:2377"):
            _dispatcher(Host(two))  # type: ignore[arg-type]
        assert two.terms.manager_addrs()[0] == "m1.example:2377"

        await one.stop()  # resigns: the other leads at once
        await _until(lambda: two.is_leader, 5)
        await _until(lambda: two.terms.status_of("m1").reachability == "unreachable", 5)
        assert two.terms.status_of("m2").leader
        # its loops run: a service gets its tasks from the new leader
        await two.store.update(lambda tx: tx.create(_service(2)))
        await _until(lambda: len(two.store.view().all("task")) == 2, 10)
        await two.stop()

    run(body())


def _service(replicas: int) -> Any:
    svc = service("s1", "web")
    svc.spec.replicated.replicas = replicas
    svc.spec.task.container.image = "busybox"
    return svc


def _scaled(tx: Any, replicas: int) -> Any:
    svc = copy(tx.get("service", "s1"))
    svc.spec.replicated.replicas = replicas
    return svc


def _replicas(store: Store) -> int:
    svc = store.view().get("service", "s1")
    return int(svc.spec.replicated.replicas) if svc is not None else 0


async def _until(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")
