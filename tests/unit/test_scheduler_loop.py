"""What the scheduler loop's passes count (manager/loops/scheduler.py): the
reservations of the tasks that hold them, the service's recent failures, and nothing of
the tasks that ended."""

from __future__ import annotations

import asyncio
import contextlib

from pyswarm.manager.loops.scheduler import Scheduler
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto.objects_pb2 import Task
from tests.unit.cluster_builders import NOW, S, make_node, make_service, make_task


def test_a_pass_counts_live_reservations_and_recent_failures_but_not_ended_tasks() -> None:
    web = make_service("web", reserve_cpus=1)
    big = make_service("big", reserve_cpus=3.5)
    side = make_service("side")
    tasks = [
        make_task("hog", big, node="n1"),  # n1: 3.5 of its 4 CPUs held, no room for 1
        make_task("crashed", web, node="n2", state=S.TASK_STATE_FAILED, at=NOW - 10),
        make_task("done", big, node="n3", state=S.TASK_STATE_COMPLETE),  # holds nothing
        make_task("s1", side, node="n3"),  # n3 runs one task; n2 none but a failure
        make_task("new", web, slot=2, node="", state=S.TASK_STATE_PENDING),
    ]

    async def body() -> str:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: [tx.create(o) for o in (
            make_node("n1"), make_node("n2"), make_node("n3"), web, big, side, *tasks)])
        return await placement_of(store, "new")

    # n1 has no room for the reservation; n2, emptier, ranks last for a service that just
    # failed there; the ended task on n3 holds nothing.
    assert asyncio.run(body()) == "n3"


async def placement_of(store: Store, task_id: str) -> str:
    """Run the scheduler loop until ``task_id`` is placed; its node."""
    loop = asyncio.create_task(Scheduler(store, clock=lambda: NOW).run())
    try:
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if node := store.view().get("task", task_id).node_id:
                return str(node)
        raise AssertionError(f"{task_id} was not placed")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


def test_a_task_told_to_stop_holds_its_reservation_until_it_has_stopped() -> None:
    """As SwarmKit's scheduler does: a task desired SHUTDOWN that still runs (a stop-first
    update, a scale-down) keeps its CPUs and memory on its node until its node reports it
    stopped, or a task placed meanwhile would overcommit the node. It no longer counts for
    the spread."""
    web = make_service("web", reserve_cpus=1)
    big = make_service("big", reserve_cpus=3.5)
    side = make_service("side")
    stopping = make_task("stopping", big, node="n1", desired=S.TASK_STATE_SHUTDOWN)
    tasks = [stopping,
             make_task("s1", side, node="n2"),  # n2 runs one task; n1 none that counts
             make_task("new", web, slot=1, node="", state=S.TASK_STATE_PENDING)]

    async def body() -> tuple[str, str]:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: [tx.create(o) for o in (
            make_node("n1"), make_node("n2"), web, big, side, *tasks)])
        first = await placement_of(store, "new")

        def stopped(tx: object) -> None:
            task = Task()
            task.CopyFrom(tx.get("task", "stopping"))  # type: ignore[attr-defined]
            task.status.state = S.TASK_STATE_SHUTDOWN
            tx.update(task)  # type: ignore[attr-defined]

        await store.update(stopped)
        await store.update(lambda tx: tx.create(
            make_task("later", web, slot=2, node="", state=S.TASK_STATE_PENDING)))
        return first, await placement_of(store, "later")

    # n1 runs nothing that counts for the spread, but the stopping task still holds 3.5 of
    # its 4 CPUs; once stopped, n1 (one task fewer than n2's two) has room again.
    assert asyncio.run(body()) == ("n2", "n1")
