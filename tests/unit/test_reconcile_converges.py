"""Applying reconcile's actions (with a fake worker that starts everything) converges:
the service ends with ``replicas`` running tasks of its current spec and reconcile quiet."""

from __future__ import annotations

import itertools

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


def converge(svc, tasks, nodes, rounds=40):
    """Reconcile, apply, let the fake worker run everything, repeat until quiet."""
    tasks = {t.id: t for t in tasks}
    ids = itertools.count()
    healthy = sorted(n.id for n in nodes.values() if n.status.state == 2)  # READY
    for n in range(rounds):
        actions = check_actions(reconcile(svc, list(tasks.values()), nodes, NOW))
        if not actions:
            return list(tasks.values()), n
        for action in actions:
            if isinstance(action, CreateTask):
                node = action.node_id or healthy[next(ids) % len(healthy)]
                new = make_task(f"new{next(ids)}", svc, slot=action.slot, node=node,
                                state=S.TASK_STATE_PENDING, created=NOW + n)
                tasks[new.id] = new
            elif isinstance(action, ShutdownTask):
                tasks[action.task_id].desired_state = S.TASK_STATE_SHUTDOWN
            elif isinstance(action, RemoveTask):
                del tasks[action.task_id]
        for task in tasks.values():  # the worker: one step per round
            if task.desired_state == S.TASK_STATE_SHUTDOWN:
                if task.status.state < S.TASK_STATE_COMPLETE:
                    task.status.state = S.TASK_STATE_SHUTDOWN
            elif task.status.state < S.TASK_STATE_RUNNING:
                task.status.state = S.TASK_STATE_RUNNING
    raise AssertionError("did not converge")


def live_current(svc, tasks):
    return [t for t in tasks if t.desired_state == S.TASK_STATE_RUNNING
            and t.status.state == S.TASK_STATE_RUNNING
            and t.spec.container.image == svc.spec.task.container.image]


NODES = nodes_map(make_node("n1"), make_node("n2"), make_node("n3"),
                  make_node("n4", state="down"))


@pytest.mark.parametrize("replicas, existing", [(5, 0), (2, 6), (4, 4)])
@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("parallelism", [0, 1, 2])
@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_converges(replicas, existing, stale, parallelism, order):
    svc = make_service(replicas=replicas, version=3, parallelism=parallelism, order=order,
                       history=2)
    tasks = [make_task(f"t{s}", svc, slot=s, node=f"n{s % 4 + 1}", stale=stale)
             for s in range(1, existing + 1)]
    final, _ = converge(svc, tasks, NODES)
    assert len(live_current(svc, final)) == replicas
    assert not any(t.node_id == "n4" and t.desired_state == S.TASK_STATE_RUNNING
                   for t in final)
    slots = [t.slot for t in final if t.desired_state == S.TASK_STATE_RUNNING]
    assert len(slots) == len(set(slots)) == replicas
