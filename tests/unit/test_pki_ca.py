"""The cluster's certificate authority on a real (in-memory) store: admission by join
token, renewal, token rotation, and the role rules of promote/demote/rm."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from pyswarm.common import pki
from pyswarm.common.errors import Conflict, FailedPrecondition
from pyswarm.manager import control
from pyswarm.manager.security import ca
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto import objects_pb2 as opb

ETCD = "etcd://127.0.0.1:2379"


def run(body: Callable[[Store], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: ca.create_cluster(tx, ca.new_cluster("c1")))
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def csr() -> bytes:
    return pki.make_csr(pki.new_key())


def tokens(store: Store) -> opb.JoinTokens:
    return ca.cluster_of(store.view()).join_tokens


def test_a_worker_token_admits_a_new_worker_node_each_time() -> None:
    async def body(store: Store) -> None:
        token = tokens(store).worker
        node, cert = await store.update(lambda tx: ca.admit(tx, token, csr(), "h1", "sqlite"))
        again, _ = await store.update(lambda tx: ca.admit(tx, token, csr(), "h1", "sqlite"))
        assert node.id != again.id
        stored = store.view().get("node", node.id)
        assert stored is not None and stored.role == opb.NODE_ROLE_WORKER
        assert stored.description.hostname == "h1"
        identity = pki.verify_node_cert(cert, ca.cluster_of(store.view()).root_ca.ca_cert)
        assert (identity.node_id, identity.role, identity.cluster_id) == (node.id, "worker", "c1")

    run(body)


def test_wrong_malformed_and_rotated_tokens_are_refused_and_register_nothing() -> None:
    async def body(store: Store) -> None:
        old = tokens(store).worker
        await store.update(lambda tx: ca.rotate_token(tx, "worker"))
        assert tokens(store).worker != old
        other = pki.new_token(ca.cluster_of(store.view()).root_ca.ca_cert)
        for token, message in ((old, "rotated out"), (other, "rotated out"),
                               ("PSWMTKN-1-x-y", "invalid join token")):
            with pytest.raises(ca.PermissionDenied, match=message):
                await store.update(lambda tx, t=token: ca.admit(tx, t, csr(), "h", "sqlite"))
        assert store.view().all("node") == []

    run(body)


def test_a_manager_token_needs_a_shared_store() -> None:
    async def body(store: Store) -> None:
        token = tokens(store).manager
        with pytest.raises(FailedPrecondition, match="store is sqlite.*--store etcd://"):
            await store.update(lambda tx: ca.admit(tx, token, csr(), "h", "sqlite"))
        node, cert = await store.update(lambda tx: ca.admit(tx, token, csr(), "h", ETCD))
        assert node.role == opb.NODE_ROLE_MANAGER
        assert pki.identity_of(cert).role == "manager"

    run(body)


def test_renewal_follows_the_node_s_current_role_and_stops_once_removed() -> None:
    async def body(store: Store) -> None:
        token = tokens(store).worker
        node, _ = await store.update(lambda tx: ca.admit(tx, token, csr(), "h", ETCD))
        spec = opb.NodeSpec()
        spec.CopyFrom(node.spec)
        spec.desired_role = opb.NODE_ROLE_MANAGER
        await store.update(lambda tx: control.update_node(tx, node.id, 0, spec,
                                                          control.Roles("m0", True)))
        _, cert = ca.renew(store.view(), node.id, csr())
        assert pki.identity_of(cert).role == "manager"
        await store.update(lambda tx: tx.delete("node", node.id))
        with pytest.raises(ca.PermissionDenied, match="removed"):
            ca.renew(store.view(), node.id, csr())

    run(body)


def add_node(store: Store, id: str, role: int, state: int) -> Coroutine[Any, Any, None]:
    node = opb.Node(id=id, role=role)
    node.spec.desired_role = role
    node.status.state = state
    return store.update(lambda tx: tx.create(node))


def promote(store: Store, ref: str, role: int, roles: control.Roles) -> Coroutine[Any, Any, Any]:
    node = store.view().get("node", ref)
    assert node is not None
    spec = opb.NodeSpec()
    spec.CopyFrom(node.spec)
    spec.desired_role = role
    return store.update(lambda tx: control.update_node(tx, ref, 0, spec, roles))


def test_promote_and_demote_rules() -> None:
    M, W = opb.NODE_ROLE_MANAGER, opb.NODE_ROLE_WORKER

    async def body(store: Store) -> None:
        await add_node(store, "m0", M, opb.NODE_STATE_READY)
        await add_node(store, "w1", W, opb.NODE_STATE_READY)
        with pytest.raises(FailedPrecondition, match="store is sqlite"):
            await promote(store, "w1", M, control.Roles("m0", False))
        with pytest.raises(FailedPrecondition, match="last manager"):
            await promote(store, "m0", W, control.Roles("m0", True))
        await promote(store, "w1", M, control.Roles("m0", True))
        assert store.view().get("node", "w1").role == M  # type: ignore[union-attr]
        with pytest.raises(FailedPrecondition, match="serving this request"):
            await promote(store, "m0", W, control.Roles("m0", True))
        await promote(store, "w1", W, control.Roles("m0", True))
        assert store.view().get("node", "w1").role == W  # type: ignore[union-attr]

    run(body)


def test_remove_rules() -> None:
    async def body(store: Store) -> None:
        await add_node(store, "m0", opb.NODE_ROLE_MANAGER, opb.NODE_STATE_READY)
        await add_node(store, "m1", opb.NODE_ROLE_MANAGER, opb.NODE_STATE_DOWN)
        await add_node(store, "w1", opb.NODE_ROLE_WORKER, opb.NODE_STATE_READY)
        await add_node(store, "w2", opb.NODE_ROLE_WORKER, opb.NODE_STATE_DOWN)
        with pytest.raises(Conflict, match="cannot remove itself"):
            await store.update(lambda tx: control.remove_node(tx, "m0", True, "m0"))
        with pytest.raises(FailedPrecondition, match="demote it first"):
            await store.update(lambda tx: control.remove_node(tx, "m1", True, "m0"))
        with pytest.raises(FailedPrecondition, match="not down.*--force"):
            await store.update(lambda tx: control.remove_node(tx, "w1", False, "m0"))
        await store.update(lambda tx: control.remove_node(tx, "w2", False, "m0"))
        await store.update(lambda tx: control.remove_node(tx, "w1", True, "m0"))
        assert {n.id for n in store.view().all("node")} == {"m0", "m1"}

    run(body)
