"""What the scheduler knows about each node while it plans: counts, reservations, ports.

One NodeInfo per node, updated in place as a pass assigns tasks, so that later tasks of
the same batch see earlier ones. `build_node_infos` builds them from a list of tasks;
`NodeLedger` keeps them between passes, a task at a time, from the store's events (a pass
that read every task to place a few was most of the scheduler's time during a failure at
10,000 tasks: bench/scale.py).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from pyswarm.common import taskstate
from pyswarm.manager.scheduler.timestamps import parse_time
from pyswarm.proto.objects_pb2 import (
    TASK_STATE_ASSIGNED,
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
    # held by the tasks on the node (a count each: one task ending frees only its own)
    host_ports: Counter[HostPort] = field(default_factory=Counter)
    # service -> when its tasks failed here (the ledger keeps old ones too: ranking counts
    # only those within RECENT_FAILURE_WINDOW)
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

    def add_task(self, task: Task) -> None:
        """Account for a task a pass places on this node."""
        self.add(Share.held(task, self.id))

    def add(self, share: Share, sign: int = 1) -> None:
        """Add what one task holds on this node (sign -1: take it away again)."""
        if share.failed_at is not None:
            times = self.recent_failures.setdefault(share.service_id, [])
            if sign > 0:
                times.append(share.failed_at)
            else:
                times.remove(share.failed_at)
                if not times:
                    del self.recent_failures[share.service_id]
            return
        self.reserved.nano_cpus += sign * share.nano_cpus
        self.reserved.memory_bytes += sign * share.memory_bytes
        for port in share.ports:
            self.host_ports[port] += sign
            if not self.host_ports[port]:
                del self.host_ports[port]
        if share.counted:
            self.tasks_by_service[share.service_id] += sign
            if not self.tasks_by_service[share.service_id]:
                del self.tasks_by_service[share.service_id]
            self.total_tasks += sign


class Share(NamedTuple):
    """What one task adds to its node's NodeInfo: what it holds while it runs, or (a
    failure) when it failed."""

    node_id: str
    service_id: str
    nano_cpus: int = 0
    memory_bytes: int = 0
    ports: tuple[HostPort, ...] = ()
    counted: bool = False
    failed_at: float | None = None

    @classmethod
    def held(cls, task: Task, node_id: str, counted: bool = True) -> Share:
        res = task.spec.resources.reservations
        return cls(sys.intern(node_id), sys.intern(task.service_id), res.nano_cpus,
                   res.memory_bytes, tuple(task_host_ports(task)), counted)


def task_host_ports(task: Task) -> list[HostPort]:
    """The host-mode ports a task publishes on its own node (allocated ones if known)."""
    endpoint = task.endpoint
    ports = endpoint.ports or endpoint.spec.ports
    if not ports:
        return []
    return [(p.published_port, p.protocol or "tcp") for p in ports
            if p.publish_mode == PublishMode.PUBLISH_MODE_HOST and p.published_port]


def share_of(task: Task) -> Share | None:
    """What a task adds to its node for the scheduler. Once placed (ASSIGNED on), and until
    its node reports it ended: its reservations and host ports, even once told to stop (as
    SwarmKit counts them: a task placed beside a stopping one would overcommit the node),
    and a place in the spread while it is still wanted. A task that ended badly while still
    wanted: a failure, ranked against for a while. Else nothing."""
    state = task.status.state
    if not task.node_id or state < TASK_STATE_ASSIGNED:
        return None  # not placed yet (a global task is made with its node)
    if state in (TASK_STATE_FAILED, TASK_STATE_REJECTED):
        if task.desired_state > TASK_STATE_RUNNING:
            # Told to stop (its node went down, a scale-down, an update): how it ended
            # says nothing against the node. Counting the tasks a crashed node reports
            # dead when it comes back left it shunned for the whole window.
            return None
        return Share(sys.intern(task.node_id), sys.intern(task.service_id),
                     failed_at=parse_time(task.status.timestamp))
    if taskstate.is_live(state):
        return Share.held(task, task.node_id, counted=task.desired_state <= TASK_STATE_RUNNING)
    return None


def build_node_infos(nodes: Mapping[str, Node] | Iterable[Node], tasks: Iterable[Task],
                     now: float) -> dict[str, NodeInfo]:
    """NodeInfo for every node, from the tasks' shares (`share_of`); failures recorded only
    within RECENT_FAILURE_WINDOW of ``now``. Tasks naming an unknown node are ignored."""
    node_list: Iterable[Node] = nodes.values() if isinstance(nodes, Mapping) else nodes
    infos = {node.id: NodeInfo(node) for node in node_list}
    for task in tasks:
        share = share_of(task)
        if share is None or (info := infos.get(share.node_id)) is None:
            continue
        if share.failed_at is None or now - share.failed_at <= RECENT_FAILURE_WINDOW:
            info.add(share)
    return infos


class NodeLedger:
    """Every node's NodeInfo, kept between scheduling passes from the store's events.

    What a task adds to its node is its `Share` (`share_of`), remembered per task: when the
    task changes or goes, exactly what it added is taken away before its new share is
    added. A pass assigns on the infos in place and then `placed()` records those tasks'
    shares, so the events of its own commit add nothing twice. A pass that did not commit
    leaves them wrong: `invalidate()`, and the next `sync()` rebuilds from the store. A
    write the rebuild already saw (its revision is no later than `built_at`) is not applied
    again when its event is read.
    """

    def __init__(self) -> None:
        self.infos: dict[str, NodeInfo] = {}
        self._shares: dict[str, Share] = {}  # task id -> what it added
        self.valid = False
        self.built_at = 0  # the store revision of the last rebuild

    def invalidate(self) -> None:
        self.valid = False

    def sync(self, revision: int, nodes: Iterable[Node],
             tasks: Callable[[], Iterable[Task]]) -> None:
        """Bring the nodes up to ``nodes`` (the pass's view at ``revision``: a node drained
        or down since the last event read is seen at once); rebuild from ``tasks()`` if
        invalid."""
        if not self.valid:
            self.infos = {node.id: NodeInfo(node) for node in nodes}
            self._shares = {}
            for task in tasks():
                self.task_changed(task.id, task)
            self.valid = True
            self.built_at = revision
            return
        seen: set[str] = set()
        new: dict[str, NodeInfo] = {}
        for node in nodes:
            seen.add(node.id)
            info = self.infos.get(node.id)
            if info is None:
                new[node.id] = NodeInfo(node)
            elif info.node is not node:
                info.node = node
        for gone in self.infos.keys() - seen:
            del self.infos[gone]
        if new:
            # Tasks already on a node the ledger did not know yet (rare: a node's tasks
            # come after it).
            for share in self._shares.values():
                info = new.get(share.node_id)
                if info is not None:
                    info.add(share)
            self.infos.update(new)

    def task_changed(self, task_id: str, task: Task | None) -> None:
        """A task was written (None: deleted; ids are never reused, so a delete is never
        stale)."""
        old = self._shares.pop(task_id, None)
        if old is not None and (info := self.infos.get(old.node_id)) is not None:
            info.add(old, -1)
        share = share_of(task) if task is not None else None
        if share is not None:
            self._shares[sys.intern(task_id)] = share
            if (info := self.infos.get(share.node_id)) is not None:
                info.add(share)

    def placed(self, task: Task, node_id: str) -> None:
        """A pass assigned ``task`` to ``node_id`` on the infos (add_task): remember its
        share, so that its commit's event replaces it rather than adding it again."""
        self._shares[sys.intern(task.id)] = Share.held(task, node_id)
