"""What the control API does, on the store: one function per request, no gRPC here.

Policy:
- A reference is an id, a unique id prefix or a name (Docker's order).
- Updates are read-modify-write checked against the version the client read; 0 means
  "whatever is current" (the CLI reads and writes within one command).
- A stack deploy is one transaction: every service, network, secret and config of the stack
  is applied, or none is.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from google.protobuf.message import Message

from pyswarm.common import taskstate
from pyswarm.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from pyswarm.manager import validate
from pyswarm.manager.allocator.validate import check_deploy
from pyswarm.manager.loops.tasks import copy, new_id
from pyswarm.manager.security.ca import ONE_MANAGER
from pyswarm.manager.store import ReadTx, VersionConflict, WriteTx
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

STACK_LABEL = "com.docker.stack.namespace"
S = taskstate.S


def lookup(tx: ReadTx, kind: str, ref: str) -> Message:
    obj = tx.get(kind, ref)
    if obj is not None:
        return obj
    by_name = tx.find(kind, name=ref)
    if len(by_name) == 1:
        return by_name[0]
    by_prefix = tx.find(kind, prefix=ref) if ref else []
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(by_prefix)} matches)")
    raise NotFound(f"{kind} {ref} not found")


def _check_version(obj: Message, version: int, kind: str) -> None:
    if version and obj.meta.version != version:
        raise VersionConflict(
            f"update out of sequence: {kind} {obj.id} changed since it was read "
            f"(version {obj.meta.version}, not {version}); read it again and retry")


# ---- nodes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """What a role change must know: the node this manager runs on, and whether the store
    lets the cluster have several managers (etcd) or only this one (sqlite)."""

    self_id: str = ""
    multi_manager: bool = True


def update_node(tx: WriteTx, ref: str, version: int, spec: opb.NodeSpec,
                roles: Roles | None = None) -> opb.Node:
    """Change a node's spec. A role change (promote/demote) takes effect at once in the
    node's role; its certificate carries the new role from its next renewal."""
    node = copy(lookup(tx, "node", ref))
    _check_version(node, version, "node")
    if spec.desired_role != node.role:
        _check_role_change(tx, node, spec.desired_role, roles or Roles())
        node.role = spec.desired_role
    node.spec.CopyFrom(spec)
    tx.update(node)
    return node


def _check_role_change(tx: ReadTx, node: opb.Node, role: int, roles: Roles) -> None:
    if role == opb.NODE_ROLE_MANAGER:
        if not roles.multi_manager:
            raise FailedPrecondition(f"cannot promote node {node.id}: {ONE_MANAGER}")
        return
    managers = [n for n in tx.all("node") if n.role == opb.NODE_ROLE_MANAGER]
    if [n.id for n in managers] == [node.id]:
        raise FailedPrecondition(f"cannot demote node {node.id}: it is the last manager of "
                                 f"the swarm")
    if node.id == roles.self_id:
        raise FailedPrecondition(
            f"cannot demote node {node.id}: it runs the manager serving this request, the "
            f"only manager process of the swarm (running several comes with HA managers)")


def remove_node(tx: WriteTx, ref: str, force: bool, self_id: str) -> str:
    """Docker's rules: a manager must be demoted first; a node that is not down needs
    --force. The removed node's certificate is refused from then on (security/authz.py) and
    the orchestrator replaces its tasks, as for a node that went down."""
    node = lookup(tx, "node", ref)
    if node.id == self_id:
        raise Conflict(f"node {node.id} is this manager: it cannot remove itself")
    if node.role == opb.NODE_ROLE_MANAGER:
        raise FailedPrecondition(f"node {node.id} is a manager: demote it first "
                                 f"(pyswarm node demote {node.id})")
    if node.status.state != opb.NODE_STATE_DOWN and not force:
        raise FailedPrecondition(f"node {node.id} is not down and can't be removed (use "
                                 f"--force to remove it anyway)")
    tx.delete("node", node.id)
    return str(node.id)


# ---- services --------------------------------------------------------------------------


def create_service(tx: WriteTx, spec: opb.ServiceSpec) -> opb.Service:
    validate.service_spec(spec)
    if tx.find("service", name=spec.name):
        raise Conflict(f"service {spec.name} already exists")
    service = opb.Service(id=new_id(), spec=spec)
    tx.create(service)
    return service


def update_service(tx: WriteTx, ref: str, version: int, spec: opb.ServiceSpec) -> opb.Service:
    validate.service_spec(spec)
    service = copy(lookup(tx, "service", ref))
    _check_version(service, version, "service")
    if spec.name != service.spec.name:
        raise InvalidArgument("a service cannot be renamed")
    if spec.WhichOneof("mode") != service.spec.WhichOneof("mode"):
        raise InvalidArgument("a service's mode (replicated/global) cannot change")
    service.previous_spec.CopyFrom(service.spec)
    service.spec.CopyFrom(spec)
    tx.update(service)
    return service


def remove_service(tx: WriteTx, ref: str) -> str:
    service = lookup(tx, "service", ref)
    tx.delete("service", service.id)
    return str(service.id)


def summaries(tx: ReadTx, stack: str = "") -> list[cpb.ServiceSummary]:
    nodes = tx.all("node")
    out = []
    for service in sorted(tx.all("service"), key=lambda s: s.spec.name):
        if stack and service.spec.labels.get(STACK_LABEL) != stack:
            continue
        tasks = tx.find("task", service_id=service.id)
        running = sum(1 for t in tasks if t.status.state == S.TASK_STATE_RUNNING
                      and t.desired_state <= S.TASK_STATE_RUNNING)
        if service.spec.HasField("global"):
            desired = sum(1 for t in tasks if t.desired_state <= S.TASK_STATE_RUNNING
                          and taskstate.is_live(t.status.state)) or sum(
                1 for n in nodes if n.status.state == opb.NODE_STATE_READY
                and n.spec.availability == opb.NODE_AVAILABILITY_ACTIVE)
        else:
            desired = service.spec.replicated.replicas
        out.append(cpb.ServiceSummary(service=service, desired=desired, running=running))
    return out


def list_tasks(tx: ReadTx, req: cpb.ListTasksRequest) -> list[opb.Task]:
    if req.service:
        service = lookup(tx, "service", req.service)
        tasks = tx.find("task", service_id=service.id)
    elif req.node:
        node = lookup(tx, "node", req.node)
        tasks = tx.find("task", node_id=node.id)
    else:
        tasks = tx.all("task")
    if req.stack:
        ids = {s.id for s in tx.all("service") if s.spec.labels.get(STACK_LABEL) == req.stack}
        tasks = [t for t in tasks if t.service_id in ids]
    if req.running_only:
        tasks = [t for t in tasks if t.desired_state <= S.TASK_STATE_RUNNING]
    return sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id,
                                        t.status.timestamp), reverse=False)


# ---- stacks ----------------------------------------------------------------------------


@dataclass
class DeployResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def deploy_stack(tx: WriteTx, req: cpb.DeployStackRequest) -> DeployResult:
    if not validate.NAME_RE.match(req.name):
        raise InvalidArgument(f'invalid stack name "{req.name}"')
    result = DeployResult()
    for kind, specs, make in (("network", req.networks, opb.Network),
                              ("secret", req.secrets, opb.Secret),
                              ("config", req.configs, opb.Config)):
        for spec in specs:
            _upsert_named(tx, kind, spec, make, req.name)
    names = set()
    for spec in req.services:
        spec = copy(spec)
        spec.labels[STACK_LABEL] = req.name
        validate.service_spec(spec)
        if spec.name in names:
            raise InvalidArgument(f"service {spec.name} appears twice in stack {req.name}")
        names.add(spec.name)
        existing = tx.find("service", name=spec.name)
        if not existing:
            tx.create(opb.Service(id=new_id(), spec=spec))
            result.created.append(spec.name)
            continue
        service = copy(existing[0])
        owner = service.spec.labels.get(STACK_LABEL, "")
        if owner != req.name:
            raise Conflict(f"service {spec.name} already exists and is not part of stack "
                           f"{req.name}")
        if service.spec.SerializeToString(deterministic=True) == spec.SerializeToString(
                deterministic=True):
            result.unchanged.append(spec.name)
            continue
        service.previous_spec.CopyFrom(service.spec)
        service.spec.CopyFrom(spec)
        tx.update(service)
        result.updated.append(spec.name)
    if req.prune:
        for service in tx.all("service"):
            if service.spec.labels.get(STACK_LABEL) == req.name and service.spec.name not in names:
                tx.delete("service", service.id)
                result.removed.append(service.spec.name)
    check_deploy(tx, req.name)  # subnets and ingress ports clash-free, or nothing is applied
    return result


def _upsert_named(tx: WriteTx, kind: str, spec: Message, make: type, stack: str) -> None:
    spec = copy(spec)
    spec.labels[STACK_LABEL] = stack
    existing = tx.find(kind, name=spec.name)
    if not existing:
        obj = make(id=new_id())
        obj.spec.CopyFrom(spec)
        tx.create(obj)
        return
    obj = copy(existing[0])
    if obj.spec != spec:
        if kind == "secret":
            raise Conflict(f"secret {spec.name} exists with other content: secrets cannot be "
                           f"changed, create one with a new name")
        obj.spec.CopyFrom(spec)
        tx.update(obj)


def list_stacks(tx: ReadTx) -> list[cpb.StackSummary]:
    counts: dict[str, int] = {}
    for service in tx.all("service"):
        stack = service.spec.labels.get(STACK_LABEL)
        if stack:
            counts[stack] = counts.get(stack, 0) + 1
    return [cpb.StackSummary(name=n, services=c) for n, c in sorted(counts.items())]


def remove_stack(tx: WriteTx, name: str) -> list[str]:
    removed = []
    for kind in ("service", "network", "secret", "config"):
        for obj in tx.all(kind):
            if obj.spec.labels.get(STACK_LABEL) == name:
                tx.delete(kind, obj.id)
                if kind == "service":
                    removed.append(obj.spec.name)
    if not removed:
        raise NotFound(f"nothing found in stack: {name}")
    return removed


def new_cluster_id() -> str:
    return secrets.token_hex(13)
