"""Global services: one task on every eligible node.

Policy: a node takes a new task when it is READY or UNKNOWN (registered, session not yet
up), ACTIVE, and satisfies the service's constraints. A PAUSED (or DISCONNECTED) node
keeps the task it has but gets none: an ended task there waits to be restarted until the
node is active again. A node that is DOWN or gone, DRAINED, or no longer satisfies the
constraints has its task shut down, and nothing replaces it elsewhere: the task belongs
to the node. Each node is a slot (slot 0 plus the node id) for slots.py, the rolling
update and the history limit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from pyswarm.manager.orchestrator.actions import Action, CreateTask, ShutdownTask
from pyswarm.manager.orchestrator.history import history_removals
from pyswarm.manager.orchestrator.slots import SlotOutcome, reconcile_slot
from pyswarm.manager.orchestrator.tasks import SpecCheck, is_runnable
from pyswarm.manager.orchestrator.update import plan_update
from pyswarm.manager.scheduler.constraints import Constraint, matches, parse_constraints
from pyswarm.proto.objects_pb2 import (
    NODE_STATE_DOWN,
    NODE_STATE_READY,
    NODE_STATE_UNKNOWN,
    Node,
    NodeAvailability,
    Service,
    Task,
)

_TAKES_NEW = (NODE_STATE_READY, NODE_STATE_UNKNOWN)


def _why_not_here(node: Node | None, constraints: Sequence[Constraint]) -> str | None:
    """Why the service's task must leave this node (None: it may stay)."""
    if node is None or node.status.state == NODE_STATE_DOWN:
        return "node down"
    if node.spec.availability == NodeAvailability.NODE_AVAILABILITY_DRAIN:
        return "node drained"
    if not matches(constraints, node):
        return "node no longer satisfies constraints"
    return None


def _takes_new(node: Node) -> bool:
    return (node.status.state in _TAKES_NEW
            and node.spec.availability == NodeAvailability.NODE_AVAILABILITY_ACTIVE)


def reconcile_global(service: Service, tasks: Sequence[Task], nodes: Mapping[str, Node],
                     now: float) -> list[Action]:
    """Raises InvalidArgument for a bad constraint (the control API rejects those first)."""
    constraints = parse_constraints(service.spec.task.placement.constraints)
    spec = SpecCheck(service)
    by_node: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        by_node[task.node_id].append(task)
    actions: list[Action] = []

    # A global task must name its node; one that does not is stray.
    for task in by_node.pop("", []):
        if is_runnable(task):
            actions.append(ShutdownTask(task.id, "global task without a node"))

    outcomes: list[SlotOutcome] = []
    for node_id in sorted(nodes.keys() | by_node.keys()):
        node = nodes.get(node_id)
        history = by_node.get(node_id, [])
        held = [t for t in history if is_runnable(t)]
        reason = _why_not_here(node, constraints)
        if reason is not None:
            actions.extend(ShutdownTask(t.id, reason) for t in held)
        elif held:
            assert node is not None
            outcome = reconcile_slot(service, 0, node_id, held, history, spec,
                                     lambda _task: None, _takes_new(node), now)
            actions.extend(outcome.actions)
            outcomes.append(outcome)
        elif node is not None and _takes_new(node):
            actions.append(CreateTask(service.id, 0, node_id))
        actions.extend(history_removals(service, history))

    actions.extend(plan_update(service, outcomes))
    return actions
