"""Replicated services: ``replicas`` slots, each with one healthy task.

Policy (SwarmKit's): a slot is held by the tasks the manager still wants to run
(desired <= RUNNING), ended or not. Too few slots: new slots take the lowest free numbers,
except that a slot whose shut-down task still runs on a live node waits for it to end
(unlike SwarmKit, which starts the new task at once: the slot would run twice).
Too many (scale down): whole slots are shut down, those whose task is not running first
(pending, starting, lost, ended), then those on the nodes with the most tasks of the
service (recounted after each pick, so the survivors stay spread), then the highest slot.
Every other slot goes through slots.py (lost nodes, restarts, start-first pairs), then the
rolling update, then the history limit.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from pyswarm.manager.orchestrator.actions import Action, CreateTask, ShutdownTask
from pyswarm.manager.orchestrator.history import history_removals
from pyswarm.manager.orchestrator.slots import (
    RUNNING,
    NodeProblem,
    SlotOutcome,
    reconcile_slot,
)
from pyswarm.manager.orchestrator.tasks import SpecCheck, has_ended, is_runnable
from pyswarm.manager.orchestrator.update import plan_update
from pyswarm.proto.objects_pb2 import (
    NODE_AVAILABILITY_DRAIN,
    NODE_STATE_DOWN,
    Node,
    Service,
    Task,
)


def node_problem(nodes: Mapping[str, Node]) -> NodeProblem:
    """Why a live replicated task cannot stay on its node (None: it can)."""

    def problem(task: Task) -> str | None:
        if not task.node_id:
            return None  # not placed yet: the scheduler's business
        node = nodes.get(task.node_id)
        if node is None or node.status.state == NODE_STATE_DOWN:
            return "node down"
        if node.spec.availability == NODE_AVAILABILITY_DRAIN:
            return "node drained"
        return None

    return problem



def reconcile_replicated(service: Service, tasks: Sequence[Task], nodes: Mapping[str, Node],
                         now: float) -> list[Action]:
    spec = SpecCheck(service)
    problem = node_problem(nodes)
    by_slot: dict[int, list[Task]] = defaultdict(list)
    for task in tasks:
        by_slot[task.slot].append(task)
    actions: list[Action] = []

    # Slot 0 is not a replica (a global task left from a mode change): stop it.
    for task in by_slot.pop(0, []):
        if is_runnable(task):
            actions.append(ShutdownTask(task.id, "not a replica slot"))

    held = {slot: [t for t in ts if is_runnable(t)] for slot, ts in by_slot.items()}
    held = {slot: ts for slot, ts in held.items() if ts}
    want = service.spec.replicated.replicas

    victims = _scale_down(held, len(held) - want, problem)
    for slot in sorted(victims):
        actions.extend(ShutdownTask(t.id, "scale down") for t in held[slot])

    outcomes: list[SlotOutcome] = []
    for slot in sorted(held.keys() - victims):
        outcome = reconcile_slot(service, slot, "", held[slot], by_slot[slot], spec, problem,
                                 True, now)
        actions.extend(outcome.actions)
        outcomes.append(outcome)

    # Scale up: the lowest slot numbers no task holds. A slot whose last task was shut
    # down but still runs on a live node (scaled down, then up again within its stop grace)
    # is refilled only once that task has ended: the slot never runs twice at once.
    stopping = {slot for slot, ts in by_slot.items() if slot not in held and any(
        t.node_id and not has_ended(t) and problem(t) is None for t in ts)}
    missing = want - len(held)
    slot = 0
    while missing > 0:
        slot += 1
        if slot not in held:
            if slot not in stopping:
                actions.append(CreateTask(service.id, slot))
            missing -= 1

    actions.extend(plan_update(service, outcomes))
    for slot in sorted(by_slot):
        actions.extend(history_removals(service, by_slot[slot]))
    return actions


def reconcile_slots(service: Service, tasks: Sequence[Task], slots: set[int],
                    nodes: Mapping[str, Node], now: float) -> list[Action] | None:
    """The actions `reconcile_replicated` would take for ``slots`` alone, when nothing else
    in the service can change: None when it could (the whole service is reconciled).

    A node that went down concerns the slots of the tasks it ran, and a task's change its
    own slot, not the other 999 of a service. In a steady service (as many slots held as
    replicas, no task in slot 0, every wanted task of the current spec) no slot's decision
    depends on another's: nothing is scaled and no rolling update runs, so the other
    slots' actions are what they were at the last pass, and any change to them marks them
    for a pass of their own. At 1,000 nodes, a hundred dying cost every service a reconcile
    of all its tasks, two or three times as their DOWNs came in (bench/scale.py)."""
    if service.spec.WhichOneof("mode") == "global" or 0 in slots:
        return None  # (slot 0 holds no replica: its tasks are the whole pass's business)
    spec = SpecCheck(service)
    held: set[int] = set()
    mine: dict[int, list[Task]] = defaultdict(list)
    for task in tasks:
        if task.slot in slots:
            mine[task.slot].append(task)
        if is_runnable(task):
            if task.slot == 0 or not spec.is_current(task):
                return None
            held.add(task.slot)
    if len(held) != service.spec.replicated.replicas:
        return None
    problem = node_problem(nodes)
    actions: list[Action] = []
    for slot in sorted(slots):
        slot_tasks = mine.get(slot, [])
        runnable = [t for t in slot_tasks if is_runnable(t)]
        if runnable:
            actions.extend(reconcile_slot(service, slot, "", runnable, slot_tasks, spec,
                                          problem, True, now).actions)
        actions.extend(history_removals(service, slot_tasks))
    return actions


def _scale_down(held: Mapping[int, list[Task]], excess: int, problem: NodeProblem) -> set[int]:
    """The ``excess`` slots to shut down (policy in the module docstring)."""
    if excess <= 0:
        return set()

    def running_on(tasks: list[Task]) -> str | None:
        """The node of the slot's running, healthy task (None: nothing running)."""
        for task in tasks:
            if (task.status.state == RUNNING and not has_ended(task)
                    and problem(task) is None):
                return task.node_id
        return None

    running = {slot: running_on(tasks) for slot, tasks in held.items()}
    idle = sorted((s for s, node in running.items() if node is None), reverse=True)
    victims = set(idle[:excess])
    excess -= len(victims)
    if excess <= 0:
        return victims
    per_node = Counter(node for node in running.values() if node is not None)
    # Lazy max-heap on (tasks on the node, slot): stale counts are re-pushed when popped.
    heap = [(-per_node[node], -slot, node) for slot, node in running.items()
            if node is not None]
    heapq.heapify(heap)
    while excess > 0 and heap:
        neg_count, neg_slot, node = heapq.heappop(heap)
        if -neg_count != per_node[node]:
            heapq.heappush(heap, (-per_node[node], neg_slot, node))
            continue
        victims.add(-neg_slot)
        per_node[node] -= 1
        excess -= 1
    return victims
