"""Feasibility filters: may this task run on this node?

Each filter is one small class. ``applies(task)`` binds the filter to the task it is
judging and says whether it has anything to check (a task without reservations skips the
resource filter); ``check(info)`` judges one node; ``explain(n)`` says, for the "no
suitable node" message, why ``n`` nodes failed it. Filters marked ``static`` give the same
answer for a node throughout a scheduling pass; the others only ever turn from pass to
fail as the pass places tasks (reservations grow, ports fill, counts rise), so a node that
fails one may be dropped for the rest of the batch.
"""

from __future__ import annotations

from typing import Protocol

from pyswarm.common.errors import InvalidArgument
from pyswarm.manager.scheduler.constraints import (
    Constraint,
    first_unsatisfied,
    parse_constraints,
)
from pyswarm.manager.scheduler.nodeinfo import HostPort, NodeInfo, task_host_ports
from pyswarm.proto.objects_pb2 import NODE_STATE_READY, NodeAvailability, Task


def _nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


class Filter(Protocol):
    name: str
    static: bool

    def applies(self, task: Task) -> bool: ...

    def check(self, info: NodeInfo) -> bool: ...

    def explain(self, nodes_failed: int) -> str: ...


class ReadyFilter:
    """Only nodes in session (READY) and open for work (ACTIVE) take new tasks."""

    name = "ready"
    static = True

    def applies(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        node = info.node
        return (node.status.state == NODE_STATE_READY
                and node.spec.availability == NodeAvailability.NODE_AVAILABILITY_ACTIVE)

    def explain(self, nodes_failed: int) -> str:
        return f"{_nodes(nodes_failed)} not available for new tasks"


class ResourceFilter:
    """The task's reservations must fit in what the node has minus what its tasks reserve."""

    name = "resources"
    static = False

    def __init__(self) -> None:
        self._cpus = 0
        self._memory = 0
        self._short: set[str] = set()

    def applies(self, task: Task) -> bool:
        res = task.spec.resources.reservations
        self._cpus, self._memory = res.nano_cpus, res.memory_bytes
        self._short = set()
        return self._cpus > 0 or self._memory > 0

    def check(self, info: NodeInfo) -> bool:
        ok = True
        if self._memory and info.free_memory() < self._memory:
            self._short.add("memory")
            ok = False
        if self._cpus and info.free_cpus() < self._cpus:
            self._short.add("CPU")
            ok = False
        return ok

    def explain(self, nodes_failed: int) -> str:
        what = next(iter(self._short)) if len(self._short) == 1 else "resources"
        return f"{_nodes(nodes_failed)} had insufficient {what}"


class ConstraintFilter:
    """Every placement constraint of the task must hold on the node."""

    name = "constraints"
    static = True

    def __init__(self) -> None:
        self._constraints: tuple[Constraint, ...] = ()
        self._error = ""
        self._failed: set[str] = set()

    def applies(self, task: Task) -> bool:
        self._failed = set()
        self._error = ""
        try:
            self._constraints = parse_constraints(task.spec.placement.constraints)
        except InvalidArgument as err:
            # A bad constraint cannot be satisfied anywhere; say why instead of crashing.
            self._constraints, self._error = (), str(err)
            return True
        return bool(self._constraints)

    def check(self, info: NodeInfo) -> bool:
        if self._error:
            return False
        failed = first_unsatisfied(self._constraints, info.node)
        if failed is None:
            return True
        self._failed.add(str(failed))
        return False

    def explain(self, nodes_failed: int) -> str:
        if self._error:
            return f"{_nodes(nodes_failed)}: {self._error}"
        if len(self._failed) == 1:
            return f"{_nodes(nodes_failed)} did not satisfy constraint {next(iter(self._failed))}"
        return f"{_nodes(nodes_failed)} did not satisfy constraints"


class HostPortFilter:
    """A host-mode published port can be held by one task per node."""

    name = "host ports"
    static = False

    def __init__(self) -> None:
        self._ports: list[HostPort] = []
        self._clashes: set[HostPort] = set()

    def applies(self, task: Task) -> bool:
        self._ports = task_host_ports(task)
        self._clashes = set()
        return bool(self._ports)

    def check(self, info: NodeInfo) -> bool:
        clash = [p for p in self._ports if p in info.host_ports]
        self._clashes.update(clash)
        return not clash

    def explain(self, nodes_failed: int) -> str:
        ports = sorted(self._clashes) or self._ports
        text = ", ".join(f"{port}/{proto}" for port, proto in ports)
        noun = "port" if len(ports) == 1 else "ports"
        return f"host-mode {noun} {text} in use on {_nodes(nodes_failed)}"


class MaxReplicasFilter:
    """At most placement.max_replicas tasks of the service on one node."""

    name = "max replicas"
    static = False

    def __init__(self) -> None:
        self._service = ""
        self._max = 0

    def applies(self, task: Task) -> bool:
        self._service, self._max = task.service_id, task.spec.placement.max_replicas
        return self._max > 0

    def check(self, info: NodeInfo) -> bool:
        return info.tasks_by_service[self._service] < self._max

    def explain(self, nodes_failed: int) -> str:
        return f"max replicas per node limit exceeded on {_nodes(nodes_failed)}"


def default_filters() -> list[Filter]:
    """Fresh filters in the order their failures are reported (SwarmKit's order)."""
    return [ReadyFilter(), ResourceFilter(), ConstraintFilter(), HostPortFilter(),
            MaxReplicasFilter()]
