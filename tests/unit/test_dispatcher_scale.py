"""The dispatcher's behaviour at scale, over a real (in-memory) store: one watch routed to
the sessions a commit touched, status reports group-committed across nodes, removal
notices, and heartbeat deadlines that survive a stall of the manager itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from pyswarm.common.errors import PermissionDenied
from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher.dispatcher import Dispatcher
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from tests.unit.test_dispatcher import FAST, Beats, next_assignments, run, shut_down, task

S = opb.TaskState
READY, DOWN = opb.NODE_STATE_READY, opb.NODE_STATE_DOWN
Beat = Callable[[range, Callable[[], bool], float], Coroutine[Any, Any, None]]


async def _cluster(nodes: int, per_node: int) -> tuple[Store, Dispatcher]:
    store = await Store.open(MemoryBackend())
    await store.update(lambda tx: [tx.create(task(f"t{n}-{i}", f"n{n}"))
                                   for n in range(nodes) for i in range(per_node)])
    dispatcher = Dispatcher(store, FAST, set())
    await dispatcher.start()
    return store, dispatcher


def _running(task_id: str) -> cpb.TaskStatusUpdate:
    return cpb.TaskStatusUpdate(task_id=task_id,
                                status=opb.TaskStatus(state=S.TASK_STATE_RUNNING))


def test_status_reports_of_many_nodes_share_commits_and_each_gets_its_own_answer() -> None:
    async def body() -> None:
        store, d = await _cluster(20, 2)
        streams = []
        for n in range(20):
            stream = d.session(cpb.SessionRequest(node_id=f"n{n}"))
            first = await anext(stream)
            streams.append((stream, first.session_id))
        before = store.metrics.snapshot().get("dispatcher_status_commits", 0)
        # Every node reports its own two tasks and, wrongly, one of its neighbour's.
        answers = await asyncio.gather(*(
            d.update_task_status(cpb.UpdateTaskStatusRequest(
                node_id=f"n{n}", session_id=sid,
                updates=[_running(f"t{n}-0"), _running(f"t{n}-1"),
                         _running(f"t{(n + 1) % 20}-0")]))
            for n, (_, sid) in enumerate(streams)))
        for n, answer in enumerate(answers):
            assert list(answer.refused) == [f"t{(n + 1) % 20}-0"]
        view = store.view()
        assert all(view.get("task", f"t{n}-{i}").status.state == S.TASK_STATE_RUNNING
                   for n in range(20) for i in range(2))
        commits = store.metrics.snapshot()["dispatcher_status_commits"] - before
        assert commits <= 2, f"20 nodes' reports took {commits} commits"
        for stream, _ in streams:
            await stream.aclose()
        await d.stop()

    run(body())


def test_a_commit_reaches_only_the_sessions_of_the_nodes_it_touched() -> None:
    async def body() -> None:
        store, d = await _cluster(2, 1)
        one = d.session(cpb.SessionRequest(node_id="n0"))
        two = d.session(cpb.SessionRequest(node_id="n1"))
        await anext(one)
        await anext(two)

        await store.update(lambda tx: shut_down(tx, "t1-0"))
        message = await next_assignments(two)
        assert [t.id for t in message.assignments.update] == ["t1-0"]
        queued = list(d._sessions["n0"].queue._queue)  # type: ignore[attr-defined]
        # (its first NetworkState's marker, `True`, waits there until the stream reads on)
        assert not any(isinstance(i, cpb.SessionMessage) for i in queued), \
            "n0 was sent a change of n1's task"
        # And n0 still gets its own changes after that.
        await store.update(lambda tx: tx.delete("task", "t0-0"))
        assert list((await next_assignments(one)).assignments.remove) == ["t0-0"]
        await one.aclose()
        await two.aclose()
        await d.stop()

    run(body())


def test_a_removed_node_s_session_ends_permission_denied_and_others_go_on() -> None:
    async def body() -> None:
        store, d = await _cluster(2, 1)
        beats = [Beats(), Beats()]
        streams = [d.session(cpb.SessionRequest(node_id=f"n{n}"), beats[n]) for n in (0, 1)]
        for stream in streams:
            await anext(stream)
        await store.update(lambda tx: tx.delete("node", "n0"))
        with pytest.raises(PermissionDenied, match="node n0 has been removed from the swarm"):
            while True:
                await anext(streams[0])
        beats[0].beat()  # a heartbeat still on its way is not heard
        await asyncio.sleep(0.05)
        assert "n0" not in d._last_beat and "n0" not in d._sessions
        await store.update(lambda tx: tx.create(task("t1-new", "n1")))
        assert [t.id for t in (await next_assignments(streams[1])).assignments.update] == [
            "t1-new"]
        await streams[1].aclose()
        await d.stop()

    run(body())


def test_a_stall_of_the_manager_does_not_mark_its_nodes_down() -> None:
    async def body() -> None:
        store, d = await _cluster(1, 1)
        beats = Beats()
        stream = d.session(cpb.SessionRequest(node_id="n0"), beats)
        await anext(stream)
        for _ in range(2):  # a working cluster first: the liveness check is running
            beats.beat()
            await asyncio.sleep(FAST.heartbeat_period)
        beats.beat()
        await beats.heard()
        # The manager's loop is blocked for 4 missed-heartbeat windows (a long pass, a slow
        # disk): the node's heartbeats could not be heard meanwhile. The liveness check runs
        # before the first heartbeat that was waiting.
        time.sleep(FAST.down_after * 4)
        await asyncio.sleep(0.02)
        beats.beat()
        for _ in range(6):
            await asyncio.sleep(FAST.heartbeat_period)
            beats.beat()
        assert store.view().get("node", "n0").status.state == opb.NODE_STATE_READY
        assert store.metrics.snapshot()["dispatcher_stall_seconds"] > FAST.down_after
        # A node that really stops is still found out.
        await asyncio.sleep(FAST.down_after + 3 * FAST.heartbeat_period)
        assert store.view().get("node", "n0").status.state == opb.NODE_STATE_DOWN
        await stream.aclose()
        await d.stop()

    run(body())


async def _ten_sessions(cfg: ManagerConfig) -> tuple[Store, Dispatcher, Beat]:
    """A dispatcher with ten nodes in session, and `beat(range, until, limit)`: heartbeats
    from the nodes in range every period until `until()` holds (at most `limit` seconds;
    the condition, not a duration, so a slow machine only makes it take longer)."""
    store = await Store.open(MemoryBackend())
    d = Dispatcher(store, cfg, set())
    await d.start()
    streams, beats = [], []  # (a stream no longer referenced is closed: its session ends)
    for n in range(10):
        beats.append(Beats())
        streams.append(d.session(cpb.SessionRequest(node_id=f"n{n}"), beats[-1]))
        await anext(streams[-1])

    async def beat(beating: range, until: Callable[[], bool], limit: float) -> None:
        assert streams  # (beat refers to them: they live as long as it does)
        deadline = time.monotonic() + limit
        while not until():
            assert time.monotonic() < deadline, "the condition never held"
            for n in beating:
                beats[n].beat()
            await asyncio.sleep(cfg.heartbeat_period)
    for b in beats:  # one heartbeat from all: nodes that stop from here stop at once
        b.beat()
    for b in beats:
        await b.heard()
    return store, d, beat


# Most of ten nodes (and at least 3) failing at once are held for a second.
HOLD = replace(FAST, mass_failure_min=3, mass_failure_hold=1.0)


def _states(store: Store, nodes: range) -> list[int]:
    return [store.view().get("node", f"n{n}").status.state for n in nodes]


def _holds(store: Store) -> int:
    return int(store.metrics.snapshot().get("dispatcher_mass_failure_holds", 0))


def test_most_nodes_failing_at_once_are_held_and_those_heard_again_stay() -> None:
    async def body() -> None:
        store, d, beat = await _ten_sessions(HOLD)
        # Two of ten stop: a real failure, marked down as usual.
        await beat(range(2, 10), lambda: _states(store, range(2)) == [DOWN] * 2, 5)
        assert _holds(store) == 0
        # Six more stop at once (8 of 10): the manager suspects itself and waits...
        await beat(range(8, 10), lambda: _holds(store) > 0, 5)
        assert _states(store, range(2, 10)) == [READY] * 8
        # ...three of them are heard again: no longer most of the cluster, so the other
        # three are an ordinary failure, marked down; those heard stay.
        await beat(range(5, 10), lambda: DOWN in _states(store, range(2, 5)), 5)
        await beat(range(5, 10), lambda: _states(store, range(2, 5)) == [DOWN] * 3, 1)
        assert _states(store, range(5, 10)) == [READY] * 5
        await d.stop()

    run(body())


def test_most_nodes_failing_at_once_are_marked_down_when_the_hold_ends() -> None:
    async def body() -> None:
        store, d, beat = await _ten_sessions(HOLD)
        await beat(range(8, 10), lambda: _holds(store) > 0, 5)
        held = time.monotonic()
        await beat(range(8, 10), lambda: DOWN in _states(store, range(8)), 5)
        assert time.monotonic() - held > HOLD.mass_failure_hold - HOLD.heartbeat_period, \
            "held for mass_failure_hold"
        await beat(range(8, 10), lambda: _states(store, range(8)) == [DOWN] * 8, 1)
        assert _states(store, range(8, 10)) == [READY] * 2
        await d.stop()

    run(body())


def test_a_stall_during_a_mass_failure_hold_does_not_use_the_hold_up() -> None:
    """The hold is for an overloaded manager: time the manager spent stalled (its loop
    blocked) counts for neither the nodes' heartbeats nor the hold, or one long stall
    ends the hold and marks most of the cluster DOWN at once."""
    async def body() -> None:
        store, d, beat = await _ten_sessions(HOLD)
        await beat(range(8, 10), lambda: _holds(store) > 0, 5)
        time.sleep(HOLD.mass_failure_hold + 0.2)  # the whole loop blocked, past the hold
        stalled = time.monotonic()
        await beat(range(8, 10), lambda: time.monotonic() > stalled + 0.5, 5)
        assert _states(store, range(8)) == [READY] * 8, "still held after the stall"
        await beat(range(8, 10), lambda: _states(store, range(8)) == [DOWN] * 8, 5)
        await d.stop()

    run(body())


class FakeProbe:
    """The manager's probe of itself (probe.py), with the lag set by the test."""

    def __init__(self, lag: float) -> None:
        self.value = lag

    def lag(self) -> float:
        return self.value

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def test_heartbeats_still_queued_in_an_overloaded_manager_do_not_mark_nodes_down() -> None:
    async def body() -> None:
        store, d = await _cluster(1, 1)
        probe = FakeProbe(lag=4 * FAST.down_after)
        d.probe = probe  # type: ignore[assignment]
        stream = d.session(cpb.SessionRequest(node_id="n0"))
        await anext(stream)
        # Silent for twice the window, while a heartbeat takes the manager four windows
        # to hear: the node's beats may be in its queues, so it stays READY.
        await asyncio.sleep(2 * FAST.down_after)
        assert store.view().get("node", "n0").status.state == opb.NODE_STATE_READY
        # The manager catches up and still hears nothing: the node is DOWN.
        probe.value = 0.0
        await asyncio.sleep(FAST.down_after + 3 * FAST.heartbeat_period)
        assert store.view().get("node", "n0").status.state == opb.NODE_STATE_DOWN
        assert store.metrics.snapshot()["dispatcher_ingress_lag_seconds"] == 4 * FAST.down_after
        await stream.aclose()
        await d.stop()

    run(body())


def test_a_node_back_right_after_its_down_makes_the_manager_wait_longer() -> None:
    cfg = replace(FAST, false_down_window=0.5, false_down_max_extra=10 * FAST.down_after)

    async def body() -> None:
        store = await Store.open(MemoryBackend())
        d = Dispatcher(store, cfg, set())
        await d.start()

        async def silent_until_down() -> float:
            """Open a session, say nothing: seconds until the node is marked DOWN."""
            stream = d.session(cpb.SessionRequest(node_id="n0"))
            await anext(stream)
            started = time.monotonic()
            while store.view().get("node", "n0").status.state != opb.NODE_STATE_DOWN:
                await asyncio.sleep(0.01)
            await stream.aclose()
            return time.monotonic() - started

        await silent_until_down()  # a real failure: nothing to learn from it
        assert "dispatcher_false_downs" not in store.metrics.snapshot()
        # The node is back at once: it was alive, the manager did not hear it. The next
        # DOWN comes later, and later again after each such return.
        def extra() -> float:  # the wait added now (a gauge: bench/scale.py reports it)
            return store.metrics.snapshot()["dispatcher_down_extra_seconds"]

        assert extra() == 0
        await silent_until_down()
        assert store.metrics.snapshot()["dispatcher_false_downs"] == 1
        assert extra() == cfg.heartbeat_period
        await silent_until_down()
        assert extra() == 2 * cfg.heartbeat_period
        # Quiet for a while: the extra wait goes again.
        await asyncio.sleep(3 * cfg.false_down_window)
        assert extra() == 0
        await d.stop()

    run(body())
