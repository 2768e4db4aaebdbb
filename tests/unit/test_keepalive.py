"""A worker's heartbeats and reports survive a slow manager, and a lost session reconnects.

Against a real gRPC server on loopback whose dispatcher is slow or forgetful on purpose;
both the agent and the simulated node (worker/sim.py) run the same session code.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.agent import Agent
from pyswarm.worker.sim import SimNode, SimStats

PERIOD_MS = 100  # heartbeat period the fake manager sets; heartbeats time out after 2 periods


class Dispatcher(cpb_grpc.DispatcherServicer):
    """Opens sessions s1, s2, ...; stalls or forgets on request."""

    def __init__(self) -> None:
        self.sessions = 0
        self.beats: list[tuple[str, float]] = []  # (session id, when answered)
        self.stall_beats = 0      # the next N heartbeats take 3 periods (past the timeout)
        self.fail_reports = 0     # the next N reports fail UNAVAILABLE
        self.forget = False       # heartbeats say the session is unknown
        self.reports: list[cpb.UpdateTaskStatusRequest] = []

    async def Session(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        self.sessions += 1
        yield cpb.SessionMessage(session_id=f"s{self.sessions}",
                                 heartbeat_period_ms=PERIOD_MS)
        await asyncio.Event().wait()  # open until the client goes

    async def Heartbeat(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.forget and request.session_id == "s1":
            await context.abort(grpc.StatusCode.NOT_FOUND, "session invalid")
        if self.stall_beats:
            self.stall_beats -= 1
            await asyncio.sleep(3 * PERIOD_MS / 1000)
        self.beats.append((request.session_id, time.monotonic()))
        return cpb.HeartbeatResponse(period_ms=PERIOD_MS)

    async def UpdateTaskStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.fail_reports:
            self.fail_reports -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        self.reports.append(request)
        return cpb.UpdateTaskStatusResponse()


def agent(target: str) -> Agent:
    return Agent(engine=None, watcher=None, node_id="n1",  # type: ignore[arg-type]
                 channel_factory=lambda: grpc.aio.insecure_channel(target))


def sim(target: str) -> SimNode:
    certs: Any = SimpleNamespace(identity=SimpleNamespace(node_id="n1"),
                                 channel=lambda manager: grpc.aio.insecure_channel(manager))
    return SimNode("sim1", certs, target, "127.0.0.1", SimStats())


async def run_against(dispatcher: Dispatcher, make: Any, check: Any) -> None:
    server = grpc.aio.server()
    cpb_grpc.add_DispatcherServicer_to_server(dispatcher, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    node = make(f"127.0.0.1:{port}")
    runner = asyncio.create_task(node.run() if isinstance(node, Agent) else node._loop())
    try:
        await check(node)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await server.stop(None)


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_heartbeat_that_times_out_is_sent_again_in_the_same_session(make: Any) -> None:
    dispatcher = Dispatcher()

    async def check(node: Any) -> None:
        await until(lambda: len(dispatcher.beats) >= 2)
        dispatcher.stall_beats = 2  # two heartbeats in a row outlive their deadline
        stalled_at = len(dispatcher.beats)
        await until(lambda: len(dispatcher.beats) >= stalled_at + 6)
        # The node kept beating in its one session: it did not give up (the manager would
        # have marked it DOWN) and did not reconnect.
        assert dispatcher.sessions == 1
        assert {s for s, _ in dispatcher.beats} == {"s1"}

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_session_the_manager_forgot_ends_and_the_node_opens_a_new_one(make: Any) -> None:
    dispatcher = Dispatcher()
    dispatcher.forget = True

    async def check(node: Any) -> None:
        await until(lambda: any(s == "s2" for s, _ in dispatcher.beats))
        assert dispatcher.sessions == 2

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_report_the_manager_was_too_busy_for_is_sent_again(make: Any) -> None:
    dispatcher = Dispatcher()
    dispatcher.fail_reports = 2

    async def check(node: Any) -> None:
        await until(lambda: dispatcher.sessions == 1 and node._session_id == "s1")
        node._outbox.put("t1", opb.TaskStatus(state=opb.TASK_STATE_RUNNING, message="started"))
        await until(lambda: dispatcher.reports)
        assert [u.task_id for u in dispatcher.reports[0].updates] == ["t1"]
        assert dispatcher.sessions == 1

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_manager_that_stopped_answering_is_given_up_and_the_node_reconnects(
        make: Any) -> None:
    dispatcher = Dispatcher()

    async def check(node: Any) -> None:
        await until(lambda: dispatcher.beats)
        dispatcher.stall_beats = 10**6  # every heartbeat outlives its deadline from now on
        # After GIVE_UP_PERIODS periods (1 s here) the node ends the session and opens
        # another one, as it must when its manager vanished without closing the connection.
        await until(lambda: dispatcher.sessions >= 2, timeout=10)

    asyncio.run(run_against(dispatcher, make, check))
