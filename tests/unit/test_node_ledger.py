"""NodeLedger: the scheduler's NodeInfos kept from one task write at a time must be what a
pass building them from every task would see, and the loop's later passes must count its
own placements once, and free what ended."""

from __future__ import annotations

import asyncio
import random

from pyswarm.manager.loops.scheduler import Scheduler
from pyswarm.manager.scheduler.nodeinfo import NodeInfo, NodeLedger, build_node_infos, share_of
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto import objects_pb2 as opb
from tests.unit.cluster_builders import NOW, S, make_node, make_service, make_task

NODES = [make_node(f"n{i}") for i in range(4)]
SERVICES = [make_service("web", reserve_cpus=0.5, reserve_memory=1 << 28, host_ports=[80]),
            make_service("db", reserve_cpus=1), make_service("job")]
STATES = [S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED, S.TASK_STATE_RUNNING,
          S.TASK_STATE_COMPLETE, S.TASK_STATE_FAILED, S.TASK_STATE_REJECTED,
          S.TASK_STATE_SHUTDOWN]


def from_scratch(tasks: dict[str, opb.Task]) -> dict[str, NodeInfo]:
    """What a pass reading every task builds."""
    return build_node_infos(NODES, tasks.values(), NOW)


def summary(infos: dict[str, NodeInfo]) -> dict[str, tuple]:
    return {node_id: (dict(i.tasks_by_service), i.total_tasks, i.reserved.nano_cpus,
                      i.reserved.memory_bytes, dict(i.host_ports),
                      {k: sorted(v) for k, v in i.recent_failures.items() if v})
            for node_id, i in infos.items()}


def test_a_ledger_fed_every_write_matches_a_rebuild_from_every_task() -> None:
    rng = random.Random(5)
    for _ in range(30):
        ledger = NodeLedger()
        tasks: dict[str, opb.Task] = {}
        ledger.sync(0, NODES, lambda: [])
        for step in range(150):
            task_id = f"t{rng.randrange(40)}"
            if task_id in tasks and rng.random() < 0.15:
                del tasks[task_id]
                ledger.task_changed(task_id, None)
            else:
                task = make_task(task_id, rng.choice(SERVICES), slot=rng.randrange(1, 4),
                                 node=rng.choice(["", "n0", "n1", "n2", "n3", "gone"]),
                                 state=rng.choice(STATES),
                                 desired=rng.choice([S.TASK_STATE_RUNNING,
                                                     S.TASK_STATE_SHUTDOWN]),
                                 at=NOW - rng.randrange(200))
                tasks[task_id] = task
                ledger.task_changed(task_id, task)
            assert summary(ledger.infos) == summary(from_scratch(tasks)), step


def test_later_passes_count_the_loops_own_placements_once_and_free_ended_tasks() -> None:
    # One node with 4 CPUs; each task reserves 1.
    svc = make_service("web", reserve_cpus=1)

    def pending(task_id: str, slot: int) -> opb.Task:
        return make_task(task_id, svc, slot=slot, node="", state=S.TASK_STATE_PENDING)

    async def body() -> None:
        store = await Store.open(MemoryBackend())
        first = [pending(f"a{i}", i) for i in range(1, 4)]
        await store.update(lambda tx: [tx.create(o) for o in (make_node("n1"), svc, *first)])
        loop = asyncio.create_task(Scheduler(store, clock=lambda: NOW).run())
        try:
            await until(store, lambda v: all(v.get("task", t.id).node_id for t in first))
            # 1 CPU left: one of two more fits (counted twice, none would; forgotten, both)
            await store.update(lambda tx: [tx.create(pending(f"b{i}", 3 + i))
                                           for i in (1, 2)])
            await until(store, lambda v: sum(
                bool(v.get("task", t).node_id) for t in ("b1", "b2")) == 1
                and "insufficient CPU" in waiting(v).status.message)
            await asyncio.sleep(0.2)
            view = store.view()
            assert sum(bool(view.get("task", t).node_id) for t in ("b1", "b2")) == 1
            # A task that ends gives its CPU back: the waiting one is placed.
            done = opb.Task()
            done.CopyFrom(view.get("task", "a1"))
            done.status.state = S.TASK_STATE_COMPLETE
            await store.update(lambda tx: tx.update(done))
            await until(store, lambda v: all(v.get("task", t).node_id for t in ("b1", "b2")))
        finally:
            loop.cancel()

    asyncio.run(body())


def waiting(view) -> opb.Task:  # noqa: ANN001
    return next(view.get("task", t) for t in ("b1", "b2") if not view.get("task", t).node_id)


async def until(store: Store, check) -> None:  # noqa: ANN001
    for _ in range(1000):
        if check(store.view()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 10 s")


def test_a_placement_of_the_previous_loop_pass_is_ranked_as_a_task_of_its_node() -> None:
    # Three nodes, and a service's tasks come one pass at a time: spread puts each on an
    # empty node, which it can only do if it counts the tasks it placed before.
    svc = make_service("web")

    async def body() -> list[str]:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: [tx.create(o) for o in (
            make_node("n1"), make_node("n2"), make_node("n3"), svc)])
        loop = asyncio.create_task(Scheduler(store, clock=lambda: NOW).run())
        placed = []
        try:
            for slot in (1, 2, 3):
                task = make_task(f"t{slot}", svc, slot=slot, node="",
                                 state=S.TASK_STATE_PENDING)
                await store.update(lambda tx, t=task: tx.create(t))
                await until(store, lambda v, t=task.id: bool(v.get("task", t).node_id))
                placed.append(store.view().get("task", task.id).node_id)
        finally:
            loop.cancel()
        return placed

    assert sorted(asyncio.run(body())) == ["n1", "n2", "n3"]


def test_a_restarted_loop_does_not_trust_what_it_knew_before() -> None:
    # The manager restarts a loop that crashed (manager._supervise): the same Scheduler runs
    # again with a new watch, and what changed in between was never read as an event.
    svc = make_service("web", reserve_cpus=2)

    async def body() -> None:
        store = await Store.open(MemoryBackend())
        first = [make_task(f"a{i}", svc, slot=i, node="", state=S.TASK_STATE_PENDING)
                 for i in (1, 2)]
        await store.update(lambda tx: [tx.create(o) for o in (make_node("n1"), svc, *first)])
        scheduler = Scheduler(store, clock=lambda: NOW)
        loop = asyncio.create_task(scheduler.run())
        await until(store, lambda v: all(v.get("task", t.id).node_id for t in first))
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        # Meanwhile a task ends (its CPUs are free) and another comes.
        done = opb.Task()
        done.CopyFrom(store.view().get("task", "a1"))
        done.status.state = S.TASK_STATE_COMPLETE
        late = make_task("b1", svc, slot=3, node="", state=S.TASK_STATE_PENDING)
        await store.update(lambda tx: (tx.update(done), tx.create(late)))
        loop = asyncio.create_task(scheduler.run())
        try:
            await until(store, lambda v: bool(v.get("task", "b1").node_id))
        finally:
            loop.cancel()

    asyncio.run(body())


def test_a_task_holds_a_share_of_its_node_only_once_placed() -> None:
    """A global task is made with its node: until the scheduler has placed it there it
    holds nothing of it, told to stop or not; placed and told to stop, it holds its
    reservation (not its place in the spread) until its node reports it ended."""
    db = SERVICES[1]
    for desired in (S.TASK_STATE_RUNNING, S.TASK_STATE_SHUTDOWN):
        for state in (S.TASK_STATE_NEW, S.TASK_STATE_PENDING):
            assert share_of(make_task("g", db, node="n0", state=state, desired=desired)) is None
    stopping = share_of(make_task("g", db, node="n0", state=S.TASK_STATE_ASSIGNED,
                                  desired=S.TASK_STATE_SHUTDOWN))
    assert stopping is not None and stopping.nano_cpus == 1_000_000_000 and not stopping.counted
    assert share_of(make_task("g", db, node="n0", state=S.TASK_STATE_SHUTDOWN,
                              desired=S.TASK_STATE_SHUTDOWN)) is None
