"""Who may call what on the manager's TLS port: the policy, as a pure function.

The TLS layer has already checked that a certificate, when one is presented, was issued by
this cluster's root CA (and a certificate from any other CA fails the handshake). Per call:
- NodeCA: anyone (a joining node has no certificate yet; it proves itself with a token).
- grpc.health.v1.Health: anyone the TLS layer let in. It says only that the manager
  serves; the manager probes itself with it (dispatcher/probe.py).
- Dispatcher: a node certificate whose node id (CN) is the request's node_id (a
  session's: its first message's), for a node that is still a member: a removed node is
  refused, whatever its certificate says.
- Control: a manager's certificate. A worker's is refused, and so is Init/Join, which act on
  a node's own daemon and are only served on its root-only Unix socket.
The Unix socket is not subject to this: it is root-only and trusted with everything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pyswarm.common import pki
from pyswarm.manager.security.ca import PermissionDenied, removed

HEALTH = "/grpc.health.v1.Health"
WORKER_CONTROL = "a worker node's certificate cannot call the control API"
NEEDS_CERT = ("this call needs a node certificate of this swarm (mutual TLS); "
              "join the node with a token first")
LOCAL_ONLY = ("{name} acts on a node's own daemon: run it on that node (served on its "
              "Unix socket only)")


@dataclass(frozen=True)
class Caller:
    node_id: str
    role: str
    cluster_id: str


@functools.lru_cache(maxsize=16384)  # a node certificate each: size it past the largest cluster
def _identity(pem: bytes) -> pki.NodeIdentity | None:
    try:
        return pki.identity_of(pem)
    except pki.PKIError:
        return None


def caller_of(auth_context: Mapping[str, Sequence[bytes]]) -> Caller | None:
    """The node a gRPC call's peer certificate names; None without a (node) certificate."""
    pems = auth_context.get("x509_pem_cert") or []
    identity = _identity(bytes(pems[0])) if pems else None
    if identity is None:
        return None
    return Caller(identity.node_id, identity.role, identity.cluster_id)


def authorize(method: str, caller: Caller | None, request: object, cluster_id: str,
              is_member: Callable[[str], bool]) -> None:
    """Raise PermissionDenied unless `caller` may make this call.

    `method` is gRPC's full name ("/pyswarm.cluster.v1.Control/ListNodes")."""
    full, _, name = method.rpartition("/")
    if full == HEALTH:
        return
    service = full.rpartition(".")[2]
    if service == "NodeCA":
        return  # the servicer checks the token, or the caller's own certificate
    if caller is None:
        raise PermissionDenied(NEEDS_CERT)
    if caller.cluster_id != cluster_id:
        raise PermissionDenied(f"the certificate belongs to another swarm ({caller.cluster_id})")
    if service == "Control":
        if name in ("Init", "Join"):
            raise PermissionDenied(LOCAL_ONLY.format(name=name))
        if caller.role != "manager":
            raise PermissionDenied(WORKER_CONTROL)
        return
    if service == "Dispatcher":
        opening = getattr(request, "open", None)  # a session's first message (SessionUp)
        node_id = str(getattr(request if opening is None else opening, "node_id", ""))
        if node_id != caller.node_id:
            raise PermissionDenied(f"node {caller.node_id} cannot act for node "
                                   f"{node_id or '(none)'}")
        if not is_member(node_id):
            raise PermissionDenied(removed(node_id))
        return
    raise PermissionDenied(f"{method} is not served on this port")
