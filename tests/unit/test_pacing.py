"""When the manager's loops run a pass (manager/loops/pacing.py), with a real Watch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pyswarm.manager.loops import pacing
from pyswarm.manager.loops.pacing import run_passes
from pyswarm.manager.store import Event
from pyswarm.manager.store.watch import Watch
from pyswarm.proto import objects_pb2 as opb

BACKLOG = 40
PASS_SECONDS = 0.15  # longer than LOOP_MAX_DEFER: a loop on a large cluster


def _commit(watch: Watch, revision: int) -> None:
    watch.publish([Event("update", "task", opb.Task(id=f"t{revision}"), None)], revision)


def test_commits_made_during_a_pass_and_its_rest_cost_one_more_pass_not_one_each() -> None:
    """A deploy commits hundreds of times while a pass over a large cluster runs. Those
    commits wait in the watch; once the loop reads again, they are one backlog and call
    for one pass. (They cost a pass each when the defer window was counted from before the
    rest: at a thousand nodes the orchestrator was still reconciling the whole cluster
    every 0.4 s, for the deploy's old commits, long after the deploy had converged.)"""

    async def body() -> tuple[int, int]:
        watch = Watch(None, lambda _: None)
        seen = 0
        passes = 0

        def wants(event: Event) -> bool:
            nonlocal seen
            seen += 1
            return True

        async def run_pass() -> None:
            nonlocal passes
            passes += 1
            if passes == 1:
                for revision in range(2, BACKLOG + 2):
                    _commit(watch, revision)
            await asyncio.sleep(PASS_SECONDS)
            if seen == BACKLOG + 1:
                watch.close()

        _commit(watch, 1)
        await asyncio.wait_for(run_passes(watch, wants, run_pass), 60)
        return passes, seen

    passes, seen = asyncio.run(body())
    assert seen == BACKLOG + 1
    assert passes <= 3, f"{passes} passes for one backlog of {BACKLOG} commits"


def test_a_steady_stream_of_commits_still_gets_passes() -> None:
    """Under commits that never stop, a pass still runs (at least every LOOP_MAX_DEFER of
    reading): the loop never waits for a quiet moment that does not come."""

    async def body() -> int:
        watch = Watch(None, lambda _: None)
        passes = 0

        async def writer() -> None:
            revision = 0
            while True:
                revision += 1
                _commit(watch, revision)
                await asyncio.sleep(0.001)

        async def run_pass() -> None:
            nonlocal passes
            passes += 1
            if passes == 3:
                watch.close()

        task = asyncio.create_task(writer())
        try:
            await asyncio.wait_for(run_passes(watch, lambda _: True, run_pass), 30)
        finally:
            task.cancel()
        return passes

    assert asyncio.run(body()) == 3


def test_a_pass_that_awaits_rests_as_long_as_it_held_the_loop(monkeypatch: Any) -> None:
    """The orchestrator's pass awaits a commit after each chunk of services; others use
    the loop meanwhile. Its rest is the time it held the loop (what it returns), not its
    wall time: resting for others' work only delayed the next pass (re-placing the tasks
    of nodes found DOWN a moment later). A pass that returns nothing rests its wall time."""
    rests: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        rests.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(pacing, "asyncio", SimpleNamespace(sleep=sleep))

    async def body(held: float | None) -> None:
        watch = Watch(None, lambda _: None)

        async def run_pass() -> float | None:
            await real_sleep(0.05)  # awaiting commits while the loop runs others' work
            watch.close()
            return held

        _commit(watch, 1)
        await asyncio.wait_for(run_passes(watch, lambda _: True, run_pass), 10)

    asyncio.run(body(0.01))
    assert rests == [0.01]
    rests.clear()
    asyncio.run(body(None))
    assert len(rests) == 1 and rests[0] >= 0.05
