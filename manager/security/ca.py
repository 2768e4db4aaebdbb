"""The cluster's certificate authority on the store: one function per act, no gRPC here.

Policy:
- The root CA and the two join tokens live in the store's one `cluster` object, so every
  manager of an etcd-backed cluster admits and certifies nodes alike.
- A join token admits a NEW node: the manager picks its id, registers it at the token's
  role and signs its CSR. A node renews with its own certificate, at the role the node has
  in the store now (promote/demote), and only while it is still a member.
- With an embedded store (sqlite) a cluster has exactly one manager: a manager join or a
  promotion is refused with the way out (an etcd store).
"""

from __future__ import annotations

import secrets

from pyswarm.common import pki
from pyswarm.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from pyswarm.manager.store import ReadTx, WriteTx
from pyswarm.proto import objects_pb2 as opb

CLUSTER_NAME = "default"
ROLES = {"worker": opb.NODE_ROLE_WORKER, "manager": opb.NODE_ROLE_MANAGER}
ROLE_NAMES = {v: k for k, v in ROLES.items()}
ONE_MANAGER = ("this cluster's store is sqlite (embedded in its manager), so it has exactly "
               "one manager; use pyswarm init --store etcd://HOST:PORT to run several managers")
BAD_TOKEN = ("the join token is not valid for this swarm (wrong, or rotated out): get the "
             'current one from a manager with "pyswarm join-token worker|manager"')


def removed(node_id: str) -> str:
    return (f"node {node_id} has been removed from the swarm: its certificate is no longer "
            f"accepted; join again with a token")


def is_multi_manager(store_url: str) -> bool:
    """Whether the store can be shared by several managers (etcd); sqlite/memory cannot."""
    return store_url.startswith("etcd://")


def cluster_of(tx: ReadTx) -> opb.Cluster:
    found = tx.find("cluster", name=CLUSTER_NAME)
    if not found:
        raise FailedPrecondition("this swarm has no certificate authority yet (its manager "
                                 "is still starting)")
    return found[0]  # type: ignore[return-value]


def root_ca(tx: ReadTx) -> pki.RootCA:
    cluster = cluster_of(tx)
    return pki.RootCA(cluster.root_ca.ca_cert, cluster.root_ca.ca_key)


def new_cluster(cluster_id: str, ca: pki.RootCA | None = None) -> opb.Cluster:
    """A new cluster object: a new root CA (unless given) and fresh tokens."""
    ca = ca or pki.RootCA.create()
    cluster = opb.Cluster(id=cluster_id)
    cluster.spec.name = CLUSTER_NAME
    cluster.root_ca.ca_cert = ca.cert_pem
    cluster.root_ca.ca_key = ca.key_pem
    cluster.root_ca.ca_cert_digest = ca.digest
    cluster.join_tokens.worker = pki.new_token(ca.cert_pem)
    cluster.join_tokens.manager = pki.new_token(ca.cert_pem)
    return cluster


def create_cluster(tx: WriteTx, cluster: opb.Cluster) -> None:
    existing = tx.find("cluster", name=CLUSTER_NAME)
    if existing:
        raise FailedPrecondition(
            f"the store already holds swarm {existing[0].id}: give this swarm a store "  # type: ignore[attr-defined]
            f"(or etcd key prefix) of its own")
    tx.create(cluster)


def rotate_token(tx: WriteTx, role: str) -> opb.Cluster:
    if role not in ROLES:
        raise InvalidArgument(f'invalid token role "{role}": worker or manager')
    cluster = opb.Cluster()
    cluster.CopyFrom(cluster_of(tx))
    token = pki.new_token(cluster.root_ca.ca_cert)
    setattr(cluster.join_tokens, role, token)
    tx.update(cluster)
    return cluster


def admit(tx: WriteTx, token: str, csr: bytes, hostname: str,
          store_url: str) -> tuple[opb.Node, bytes]:
    """A new node for a join token: registered at the token's role, with its certificate."""
    cluster = cluster_of(tx)
    try:
        role = pki.token_role(token, cluster.join_tokens.worker, cluster.join_tokens.manager)
    except pki.PKIError as exc:
        raise PermissionDenied(str(exc)) from None
    if role is None:
        raise PermissionDenied(BAD_TOKEN)
    if role == "manager" and not is_multi_manager(store_url):
        raise FailedPrecondition(f"cannot join as a manager: {ONE_MANAGER}")
    node = opb.Node(id=secrets.token_hex(13), role=ROLES[role])
    node.spec.desired_role = ROLES[role]
    node.spec.availability = opb.NODE_AVAILABILITY_ACTIVE
    node.description.hostname = hostname
    node.status.state = opb.NODE_STATE_UNKNOWN
    node.status.message = "joined; no session yet"
    cert = root_ca(tx).sign_node(csr, node.id, role, cluster.id)
    tx.create(node)
    return node, cert


def renew(tx: ReadTx, node_id: str, csr: bytes) -> tuple[opb.Node, bytes]:
    """A fresh certificate for a member node, at the role it has now."""
    node = tx.get("node", node_id)
    if node is None:
        raise PermissionDenied(removed(node_id))
    cert = root_ca(tx).sign_node(csr, node_id, ROLE_NAMES[node.role],  # type: ignore[attr-defined]
                                 cluster_of(tx).id)
    return node, cert  # type: ignore[return-value]
