"""A worker's heartbeats and reports survive a slow manager, and a lost session reconnects.

Against a real gRPC server on loopback whose dispatcher is slow or forgetful on purpose;
both the agent and the simulated node (worker/sim.py) run the same session code.
"""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.agent import Agent
from pyswarm.worker.agent.keepalive import GIVE_UP_PERIODS
from pyswarm.worker.sim import SimNode, SimStats

PERIOD_MS = 100  # heartbeat period the fake manager sets; GIVE_UP_PERIODS of them is 1 s


class Dispatcher(cpb_grpc.DispatcherServicer):
    """Opens sessions s1, s2, ...; stalls, goes quiet or forgets on request."""

    def __init__(self) -> None:
        self.sessions = 0
        self.opened: list[cpb.SessionRequest] = []  # each session's first message
        self.heard: list[tuple[str, float]] = []  # (session id, when) of each heartbeat
        self.beats: list[tuple[str, float]] = []  # (session id, when answered)
        self.stall_beats = 0      # the next N answers take 3 periods each
        self.mute = False         # heartbeats are never answered
        self.chatter = False      # the session stream brings a message every period
        self.fail_reports = 0     # the next N reports fail UNAVAILABLE
        self.forget = False       # session s1 ends NOT_FOUND at its next heartbeat
        self.reports: list[cpb.UpdateTaskStatusRequest] = []
        self.hold_reports = False  # reports of session s1 never get an answer
        self.held = 0              # reports held so far
        self.lose_reports = False  # reports of session s1 are answered and forgotten
        self.tasks: list[opb.Task] = []  # the COMPLETE assignments of every session

    async def Session(self, requests: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        """Hears each heartbeat as it arrives (`heard`), answers them in turn (`beats`)."""
        requests = aiter(requests)
        first = await anext(requests)
        self.opened.append(first.open)
        self.sessions += 1
        session_id = f"s{self.sessions}"
        arrived: asyncio.Queue[None] = asyncio.Queue()

        async def hear() -> None:
            async for request in requests:
                assert request.HasField("heartbeat"), request
                self.heard.append((session_id, time.monotonic()))
                arrived.put_nowait(None)

        reader = asyncio.create_task(hear())
        try:
            yield cpb.SessionMessage(
                session_id=session_id, heartbeat_period_ms=PERIOD_MS,
                assignments=cpb.Assignments(type=cpb.Assignments.COMPLETE, update=self.tasks))
            chat = time.monotonic() + PERIOD_MS / 1000
            while True:  # open until the client goes
                try:
                    await asyncio.wait_for(arrived.get(), max(chat - time.monotonic(), 0))
                except TimeoutError:
                    chat = time.monotonic() + PERIOD_MS / 1000
                    if self.chatter:  # every period, whatever comes in
                        yield cpb.SessionMessage(session_id=session_id,
                                                 heartbeat_period_ms=PERIOD_MS)
                    continue
                if self.forget and session_id == "s1":
                    await context.abort(grpc.StatusCode.NOT_FOUND, "session invalid")
                if self.mute:
                    continue
                if self.stall_beats:
                    self.stall_beats -= 1
                    await asyncio.sleep(3 * PERIOD_MS / 1000)
                self.beats.append((session_id, time.monotonic()))
                yield cpb.SessionMessage(session_id=session_id, heartbeat_period_ms=PERIOD_MS)
        finally:
            reader.cancel()

    async def UpdateTaskStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.fail_reports:
            self.fail_reports -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        if request.session_id == "s1" and self.hold_reports:
            self.held += 1
            await asyncio.Event().wait()
        if request.session_id == "s1" and self.lose_reports:
            return cpb.UpdateTaskStatusResponse()
        self.reports.append(request)
        return cpb.UpdateTaskStatusResponse()


class NoContainers:
    def list(self, all: bool = False) -> list[Any]:  # noqa: A002 - the engine's name
        return []


def agent(target: str) -> Agent:
    return Agent(engine=NoContainers(), watcher=None, node_id="n1",  # type: ignore[arg-type]
                 channel_factory=lambda _: grpc.aio.insecure_channel(target))


def sim(target: str, track_network: bool = True) -> SimNode:
    certs: Any = SimpleNamespace(identity=SimpleNamespace(node_id="n1"),
                                 channel=lambda manager: grpc.aio.insecure_channel(manager))
    return SimNode("sim1", certs, target, "127.0.0.1", SimStats(), track_network=track_network)


def sim_versions(target: str) -> SimNode:
    """A simulated node that reads only the versions of its network states (bench/scale.py)."""
    return sim(target, track_network=False)


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
def test_heartbeats_keep_their_period_while_answers_are_late(make: Any) -> None:
    dispatcher = Dispatcher()

    async def check(node: Any) -> None:
        await until(lambda: len(dispatcher.beats) >= 2)
        dispatcher.stall_beats = 4  # each of the next answers comes three periods late
        answered, heard = len(dispatcher.beats), len(dispatcher.heard)
        await until(lambda: len(dispatcher.beats) >= answered + 4)
        # The node did not wait for the late answers: the manager heard it every period
        # (it would have marked it DOWN otherwise), about three heartbeats per answer. The
        # node kept its session: it did not give up and did not reconnect.
        assert len(dispatcher.heard) - heard >= 2 * 4
        assert dispatcher.sessions == 1
        assert {s for s, _ in dispatcher.heard} == {"s1"}
        assert dispatcher.opened[0].node_id == "n1"

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_heartbeats_keep_their_period_while_the_manager_sends_nothing(make: Any) -> None:
    """An answer that never comes holds nothing up: heartbeats go out on the clock while the
    session's stream is silent, until the node gives the manager up."""
    dispatcher = Dispatcher()

    async def check(node: Any) -> None:
        await until(lambda: len(dispatcher.beats) >= 2)
        dispatcher.mute = True
        heard = len(dispatcher.heard)
        await asyncio.sleep(GIVE_UP_PERIODS * PERIOD_MS / 2000)  # half the way to giving up
        assert len(dispatcher.heard) - heard >= GIVE_UP_PERIODS / 2 - 2
        assert dispatcher.sessions == 1

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim, sim_versions],
                         ids=["agent", "sim", "sim-versions"])
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
        dispatcher.mute = True  # no heartbeat is answered from now on
        # After GIVE_UP_PERIODS periods (1 s here) the node ends the session and opens
        # another one, as it must when its manager vanished without closing the connection.
        await until(lambda: dispatcher.sessions >= 2, timeout=10)

    asyncio.run(run_against(dispatcher, make, check))


@pytest.mark.parametrize("make", [agent, sim, sim_versions],
                         ids=["agent", "sim", "sim-versions"])
def test_a_manager_heard_on_the_session_stream_is_not_given_up(make: Any) -> None:
    dispatcher = Dispatcher()

    async def check(node: Any) -> None:
        await until(lambda: dispatcher.beats)
        # Answers stop, as when they queue behind a deploy's network states, but the
        # session stream still brings messages: the manager is there.
        dispatcher.mute, dispatcher.chatter = True, True
        await asyncio.sleep(2 * GIVE_UP_PERIODS * PERIOD_MS / 1000)
        assert dispatcher.sessions == 1
        dispatcher.chatter = False  # now nothing comes at all: given up
        await until(lambda: dispatcher.sessions >= 2, timeout=10)

    asyncio.run(run_against(dispatcher, make, check))


def reported(dispatcher: Dispatcher, session_id: str, task_id: str) -> list[int]:
    return [u.status.state for r in dispatcher.reports if r.session_id == session_id
            for u in r.updates if u.task_id == task_id]


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_report_in_flight_when_the_session_ends_is_sent_in_the_next_one(make: Any) -> None:
    dispatcher = Dispatcher()
    dispatcher.hold_reports = True

    async def check(node: Any) -> None:
        await until(lambda: node._session_id == "s1")
        node._outbox.put("t1", opb.TaskStatus(state=opb.TASK_STATE_RUNNING, message="started"))
        await until(lambda: dispatcher.held == 1)
        dispatcher.forget = True  # the session ends while the report waits for its answer
        # The manager never answered it, so it may never have applied it: the node must
        # not count it as reported (it reports a state once, when it changes).
        await until(lambda: reported(dispatcher, "s2", "t1") == [opb.TASK_STATE_RUNNING])

    asyncio.run(run_against(dispatcher, make, check))


class FakeController:
    """Stands in for a TaskController whose container runs."""

    def __init__(self, task: opb.Task, state: int) -> None:
        self.task = task
        self.status = opb.TaskStatus(state=state, message="started")  # type: ignore[arg-type]

    def update(self, task: opb.Task) -> None:
        self.task = task


def test_a_status_the_manager_is_behind_on_is_reported_again_by_the_agent() -> None:
    task = opb.Task(id="t1", node_id="n1", desired_state=opb.TASK_STATE_RUNNING,
                    status=opb.TaskStatus(state=opb.TASK_STATE_ASSIGNED))
    dispatcher = Dispatcher()
    dispatcher.tasks = [task]

    def make(target: str) -> Agent:
        node = agent(target)
        node.controllers["t1"] = FakeController(task, opb.TASK_STATE_RUNNING)  # type: ignore
        return node

    async def check(node: Any) -> None:
        # The COMPLETE assignments say ASSIGNED; the node runs it: it says so.
        await until(lambda: reported(dispatcher, "s1", "t1") == [opb.TASK_STATE_RUNNING])

    asyncio.run(run_against(dispatcher, make, check))


def test_a_status_the_manager_lost_is_reported_again_by_a_simulated_node() -> None:
    dispatcher = Dispatcher()
    dispatcher.tasks = [opb.Task(id="t1", node_id="n1", desired_state=opb.TASK_STATE_RUNNING,
                                 status=opb.TaskStatus(state=opb.TASK_STATE_ASSIGNED))]
    dispatcher.lose_reports = True

    async def check(node: Any) -> None:
        await until(lambda: node.running() == ["t1"] and not node._outbox.statuses)
        await asyncio.sleep(0.1)  # sent and answered (and lost) in s1
        dispatcher.forget = True  # s2's COMPLETE assignments still say ASSIGNED
        await until(lambda: reported(dispatcher, "s2", "t1") == [opb.TASK_STATE_RUNNING])

    asyncio.run(run_against(dispatcher, make=sim, check=check))


@pytest.mark.parametrize("make", [agent, sim], ids=["agent", "sim"])
def test_a_manager_that_cannot_be_reached_is_reported_with_the_call_s_status(
        make: Any) -> None:
    """What the node reports of a session it could not open is gRPC's status (UNAVAILABLE,
    which it retries quietly), also when the call had ended before the opening write: gRPC
    refuses that write with an InvalidStateError that says nothing."""
    async def body() -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        target = f"127.0.0.1:{closed.getsockname()[1]}"
        node = make(target)
        channel = grpc.aio.insecure_channel(target)
        try:
            for late in (False, True):
                call = (cpb_grpc.DispatcherStub(channel).Session() if isinstance(node, Agent)
                        else node._open(channel)())
                if late:  # the call has ended before the node writes on it
                    await until(call.done)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    if isinstance(node, Agent):
                        await node._session(_Stub(lambda call=call: call))
                    else:
                        await node._session(None, lambda call=call: call)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()
            closed.close()

    asyncio.run(body())


class _Stub:
    def __init__(self, session: Any) -> None:
        self.Session = session  # noqa: N815 - gRPC's name


class HungCall:
    """A session's call to a manager cut off mid-session (a partition), at the worst
    moment for the node: its opening is answered, then no write is ever taken. Cancelling a
    write cancels the call (grpc.aio's `_write` does so), and the stream's reader hears of
    that cancellation before anything else runs, as it may through gRPC's completion
    queue."""

    def __init__(self) -> None:
        self.writes = 0
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def write(self, message: cpb.SessionUp) -> None:
        self.writes += 1
        if self.writes == 1:
            return  # the session's opening message
        try:
            await asyncio.Event().wait()  # the link is down: the write hangs
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> bool:
        self._ended.cancel()
        return True

    def done(self) -> bool:
        return self._ended.done()

    def __aiter__(self) -> Any:
        return self._messages()

    async def _messages(self) -> Any:
        yield cpb.SessionMessage(session_id="h1", heartbeat_period_ms=PERIOD_MS)
        await self._ended  # grpc.aio's reader raises CancelledError for a cancelled call


class HungChannel:
    """A channel whose every Session call is a new HungCall."""

    def __init__(self, calls: list[HungCall]) -> None:
        self.calls = calls

    def _session(self) -> HungCall:
        self.calls.append(HungCall())
        return self.calls[-1]

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._session

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return None

    async def close(self, grace: float | None = None) -> None:
        pass


@pytest.mark.parametrize("kind", ["agent", "sim"])
def test_a_session_given_up_during_a_hung_write_ends_in_its_error(kind: str) -> None:
    """The heartbeats give a silent manager up while a heartbeat write hangs: cancelling
    that write cancels the call, and the reader may see the cancellation before the
    heartbeats' error is on record. The session must still end in that error, not in a
    bare CancelledError: the node's loop would take that for its own cancellation and
    stop for good (a lab node stayed DOWN after its leader was partitioned and healed)."""
    async def body() -> None:
        calls: list[HungCall] = []
        channel = HungChannel(calls)
        stub: Any = cpb_grpc.DispatcherStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if kind == "agent":
                await agent("unused")._session(stub)
            else:
                await sim("unused")._session(stub, stub.Session)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no word from the manager" in str(caught.value.details())
        assert calls[0].writes >= 2  # the opening, then the heartbeat that hung

    asyncio.run(asyncio.wait_for(body(), 10))


@pytest.mark.parametrize("kind", ["agent", "sim"])
def test_a_node_whose_session_was_given_up_opens_another(kind: str) -> None:
    async def body() -> None:
        calls: list[HungCall] = []
        node: Any
        if kind == "agent":
            node = Agent(engine=NoContainers(), watcher=None,  # type: ignore[arg-type]
                         node_id="n1", channel_factory=lambda _: HungChannel(calls))
            runner = asyncio.create_task(node.run())
        else:
            node = sim("unused")
            node.certs.channel = lambda _: HungChannel(calls)
            runner = asyncio.create_task(node._loop())
        try:
            await until(lambda: len(calls) >= 2 or runner.done(), timeout=8)
            assert not runner.done(), "the node's session loop ended"
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(body())


def test_an_agent_whose_loop_stops_is_started_again() -> None:
    """Whatever ends the agent's loop but the node's own stop (a bug, a cancellation that
    was not the node's), it is said and the loop runs again: a node whose agent stopped
    stays DOWN, silently."""
    async def body() -> None:
        node = agent("unused")
        runs: list[str] = []

        async def run() -> None:
            runs.append("run")
            if len(runs) == 1:
                raise asyncio.CancelledError  # not the serving task's cancellation
            if len(runs) == 2:
                raise RuntimeError("a bug")
            await asyncio.Event().wait()

        node.run = run  # type: ignore[method-assign]
        serving = asyncio.create_task(node.serve(pause=0.01))
        await until(lambda: len(runs) == 3)
        assert not serving.done()
        serving.cancel()  # the node's own stop ends it
        await asyncio.gather(serving, return_exceptions=True)
        assert serving.cancelled()

    asyncio.run(asyncio.wait_for(body(), 10))
