"""The orchestrator skips task events that cannot change a decision — and only those.

The orchestrator loop does not reconcile a service when one of its tasks moves between
two states that `reconcile()` does not tell apart (manager/loops/orchestrator.py,
`_may_change_reconcile`). Checked here against `reconcile()` itself: in every scenario,
for every task and every such move (with the new timestamp a real report carries), the
decisions are the same before and after. If reconcile() ever starts to care about one of
these states, this fails.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from pyswarm.manager.config import PASS_CHUNK_TASKS
from pyswarm.manager.loops.orchestrator import Orchestrator, _may_change_reconcile
from pyswarm.manager.orchestrator.actions import CreateTask
from pyswarm.manager.orchestrator.reconcile import reconcile
from pyswarm.manager.scheduler.timestamps import format_time
from pyswarm.manager.store import Event, MemoryBackend, Store
from pyswarm.proto.objects_pb2 import Node, NodeRole, Service, Task
from tests.unit.cluster_builders import (
    AVAIL,
    NOW,
    STATE,
    S,
    make_node,
    make_service,
    make_task,
    nodes_map,
)

NODES = nodes_map(make_node("n1"), make_node("n2"), make_node("n3", state="down"))
ON_THE_WAY = [S.TASK_STATE_NEW, S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED,
              S.TASK_STATE_ACCEPTED, S.TASK_STATE_PREPARING, S.TASK_STATE_STARTING]
ALL_STATES = ON_THE_WAY + [S.TASK_STATE_RUNNING, S.TASK_STATE_COMPLETE,
                           S.TASK_STATE_SHUTDOWN, S.TASK_STATE_FAILED, S.TASK_STATE_REJECTED]


def scenarios() -> dict[str, tuple[Service, list[Task]]]:
    out = {}
    svc = make_service(replicas=2)
    out["scale down, mixed states"] = (svc, [
        make_task("a", svc, slot=1, node="n1", state=S.TASK_STATE_STARTING),
        make_task("b", svc, slot=2, node="n2", state=S.TASK_STATE_ACCEPTED),
        make_task("c", svc, slot=3, node="n1", state=S.TASK_STATE_RUNNING)])
    svc = make_service(replicas=2, version=2, order="start-first", parallelism=1)
    out["start-first update in flight"] = (svc, [
        make_task("old1", svc, slot=1, node="n1", stale=True),
        make_task("new1", svc, slot=1, node="n2", state=S.TASK_STATE_PREPARING,
                  at=NOW - 5),
        make_task("old2", svc, slot=2, node="n2", stale=True)])
    svc = make_service(replicas=3, version=2, parallelism=2)
    out["rolling update, parallelism 2"] = (svc, [
        make_task("u1", svc, slot=1, node="n1", state=S.TASK_STATE_ASSIGNED, at=NOW - 1),
        make_task("s2", svc, slot=2, node="n2", stale=True),
        make_task("s3", svc, slot=3, node="n1", stale=True,
                  state=S.TASK_STATE_ACCEPTED)])
    svc = make_service(replicas=2, delay=5)
    out["duplicates, a lost node, a failure"] = (svc, [
        make_task("d1", svc, slot=1, node="n1", state=S.TASK_STATE_STARTING, at=NOW - 2),
        make_task("d2", svc, slot=1, node="n2", state=S.TASK_STATE_ACCEPTED, at=NOW - 3),
        make_task("lost", svc, slot=2, node="n3", state=S.TASK_STATE_PREPARING),
        make_task("f", svc, slot=2, node="n1", state=S.TASK_STATE_FAILED,
                  desired=S.TASK_STATE_SHUTDOWN, at=NOW - 30)])
    return out


def moved(task: Task, state: int) -> Task:
    out = Task()
    out.CopyFrom(task)
    out.status.state = state  # type: ignore[assignment]
    out.status.timestamp = format_time(NOW - 0.5)
    return out


@pytest.mark.parametrize("name", list(scenarios()))
def test_skipped_moves_never_change_what_reconcile_decides(name: str) -> None:
    service, tasks = scenarios()[name]
    skipped = 0
    for i, task in enumerate(tasks):
        for before, after in itertools.permutations(ALL_STATES, 2):
            old, new = moved(task, before), moved(task, after)
            if _may_change_reconcile(Event("update", "task", new, old)):
                continue
            skipped += 1
            with_old = [*tasks[:i], old, *tasks[i + 1:]]
            with_new = [*tasks[:i], new, *tasks[i + 1:]]
            assert (reconcile(service, with_old, NODES, NOW)
                    == reconcile(service, with_new, NODES, NOW)), (task.id, before, after)
    assert skipped  # the filter does skip something here


@pytest.mark.parametrize("after", [S.TASK_STATE_RUNNING, S.TASK_STATE_FAILED,
                                   S.TASK_STATE_COMPLETE, S.TASK_STATE_SHUTDOWN])
def test_running_or_ending_always_reconciles(after: int) -> None:
    svc = make_service()
    task = make_task("t", svc, state=S.TASK_STATE_STARTING)
    assert _may_change_reconcile(Event("update", "task", moved(task, after), task))


def test_new_deleted_moved_or_respecified_tasks_always_reconcile() -> None:
    svc = make_service()
    task = make_task("t", svc, state=S.TASK_STATE_STARTING)
    assert _may_change_reconcile(Event("create", "task", task, None))
    assert _may_change_reconcile(Event("delete", "task", task, task))
    for change in ("node_id", "desired_state", "spec_version"):
        other = moved(task, S.TASK_STATE_STARTING)
        setattr(other, change, {"node_id": "n2", "desired_state": S.TASK_STATE_SHUTDOWN,
                                "spec_version": 7}[change])
        assert _may_change_reconcile(Event("update", "task", other, task)), change


# ---- node events ---------------------------------------------------------------------------


def _node_changes() -> dict[str, Callable[[Node], None]]:
    """Ways a node can change, each applied to a copy of a ready, active node."""

    def state(value: str) -> Callable[[Node], None]:
        return lambda n: setattr(n.status, "state", STATE[value])

    def availability(value: str) -> Callable[[Node], None]:
        return lambda n: setattr(n.spec, "availability", AVAIL[value])

    return {
        "down": state("down"), "unknown": state("unknown"),
        "disconnected": state("disconnected"),
        "drain": availability("drain"), "pause": availability("pause"),
        "label": lambda n: n.spec.labels.update({"zone": "b"}),
        "hostname": lambda n: setattr(n.description, "hostname", "elsewhere"),
        "promoted": lambda n: setattr(n, "role", NodeRole.NODE_ROLE_MANAGER),
        # What reconcile() never reads: a status message, an address, the overlay
        # attachments the allocator writes, the store's own stamps.
        "message": lambda n: setattr(n.status, "message", "heartbeat failure"),
        "addr": lambda n: setattr(n.status, "addr", "10.0.0.9"),
        "attachment": lambda n: n.attachments.add(network_id="ov", addresses=["10.1.0.3/24"]),
        "stamps": lambda n: (setattr(n.meta, "version", 9),
                             setattr(n.meta, "updated_at", "2026-01-01T00:00:00.000Z")),
    }


IGNORED = {"message", "addr", "attachment", "stamps"}


def _cluster() -> tuple[dict[str, Node], list[Service], list[Task]]:
    nodes = nodes_map(make_node("n1", labels={"zone": "a"}), make_node("n2"),
                      make_node("n3", state="down"))
    on_n1 = make_service("on-n1", replicas=2)
    elsewhere = make_service("elsewhere", replicas=2)
    pending = make_service("pending", replicas=1)
    everywhere = make_service("everywhere", mode="global", replicas=None,
                              constraints=["node.labels.zone==a"])
    tasks = [
        make_task("a1", on_n1, slot=1, node="n1"),
        make_task("a2", on_n1, slot=2, node="n2", state=S.TASK_STATE_STARTING),
        make_task("b1", elsewhere, slot=1, node="n2"),
        make_task("b2", elsewhere, slot=2, node="n3", state=S.TASK_STATE_FAILED,
                  desired=S.TASK_STATE_SHUTDOWN),
        make_task("p1", pending, slot=1, node="", state=S.TASK_STATE_PENDING),
        make_task("g1", everywhere, slot=0, node="n1"),
    ]
    return nodes, [on_n1, elsewhere, pending, everywhere], tasks


def _marked_slots(event: Event, services: list[Service], tasks: list[Task],
                  nodes: list[Node]) -> tuple[bool, set[str], dict[str, set[int]]]:
    """(pass wanted, services marked whole, replicated services' marked slots)."""
    async def body() -> tuple[bool, set[str], dict[str, set[int]]]:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: [tx.create(o) for o in (*nodes, *services, *tasks)])
        orchestrator = Orchestrator(store)
        wanted = orchestrator._mark(event)
        return wanted, set(orchestrator._dirty), dict(orchestrator._slots)

    return asyncio.run(body())


def _marked(event: Event, services: list[Service], tasks: list[Task],
            nodes: list[Node]) -> tuple[bool, set[str]]:
    """(pass wanted, every service marked, whole or by slots)."""
    wanted, dirty, slots = _marked_slots(event, services, tasks, nodes)
    return wanted, dirty | set(slots)


@pytest.mark.parametrize("change", list(_node_changes()))
@pytest.mark.parametrize("node_id", ["n1", "n2", "n3"])
def test_a_node_event_marks_every_service_whose_decisions_it_can_change(
        change: str, node_id: str) -> None:
    """Checked against reconcile() itself: a service left unmarked decides the same with
    the node as it was and as it is now; a change reconcile() never reads marks nothing."""
    nodes, services, tasks = _cluster()
    new = Node()
    new.CopyFrom(nodes[node_id])
    _node_changes()[change](new)
    after = {**nodes, node_id: new}
    wanted, whole, slots = _marked_slots(Event("update", "node", new, nodes[node_id]),
                                         services, tasks, list(nodes.values()))
    dirty = whole | set(slots)
    for service in services:
        mine = [t for t in tasks if t.service_id == service.id]
        before, now = reconcile(service, mine, nodes, NOW), reconcile(service, mine, after, NOW)
        if before != now:
            assert service.id in dirty, (change, node_id, service.id)
        if service.id in slots and service.id not in whole:
            # Marked by its slots: the decisions of its other slots did not change.
            marked = slots[service.id]
            assert ([a for a in before if _slot(a, mine) not in marked]
                    == [a for a in now if _slot(a, mine) not in marked]), (change, node_id)
    if change in IGNORED:
        assert not wanted and not dirty
    # Replicated services with no task on the node are never its business.
    on_node = {t.service_id for t in tasks if t.node_id == node_id}
    assert dirty <= on_node | {"everywhere"}


def _slot(action: Any, tasks: list[Task]) -> int:
    if isinstance(action, CreateTask):
        return action.slot
    return next(t.slot for t in tasks if t.id == action.task_id)


def test_a_new_or_removed_node_marks_the_global_services_and_its_tasks_services() -> None:
    nodes, services, tasks = _cluster()
    fresh = make_node("n4", labels={"zone": "a"})
    wanted, dirty = _marked(Event("create", "node", fresh, None), services, tasks,
                            list(nodes.values()))
    assert wanted and dirty == {"everywhere"}
    wanted, dirty = _marked(Event("delete", "node", nodes["n1"], nodes["n1"]), services,
                            tasks, list(nodes.values()))
    assert wanted and dirty == {"on-n1", "everywhere"}


def test_a_pass_over_a_large_cluster_commits_in_chunks_and_reaches_every_service() -> None:
    """A pass reconciles and commits about PASS_CHUNK_TASKS tasks' worth of services at a
    time (each commit an await, so heartbeats are heard in between), and still acts on
    every dirty service."""
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        big = PASS_CHUNK_TASKS * 3 // 5
        services = [make_service("a", replicas=big), make_service("b", replicas=big),
                    make_service("c", replicas=10)]
        await store.update(lambda tx: [tx.create(o) for o in (make_node("n1"), *services)])
        orchestrator = Orchestrator(store)
        orchestrator._dirty = {"a", "b", "c"}
        await orchestrator._tick()  # no tasks yet: one chunk

        def count(service_id: str) -> int:
            return len(store.view().find("task", service_id=service_id))

        assert [count(s) for s in "abc"] == [big, big, 10]

        def scale_up(tx: Any) -> None:
            for service_id in "abc":
                svc = Service()
                svc.CopyFrom(tx.get("service", service_id))
                svc.spec.replicated.replicas += 1
                tx.update(svc)

        await store.update(scale_up)
        commits = store.metrics.snapshot().get("store_commits", 0)
        orchestrator._dirty = {"a", "b", "c"}
        held = await orchestrator._tick()  # the seconds it held the loop: its rest
        assert store.metrics.snapshot().get("store_commits", 0) - commits == 2  # a | b, c
        assert 0 < held <= store.metrics.snapshot()["orchestrator_seconds"]
        assert [count(s) for s in "abc"] == [big + 1, big + 1, 11]

    asyncio.run(body())


def test_a_node_going_down_replaces_its_tasks_by_their_slots_alone() -> None:
    """The loop end to end: the tasks of a node that went down are shut down and replaced
    in their slots, by a pass over those slots (orchestrator_slot_reconciles), and the
    tasks elsewhere are left alone."""
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        svc = make_service("web", replicas=6)
        tasks = [make_task(f"t{slot}", svc, slot=slot, node="n1" if slot <= 2 else "n2")
                 for slot in range(1, 7)]
        await store.update(lambda tx: [tx.create(o) for o in (
            make_node("n1"), make_node("n2"), svc, *tasks)])
        loop = asyncio.create_task(Orchestrator(store).run())
        try:
            await asyncio.sleep(0.2)  # the first pass: nothing to do
            down = Node()
            down.CopyFrom(store.view().get("node", "n1"))
            down.status.state = STATE["down"]
            await store.update(lambda tx: tx.update(down))
            for _ in range(1000):
                if len(store.view().find("task", service_id="web")) == 8:
                    break
                await asyncio.sleep(0.01)
            view = store.view()
            for task_id in ("t1", "t2"):
                assert view.get("task", task_id).desired_state == S.TASK_STATE_SHUTDOWN
            for task_id in ("t3", "t4", "t5", "t6"):
                assert view.get("task", task_id).desired_state == S.TASK_STATE_RUNNING
            fresh = [t for t in view.find("task", service_id="web")
                     if t.id not in {f"t{s}" for s in range(1, 7)}]
            assert sorted(t.slot for t in fresh) == [1, 2]
            assert store.metrics.snapshot().get("orchestrator_slot_reconciles", 0) >= 1
        finally:
            loop.cancel()

    asyncio.run(body())


def test_a_task_event_marks_its_slot_of_a_replicated_service_and_a_global_service_whole(
) -> None:
    nodes, services, tasks = _cluster()
    failed = Task()
    failed.CopyFrom(tasks[0])  # a1: on-n1, slot 1
    failed.status.state = S.TASK_STATE_FAILED
    wanted, whole, slots = _marked_slots(Event("update", "task", failed, tasks[0]), services,
                                         tasks, list(nodes.values()))
    assert wanted and not whole and slots == {"on-n1": {1}}
    ended = Task()
    ended.CopyFrom(tasks[-1])  # g1: the global service's
    ended.status.state = S.TASK_STATE_FAILED
    wanted, whole, slots = _marked_slots(Event("update", "task", ended, tasks[-1]), services,
                                         tasks, list(nodes.values()))
    assert wanted and whole == {"everywhere"} and not slots
