"""What the scheduler knows about each node while it plans: counts, reservations, ports.

One NodeInfo per node, built once per scheduling pass from the store's view and updated in
place as the pass assigns tasks, so that later tasks of the same batch see earlier ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.manager.scheduler.timestamps import parse_time
from pyswarm.proto.objects_pb2 import (
    TASK_STATE_FAILED,
    TASK_STATE_REJECTED,
    TASK_STATE_RUNNING,
    Node,
    PublishMode,
    Task,
)

# Failures of a service on a node this recent make the node rank last for that service.
RECENT_FAILURE_WINDOW = 300.0

HostPort = tuple[int, str]  # (published port, protocol)


@dataclass
class Reserved:
    nano_cpus: int = 0
    memory_bytes: int = 0


@dataclass
class NodeInfo:
    node: Node
    tasks_by_service: Counter[str] = field(default_factory=Counter)
    total_tasks: int = 0
    reserved: Reserved = field(default_factory=Reserved)
    host_ports: set[HostPort] = field(default_factory=set)
    recent_failures: dict[str, list[float]] = field(default_factory=dict)
    # the node's id, read once: ranking reads it for every node and task, and a protobuf
    # field read costs more than an attribute (a pass at 1,000 nodes read it 31,000 times)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.node.id

    def free_cpus(self) -> int:
        return self.node.description.resources.nano_cpus - self.reserved.nano_cpus

    def free_memory(self) -> int:
        return self.node.description.resources.memory_bytes - self.reserved.memory_bytes

    def add_task(self, task: Task, *, counted: bool = True) -> None:
        """Account for a task on this node: its reservations and host ports always (they
        are held while it runs); the spread counters only when ``counted`` (it is meant to
        keep running)."""
        res = task.spec.resources.reservations
        self.reserved.nano_cpus += res.nano_cpus
        self.reserved.memory_bytes += res.memory_bytes
        self.host_ports.update(task_host_ports(task))
        if counted:
            self.tasks_by_service[task.service_id] += 1
            self.total_tasks += 1

    def has_recent_failures(self, service_id: str) -> bool:
        return bool(self.recent_failures.get(service_id))


def task_host_ports(task: Task) -> list[HostPort]:
    """The host-mode ports a task publishes on its own node (allocated ones if known)."""
    endpoint = task.endpoint
    ports = endpoint.ports or endpoint.spec.ports
    if not ports:
        return []
    return [(p.published_port, p.protocol or "tcp") for p in ports
            if p.publish_mode == PublishMode.PUBLISH_MODE_HOST and p.published_port]


def build_node_infos(nodes: Mapping[str, Node] | Iterable[Node], live_tasks: Iterable[Task],
                     failed_tasks: Iterable[Task], now: float) -> dict[str, NodeInfo]:
    """NodeInfo for every node.

    ``live_tasks``: tasks on nodes that still hold resources (observed state not terminal);
    only those also desired RUNNING count towards spread. ``failed_tasks``: tasks that
    ended FAILED or REJECTED while still desired RUNNING; those within
    RECENT_FAILURE_WINDOW of ``now`` are recorded.
    Tasks naming an unknown node are ignored.
    """
    node_list: Iterable[Node] = nodes.values() if isinstance(nodes, Mapping) else nodes
    infos = {node.id: NodeInfo(node) for node in node_list}
    for task in live_tasks:
        info = infos.get(task.node_id)
        if info is None or taskstate.is_terminal(task.status.state):
            continue
        info.add_task(task, counted=task.desired_state <= TASK_STATE_RUNNING)
    for task in failed_tasks:
        info = infos.get(task.node_id)
        if info is None or task.status.state not in (TASK_STATE_FAILED,
                                                      TASK_STATE_REJECTED):
            continue
        if task.desired_state > TASK_STATE_RUNNING:
            # It was told to stop (its node went down, a scale-down, an update): how it
            # ended says nothing against the node. Counting the tasks a crashed node
            # reports dead when it comes back left it shunned for the whole window.
            continue
        when = parse_time(task.status.timestamp)
        if now - when <= RECENT_FAILURE_WINDOW:
            info.recent_failures.setdefault(task.service_id, []).append(when)
    return infos
