"""Small builders for the orchestrator's and scheduler's test objects (protobuf messages).

Times are epoch seconds in the tests and RFC 3339 in the messages, as in the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyswarm.manager.scheduler.timestamps import format_time
from pyswarm.proto.objects_pb2 import (
    Node,
    NodeAvailability,
    NodeRole,
    NodeState,
    PlacementPreference,
    PortConfig,
    PublishMode,
    RestartCondition,
    Service,
    Task,
    TaskState,
)

GB = 1 << 30
CPU = 1_000_000_000
NOW = 1_700_000_000.0

S = TaskState
AVAIL = {"active": NodeAvailability.NODE_AVAILABILITY_ACTIVE,
         "pause": NodeAvailability.NODE_AVAILABILITY_PAUSE,
         "drain": NodeAvailability.NODE_AVAILABILITY_DRAIN}
STATE = {"ready": NodeState.NODE_STATE_READY, "down": NodeState.NODE_STATE_DOWN,
         "unknown": NodeState.NODE_STATE_UNKNOWN,
         "disconnected": NodeState.NODE_STATE_DISCONNECTED}
CONDITION = {"any": RestartCondition.RESTART_CONDITION_ANY,
             "on-failure": RestartCondition.RESTART_CONDITION_ON_FAILURE,
             "none": RestartCondition.RESTART_CONDITION_NONE}


def make_node(node_id: str, *, state: str = "ready", availability: str = "active",
              labels: Mapping[str, str] | None = None, role: str = "worker",
              cpus: float = 4, memory: int = 8 * GB, hostname: str = "",
              os: str = "linux", arch: str = "x86_64",
              engine_labels: Mapping[str, str] | None = None) -> Node:
    node = Node(id=node_id)
    node.spec.availability = AVAIL[availability]
    node.spec.labels.update(labels or {})
    node.status.state = STATE[state]
    node.role = NodeRole.NODE_ROLE_MANAGER if role == "manager" else NodeRole.NODE_ROLE_WORKER
    node.description.hostname = hostname or node_id
    node.description.os = os
    node.description.architecture = arch
    node.description.resources.nano_cpus = int(cpus * CPU)
    node.description.resources.memory_bytes = memory
    node.description.engine_labels.update(engine_labels or {})
    return node


def nodes_map(*nodes: Node) -> dict[str, Node]:
    return {n.id: n for n in nodes}


def make_service(service_id: str = "svc", *, replicas: int | None = 1, mode: str = "replicated",
                 image: str = "busybox", version: int = 1, restart: str = "any",
                 delay: float | None = None, max_attempts: int = 0, window: float = 0,
                 parallelism: int = 1, order: str = "", history: int = 0,
                 constraints: Iterable[str] = (), preferences: Iterable[str] = (),
                 max_replicas: int = 0, reserve_cpus: float = 0,
                 reserve_memory: int = 0, host_ports: Iterable[int] = ()) -> Service:
    svc = Service(id=service_id)
    svc.meta.version = version
    svc.spec.name = service_id
    if mode == "global":
        svc.spec.__getattribute__("global").SetInParent()
    else:
        svc.spec.replicated.replicas = replicas or 0
    task = svc.spec.task
    task.container.image = image
    task.restart.condition = CONDITION[restart]
    if delay is not None:
        task.restart.delay_ns = int(delay * 1e9)
        task.restart.delay_set = True
    task.restart.max_attempts = max_attempts
    task.restart.window_ns = int(window * 1e9)
    task.placement.constraints.extend(constraints)
    task.placement.preferences.extend(PlacementPreference(spread=p) for p in preferences)
    task.placement.max_replicas = max_replicas
    task.resources.reservations.nano_cpus = int(reserve_cpus * CPU)
    task.resources.reservations.memory_bytes = reserve_memory
    svc.spec.update.parallelism = parallelism
    svc.spec.update.order = order
    svc.spec.task_history_limit = history
    for port in host_ports:
        svc.spec.endpoint.ports.append(PortConfig(protocol="tcp", target_port=port,
                                                  published_port=port,
                                                  publish_mode=PublishMode.PUBLISH_MODE_HOST))
    return svc


def make_task(task_id: str, service: Service, *, slot: int = 1, node: str = "n1",
              state: int = S.TASK_STATE_RUNNING, desired: int = S.TASK_STATE_RUNNING,
              at: float = NOW - 60, exit_code: int = 0, stale: bool = False,
              created: float | None = None) -> Task:
    """A task of ``service`` (with its current spec unless ``stale``)."""
    task = Task(id=task_id, service_id=service.id, service_name=service.spec.name,
                slot=slot, node_id=node, desired_state=desired)
    task.spec.CopyFrom(service.spec.task)
    task.spec_version = service.meta.version
    if stale:
        task.spec.container.image = task.spec.container.image + ":old"
        task.spec_version = service.meta.version - 1
    task.status.state = state
    task.status.timestamp = format_time(at)
    task.status.container.exit_code = exit_code
    task.meta.created_at = format_time(created if created is not None else at)
    task.endpoint.spec.CopyFrom(service.spec.endpoint)
    return task


def check_actions(actions: list) -> list:
    """The reconcile contract: no task named by two actions, at most one create per slot."""
    from collections import Counter

    from pyswarm.manager.orchestrator.actions import CreateTask

    named = Counter(getattr(a, "task_id", None) for a in actions if hasattr(a, "task_id"))
    assert all(n == 1 for n in named.values()), actions
    creates = Counter((a.slot, a.node_id) for a in actions if isinstance(a, CreateTask))
    assert all(n == 1 for n in creates.values()), actions
    return actions
