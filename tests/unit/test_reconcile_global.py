"""Global services: one task per eligible node; nodes joining, leaving, changing."""

from __future__ import annotations

import pytest

from pyswarm.manager.orchestrator.actions import CreateTask, RemoveTask, ShutdownTask
from pyswarm.manager.orchestrator.reconcile import reconcile
from tests.unit.cluster_builders import (
    NOW,
    S,
    check_actions,
    make_node,
    make_service,
    make_task,
    nodes_map,
)


def run(service, tasks, nodes, now=NOW):
    return check_actions(reconcile(service, tasks, nodes, now))


def gsvc(**kw):
    return make_service("g", mode="global", **kw)


def test_one_task_per_node():
    nodes = nodes_map(make_node("a"), make_node("b"), make_node("c", state="unknown"))
    assert run(gsvc(), [], nodes) == [CreateTask("g", 0, "a"), CreateTask("g", 0, "b"),
                                      CreateTask("g", 0, "c")]


def test_new_node_gets_a_task_existing_ones_do_not():
    svc = gsvc()
    nodes = nodes_map(make_node("a"), make_node("b"))
    assert run(svc, [make_task("ta", svc, slot=0, node="a")], nodes) == [
        CreateTask("g", 0, "b")]


@pytest.mark.parametrize("node, has_task, expected", [
    (make_node("a", availability="pause"), False, []),
    (make_node("a", availability="pause"), True, []),
    (make_node("a", state="disconnected"), False, []),
    (make_node("a", state="disconnected"), True, []),
    (make_node("a", availability="drain"), True, [ShutdownTask("ta", "node drained")]),
    (make_node("a", availability="drain"), False, []),
    (make_node("a", state="down"), True, [ShutdownTask("ta", "node down")]),
    (None, True, [ShutdownTask("ta", "node down")]),   # node removed: no replacement
])
def test_node_availability_and_state(node, has_task, expected):
    svc = gsvc()
    tasks = [make_task("ta", svc, slot=0, node="a")] if has_task else []
    nodes = nodes_map(node) if node is not None else {}
    assert run(svc, tasks, nodes) == expected


@pytest.mark.parametrize("constraint, creates_on", [
    ("node.labels.zone == east", ["a"]),
    ("node.labels.zone != east", ["b", "c"]),
    ("node.role == manager", ["c"]),
    ("node.hostname == host-b", ["b"]),
])
def test_constraints_choose_the_nodes(constraint, creates_on):
    nodes = nodes_map(make_node("a", labels={"zone": "east"}),
                      make_node("b", labels={"zone": "west"}, hostname="host-b"),
                      make_node("c", role="manager"))
    actions = run(gsvc(constraints=[constraint]), [], nodes)
    assert [a.node_id for a in actions] == creates_on


def test_node_that_stops_matching_loses_its_task():
    svc = gsvc(constraints=["node.labels.zone == east"])
    nodes = nodes_map(make_node("a", labels={"zone": "west"}))
    assert run(svc, [make_task("ta", svc, slot=0, node="a")], nodes) == [
        ShutdownTask("ta", "node no longer satisfies constraints")]


def test_failed_task_restarts_on_its_node_with_delay():
    svc = gsvc(delay=4)
    task = make_task("ta", svc, slot=0, node="a", state=S.TASK_STATE_FAILED, at=NOW - 1)
    actions = run(svc, [task], nodes_map(make_node("a")))
    assert actions[-1] == CreateTask("g", 0, "a", NOW + 3, "ta")
    assert isinstance(actions[0], ShutdownTask)


def test_failed_task_on_paused_node_waits():
    svc = gsvc()
    task = make_task("ta", svc, slot=0, node="a", state=S.TASK_STATE_FAILED)
    assert run(svc, [task], nodes_map(make_node("a", availability="pause"))) == []


def test_rolling_update_one_node_at_a_time():
    svc = gsvc(version=2, parallelism=1)
    tasks = [make_task(f"t{n}", svc, slot=0, node=n, stale=True) for n in "ab"]
    nodes = nodes_map(make_node("a"), make_node("b"))
    assert run(svc, tasks, nodes) == [ShutdownTask("ta", "service updated"),
                                      CreateTask("g", 0, "a", replaces="ta")]


def test_history_limit_per_node():
    svc = gsvc(history=1)
    old = [make_task(f"h{i}", svc, slot=0, node="a", state=S.TASK_STATE_FAILED,
                     desired=S.TASK_STATE_SHUTDOWN, at=NOW - 10 + i) for i in range(3)]
    live = make_task("live", svc, slot=0, node="a")
    assert run(svc, [*old, live], nodes_map(make_node("a"))) == [RemoveTask("h0"),
                                                                 RemoveTask("h1")]


def test_duplicate_tasks_on_one_node():
    svc = gsvc()
    a = make_task("x", svc, slot=0, node="a", created=NOW - 10)
    b = make_task("y", svc, slot=0, node="a", created=NOW - 5)
    assert run(svc, [a, b], nodes_map(make_node("a"))) == [
        ShutdownTask("x", "duplicate task for slot")]
