"""reconcile_slots: for the slots a node event concerns, the same actions as reconciling
the whole service, or None when the service is not steady and must be reconciled whole."""

from __future__ import annotations

import random

from pyswarm.manager.orchestrator.actions import CreateTask, RemoveTask, ShutdownTask
from pyswarm.manager.orchestrator.reconcile import reconcile
from pyswarm.manager.orchestrator.replicated import reconcile_slots
from tests.unit.cluster_builders import (
    NOW,
    S,
    check_actions,
    make_node,
    make_service,
    make_task,
    nodes_map,
)


def slot_of(action, tasks) -> int:  # noqa: ANN001
    if isinstance(action, CreateTask):
        return action.slot
    assert isinstance(action, (ShutdownTask, RemoveTask))
    return next(t.slot for t in tasks if t.id == action.task_id)


def random_case(rng: random.Random):  # noqa: ANN201
    nodes = nodes_map(*(make_node(f"n{i}", state=rng.choice(["ready", "ready", "down"]),
                                  availability=rng.choice(["active", "active", "drain"]))
                        for i in range(4)))
    replicas = rng.randrange(1, 6)
    svc = make_service(replicas=replicas, version=9, history=rng.choice([0, 1, 2]),
                       restart=rng.choice(["any", "on-failure", "none"]),
                       delay=rng.choice([None, 0, 5]))
    tasks = []
    for i in range(rng.randrange(0, 14)):
        slot = rng.randrange(0 if rng.random() < 0.05 else 1, replicas + 2)
        task = make_task(f"t{i}", svc, slot=slot,
                         node=rng.choice(["", "n0", "n1", "n2", "n3", "gone"]),
                         state=rng.choice([S.TASK_STATE_RUNNING, S.TASK_STATE_RUNNING,
                                           S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED,
                                           S.TASK_STATE_FAILED, S.TASK_STATE_COMPLETE,
                                           S.TASK_STATE_SHUTDOWN]),
                         desired=rng.choice([S.TASK_STATE_RUNNING, S.TASK_STATE_RUNNING,
                                             S.TASK_STATE_SHUTDOWN]),
                         at=NOW - rng.randrange(1, 100), exit_code=rng.choice([0, 1]),
                         stale=rng.random() < 0.1)
        tasks.append(task)
    return svc, tasks, nodes


def test_the_slots_of_a_steady_service_get_what_a_whole_reconcile_gives_them() -> None:
    rng = random.Random(11)
    compared = 0
    for _ in range(6000):
        svc, tasks, nodes = random_case(rng)
        slots = set(rng.sample(range(1, 8), rng.randrange(1, 4)))
        if rng.random() < 0.1:
            slots.add(0)  # no replica: always the whole service's
        got = reconcile_slots(svc, tasks, slots, nodes, NOW)
        if got is None:
            continue
        compared += 1
        whole = check_actions(reconcile(svc, tasks, nodes, NOW))
        assert sorted(map(repr, check_actions(got))) == sorted(
            repr(a) for a in whole if slot_of(a, tasks) in slots), (svc, tasks, slots)
    assert compared > 500  # the steady case is common enough to be tested


def test_a_service_that_is_not_steady_is_reconciled_whole() -> None:
    nodes = nodes_map(make_node("n1"), make_node("n2", state="down"))
    svc = make_service(replicas=2, version=9)
    lost = make_task("lost", svc, slot=1, node="n2")
    ok = make_task("ok", svc, slot=2, node="n1")
    assert reconcile_slots(svc, [lost, ok], {1}, nodes, NOW) == [
        ShutdownTask("lost", "node down"), CreateTask("svc", 1, replaces="lost")]
    # scaled since: the other slots are concerned too
    assert reconcile_slots(make_service(replicas=3, version=9), [lost, ok], {1}, nodes,
                           NOW) is None
    # an update under way: so is the rolling update
    old = make_task("old", svc, slot=2, node="n1", stale=True)
    assert reconcile_slots(svc, [lost, old], {1}, nodes, NOW) is None
    # global services are reconciled whole
    assert reconcile_slots(make_service(mode="global"), [ok], {2}, nodes, NOW) is None
