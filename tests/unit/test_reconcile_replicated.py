"""Replicated services: scaling, lost nodes, drain/pause, rolling updates, history."""

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

NODES = nodes_map(make_node("n1"), make_node("n2"), make_node("n3"))


def run(service, tasks, nodes=NODES, now=NOW):
    return check_actions(reconcile(service, tasks, nodes, now))


def creates(actions):
    return [a for a in actions if isinstance(a, CreateTask)]


def shutdowns(actions):
    return {a.task_id: a.reason for a in actions if isinstance(a, ShutdownTask)}


# ---- steady state and scaling --------------------------------------------------------

def test_healthy_service_needs_nothing():
    svc = make_service(replicas=3)
    tasks = [make_task(f"t{i}", svc, slot=i, node=f"n{i}") for i in (1, 2, 3)]
    assert run(svc, tasks) == []


@pytest.mark.parametrize("existing, replicas, new_slots", [
    ([], 3, [1, 2, 3]),
    ([1], 3, [2, 3]),
    ([2, 5], 4, [1, 3]),          # new slots take the lowest free numbers
    ([1, 2], 2, []),
    ([], 0, []),
])
def test_scale_up_fills_lowest_free_slots(existing, replicas, new_slots):
    svc = make_service(replicas=replicas)
    tasks = [make_task(f"t{s}", svc, slot=s) for s in existing]
    actions = run(svc, tasks)
    assert [a.slot for a in creates(actions)] == new_slots
    assert all(a.delay_until == 0 and a.replaces == "" for a in creates(actions))


def test_scale_down_shuts_down_not_running_tasks_first():
    svc = make_service(replicas=2)
    tasks = [
        make_task("run1", svc, slot=1, node="n1"),
        make_task("pending", svc, slot=2, node="", state=S.TASK_STATE_PENDING),
        make_task("run3", svc, slot=3, node="n2"),
        make_task("starting", svc, slot=4, node="n3", state=S.TASK_STATE_STARTING),
    ]
    actions = run(svc, tasks)
    assert shutdowns(actions) == {"pending": "scale down", "starting": "scale down"}
    assert creates(actions) == []


def test_scale_down_prefers_nodes_with_most_copies_then_highest_slot():
    svc = make_service(replicas=3)
    placement = {1: "n1", 2: "n1", 3: "n1", 4: "n2", 5: "n2", 6: "n3"}
    tasks = [make_task(f"t{s}", svc, slot=s, node=n) for s, n in placement.items()]
    actions = run(svc, tasks)
    # n1 has 3 → drop t3 (highest slot there); then n1 and n2 tie at 2 → highest slot (t5);
    # then n1 has 2 → t2. Survivors: one per node.
    assert set(shutdowns(actions)) == {"t3", "t5", "t2"}


def test_scale_to_zero_shuts_everything_down():
    svc = make_service(replicas=0)
    tasks = [make_task(f"t{s}", svc, slot=s, node="n1") for s in (1, 2, 3)]
    assert set(shutdowns(run(svc, tasks))) == {"t1", "t2", "t3"}


def test_a_slot_still_stopping_is_refilled_only_once_its_task_has_ended():
    """Scale 4 -> 3 -> 4 within a stop grace period: slot 4's old task is told to shut
    down but still runs on a live node. A new slot-4 task now would run the slot twice at
    once (what the HA lab's slot watch caught); it waits, and the slot keeps its number."""
    svc = make_service(replicas=4)
    tasks = [make_task(f"t{s}", svc, slot=s, node=f"n{s}") for s in (1, 2, 3)]
    stopping = make_task("old4", svc, slot=4, node="n4", desired=S.TASK_STATE_SHUTDOWN)
    four = nodes_map(*NODES.values(), make_node("n4"))
    assert creates(run(svc, [*tasks, stopping], nodes=four)) == []
    stopping.status.state = S.TASK_STATE_SHUTDOWN  # it stopped: now the slot is free
    assert [a.slot for a in creates(run(svc, [*tasks, stopping], nodes=four))] == [4]
    # a stopping task on a node that is down will never say it ended: no waiting for it
    stopping.status.state = S.TASK_STATE_RUNNING
    down = nodes_map(*NODES.values(), make_node("n4", state="down"))
    assert [a.slot for a in creates(run(svc, [*tasks, stopping], nodes=down))] == [4]


def test_ended_tasks_the_manager_shut_down_do_not_hold_slots():
    svc = make_service(replicas=1)
    old = make_task("old", svc, slot=1, state=S.TASK_STATE_SHUTDOWN,
                    desired=S.TASK_STATE_SHUTDOWN)
    assert creates(run(svc, [old])) == [CreateTask("svc", 1)]


# ---- lost nodes, drain, pause --------------------------------------------------------

@pytest.mark.parametrize("nodes, reason", [
    (nodes_map(make_node("n1", state="down")), "node down"),
    (nodes_map(), "node down"),                                 # node removed
    (nodes_map(make_node("n1", availability="drain")), "node drained"),
])
def test_task_on_lost_node_is_replaced_at_once(nodes, reason):
    svc = make_service(replicas=1, delay=30)
    task = make_task("t1", svc, slot=1, node="n1")
    actions = run(svc, [task], nodes)
    assert actions == [ShutdownTask("t1", reason), CreateTask("svc", 1, replaces="t1")]


@pytest.mark.parametrize("state", ["unknown", "disconnected"])
def test_node_not_down_keeps_its_tasks(state):
    svc = make_service(replicas=1)
    task = make_task("t1", svc, slot=1, node="n1")
    assert run(svc, [task], nodes_map(make_node("n1", state=state))) == []


def test_pause_keeps_existing_tasks():
    svc = make_service(replicas=1)
    task = make_task("t1", svc, slot=1, node="n1")
    assert run(svc, [task], nodes_map(make_node("n1", availability="pause"))) == []


def test_unassigned_task_is_left_to_the_scheduler():
    svc = make_service(replicas=1)
    task = make_task("t1", svc, slot=1, node="", state=S.TASK_STATE_PENDING)
    assert run(svc, [task], nodes_map()) == []


def test_drain_moves_every_task_off_the_node():
    svc = make_service(replicas=3)
    tasks = [make_task("a", svc, slot=1, node="n1"), make_task("b", svc, slot=2, node="n1"),
             make_task("c", svc, slot=3, node="n2")]
    nodes = nodes_map(make_node("n1", availability="drain"), make_node("n2"))
    actions = run(svc, tasks, nodes)
    assert shutdowns(actions) == {"a": "node drained", "b": "node drained"}
    assert [(a.slot, a.replaces) for a in creates(actions)] == [(1, "a"), (2, "b")]


# ---- restarts inside reconcile -------------------------------------------------------

def test_failed_task_is_shut_down_and_replaced_after_the_delay():
    svc = make_service(replicas=1, delay=10)
    task = make_task("t1", svc, slot=1, state=S.TASK_STATE_FAILED, exit_code=2, at=NOW - 3)
    actions = run(svc, [task])
    assert creates(actions) == [CreateTask("svc", 1, delay_until=NOW + 7, replaces="t1")]
    assert "t1" in shutdowns(actions)


def test_restart_none_leaves_the_slot_empty_and_stable():
    svc = make_service(replicas=2, restart="none")
    tasks = [make_task("t1", svc, slot=1, state=S.TASK_STATE_COMPLETE),
             make_task("t2", svc, slot=2, state=S.TASK_STATE_FAILED, exit_code=1)]
    assert run(svc, tasks) == []


def test_after_a_restart_the_next_reconcile_is_quiet():
    svc = make_service(replicas=1)
    old = make_task("t1", svc, slot=1, state=S.TASK_STATE_FAILED,
                    desired=S.TASK_STATE_SHUTDOWN)
    new = make_task("t2", svc, slot=1, node="", state=S.TASK_STATE_NEW)
    assert run(svc, [old, new]) == []


def test_duplicate_tasks_in_a_slot_keep_the_running_one():
    svc = make_service(replicas=1)
    a = make_task("a", svc, slot=1, node="n1", state=S.TASK_STATE_PENDING, created=NOW - 5)
    b = make_task("b", svc, slot=1, node="n2", created=NOW - 50)
    assert run(svc, [a, b]) == [ShutdownTask("a", "duplicate task for slot")]


# ---- rolling updates -----------------------------------------------------------------

def stale_service(n, **kw):
    svc = make_service(replicas=n, version=2, **kw)
    tasks = [make_task(f"t{s}", svc, slot=s, node=f"n{(s - 1) % 3 + 1}", stale=True)
             for s in range(1, n + 1)]
    return svc, tasks


@pytest.mark.parametrize("parallelism, replaced", [(1, 1), (2, 2), (0, 4), (9, 4)])
def test_update_replaces_parallelism_tasks_at_a_time(parallelism, replaced):
    svc, tasks = stale_service(4, parallelism=parallelism)
    actions = run(svc, tasks)
    assert [a.slot for a in creates(actions)] == list(range(1, replaced + 1))
    assert all(shutdowns(actions)[f"t{s}"] == "service updated"
               for s in range(1, replaced + 1))


def test_update_waits_for_the_new_task_to_run():
    svc, tasks = stale_service(3, parallelism=1)
    tasks[0] = make_task("new1", svc, slot=1, node="", state=S.TASK_STATE_PENDING)
    assert run(svc, tasks) == []
    tasks[0] = make_task("new1", svc, slot=1, node="n1")
    actions = run(svc, tasks)
    assert actions == [ShutdownTask("t2", "service updated"),
                       CreateTask("svc", 2, replaces="t2")]


def test_update_takes_not_running_tasks_first():
    svc, tasks = stale_service(3, parallelism=1)
    tasks[2] = make_task("t3", svc, slot=3, node="n3", state=S.TASK_STATE_STARTING,
                         stale=True)
    assert creates(run(svc, tasks)) == [CreateTask("svc", 3, replaces="t3")]


def test_start_first_keeps_the_old_task_until_the_new_one_runs():
    svc, tasks = stale_service(1, order="start-first")
    assert run(svc, tasks) == [CreateTask("svc", 1, replaces="t1")]
    starting = make_task("new", svc, slot=1, node="n2", state=S.TASK_STATE_STARTING)
    assert run(svc, [*tasks, starting]) == []
    running = make_task("new", svc, slot=1, node="n2")
    assert run(svc, [*tasks, running]) == [ShutdownTask("t1", "replaced by updated task")]


def test_start_first_new_task_failing_is_restarted_with_delay_old_keeps_serving():
    svc, tasks = stale_service(1, order="start-first", delay=5)
    failed = make_task("new", svc, slot=1, node="n2", state=S.TASK_STATE_FAILED,
                       exit_code=1, at=NOW - 1)
    actions = run(svc, [*tasks, failed])
    assert "t1" not in shutdowns(actions)
    assert creates(actions) == [CreateTask("svc", 1, delay_until=NOW + 4, replaces="new")]


def test_scaling_alone_does_not_roll_tasks():
    svc = make_service(replicas=2, version=7)
    task = make_task("t1", svc, slot=1)
    task.spec_version = 3  # made before a scale; same spec
    assert creates(run(svc, [task])) == [CreateTask("svc", 2)]


def test_each_task_is_judged_by_the_spec_of_the_version_it_was_made_from():
    # A service at version 9 whose tasks were made at two earlier versions: those of
    # version 3 have the current spec (only scaled since), those of version 5 an older
    # image. Only the latter roll, however the tasks of one version are interleaved.
    svc = make_service(replicas=4, version=9, parallelism=4)
    tasks = []
    for slot in range(1, 5):
        task = make_task(f"t{slot}", svc, slot=slot, node=f"n{slot % 2 + 1}")
        if slot % 2:
            task.spec_version = 3
        else:
            task.spec_version = 5
            task.spec.container.image = "busybox:old"
        tasks.append(task)
    actions = run(svc, tasks)
    assert sorted(c.replaces for c in creates(actions)) == ["t2", "t4"]
    assert sorted(shutdowns(actions)) == ["t2", "t4"]


def test_force_update_rolls_tasks():
    svc = make_service(replicas=1, version=4)
    task = make_task("t1", svc, slot=1)
    task.spec_version = 3
    svc.spec.task.force_update = 1
    assert creates(run(svc, [task])) == [CreateTask("svc", 1, replaces="t1")]


# ---- history limit -------------------------------------------------------------------

@pytest.mark.parametrize("limit, ended, removed", [
    (0, 7, 2),   # default 5
    (2, 5, 3),
    (5, 5, 0),
    (1, 1, 0),
])
def test_history_limit_removes_the_oldest_ended_tasks(limit, ended, removed):
    svc = make_service(replicas=1, history=limit)
    history = [make_task(f"h{i}", svc, slot=1, state=S.TASK_STATE_FAILED,
                         desired=S.TASK_STATE_SHUTDOWN, at=NOW - 100 + i)
               for i in range(ended)]
    live = make_task("live", svc, slot=1)
    actions = run(svc, [*reversed(history), live])
    assert actions == [RemoveTask(f"h{i}") for i in range(removed)]


def test_history_keeps_tasks_still_stopping():
    svc = make_service(replicas=1, history=1)
    stopping = [make_task(f"s{i}", svc, slot=1, desired=S.TASK_STATE_SHUTDOWN)
                for i in range(3)]
    assert run(svc, [*stopping, make_task("live", svc, slot=1)]) == []


# ---- determinism ---------------------------------------------------------------------

def test_result_does_not_depend_on_task_order():
    svc = make_service(replicas=4, version=2)
    tasks = [make_task(f"t{s}", svc, slot=s, node=f"n{s % 3 + 1}", stale=s % 2 == 0)
             for s in range(1, 8)]
    tasks.append(make_task("f", svc, slot=9, state=S.TASK_STATE_FAILED))
    assert run(svc, tasks) == run(svc, list(reversed(tasks)))
