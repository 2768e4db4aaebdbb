"""The dispatcher over a real (in-memory) store: sessions, heartbeats, task status."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

from pyswarm.common.errors import InvalidArgument, NotFound
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher.dispatcher import Dispatcher
from pyswarm.manager.dispatcher.netpush import (
    NetworkPush,
    Serialized,
    serialize_session,
    session_message,
)
from pyswarm.manager.servicers import opening
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from tests.unit.test_allocator_loop import INGRESS, Cluster, service_spec

S = opb.TaskState
FAST = ManagerConfig(heartbeat_period=0.05, heartbeat_misses=3, reconnect_grace=0.15)


def task(id: str, node: str, state: int = S.TASK_STATE_ASSIGNED) -> opb.Task:
    t = opb.Task(id=id, node_id=node, service_id="svc", desired_state=S.TASK_STATE_RUNNING)
    t.status.state = state  # type: ignore[assignment]
    return t


def shut_down(tx: Any, task_id: str) -> None:
    """The manager wants the task stopped."""
    t = opb.Task()
    t.CopyFrom(tx.get("task", task_id))
    t.desired_state = S.TASK_STATE_SHUTDOWN
    tx.update(t)


def run(body: Any) -> None:
    asyncio.run(asyncio.wait_for(body, 10))


HEARTBEAT = cpb.SessionUp(heartbeat=cpb.Heartbeat())


class Beats:
    """A node's messages on its session stream after the first (proto/cluster.proto's
    Session), as a test sends them: `beat()` a heartbeat, `send()` anything; `heard()`
    returns once the dispatcher has read all of them."""

    def __init__(self) -> None:
        self._sent: asyncio.Queue[cpb.SessionUp] = asyncio.Queue()
        self._put = self._taken = 0

    def __aiter__(self) -> Any:
        return self._read()

    async def _read(self) -> Any:
        while True:
            up = await self._sent.get()
            self._taken += 1  # the dispatcher acts on it before it reads again
            yield up

    def send(self, up: cpb.SessionUp) -> None:
        self._sent.put_nowait(up)
        self._put += 1

    def beat(self) -> None:
        self.send(HEARTBEAT)

    async def heard(self) -> None:
        while self._taken < self._put:
            await asyncio.sleep(0.001)


async def next_message(stream: Any) -> cpb.SessionMessage:
    """The session's next message, as the node receives it (network states come out of the
    dispatcher serialized already: netpush.Serialized)."""
    message = await anext(stream)
    return message.parse() if isinstance(message, Serialized) else message


async def next_assignments(stream: Any) -> cpb.SessionMessage:
    """The next message about assignments (NetworkState messages are skipped)."""
    while True:
        message = await next_message(stream)
        if not message.HasField("network"):
            return message


async def _setup() -> tuple[Store, Dispatcher]:
    store = await Store.open(MemoryBackend())
    await store.update(lambda tx: [tx.create(task("t1", "n1")), tx.create(task("t2", "n2")),
                                   tx.create(task("t0", "n1", S.TASK_STATE_PENDING))])
    dispatcher = Dispatcher(store, FAST, {"n1"})
    await dispatcher.start()
    return store, dispatcher


def test_session_sends_the_complete_set_then_changes() -> None:
    async def body() -> None:
        store, d = await _setup()
        stream = d.session(cpb.SessionRequest(node_id="n1", description=opb.NodeDescription(
            hostname="one")))
        first = await anext(stream)
        assert first.assignments.type == cpb.Assignments.COMPLETE
        assert [t.id for t in first.assignments.update] == ["t1"]  # not n2's, not pending
        node = store.view().get("node", "n1")
        assert node.status.state == opb.NODE_STATE_READY and node.role == opb.NODE_ROLE_MANAGER

        await store.update(lambda tx: shut_down(tx, "t1"))
        second = await next_assignments(stream)
        assert second.assignments.type == cpb.Assignments.INCREMENTAL
        assert [(t.id, t.desired_state) for t in second.assignments.update] == [
            ("t1", S.TASK_STATE_SHUTDOWN)]
        await store.update(lambda tx: tx.delete("task", "t1"))
        third = await next_assignments(stream)
        assert list(third.assignments.remove) == ["t1"]
        await stream.aclose()
        await d.stop()

    run(body())


def test_missed_heartbeats_mark_the_node_down() -> None:
    async def body() -> None:
        store, d = await _setup()
        beats = Beats()
        stream = d.session(cpb.SessionRequest(node_id="n2"), beats)
        await anext(stream)
        for _ in range(4):
            beats.beat()
            await asyncio.sleep(FAST.heartbeat_period)
        assert store.view().get("node", "n2").status.state == opb.NODE_STATE_READY
        await asyncio.sleep(FAST.down_after + 3 * FAST.heartbeat_period)
        assert store.view().get("node", "n2").status.state == opb.NODE_STATE_DOWN
        # Its session is over: the node opens a new one (a late heartbeat is not heard).
        with pytest.raises(StopAsyncIteration):
            while True:
                message = await next_message(stream)
                assert not message.HasField("assignments"), message
        await d.stop()

    run(body())


def test_heartbeats_are_heard_while_their_answers_wait() -> None:
    """A session hears each heartbeat as it arrives, even while the connection takes none
    of its messages; one answer waits at a time, behind what was queued before it."""
    async def body() -> None:
        store, d = await _setup()
        beats = Beats()
        stream = d.session(cpb.SessionRequest(node_id="n2"), beats)
        first = await anext(stream)
        beats.beat()
        answer = await next_assignments(stream)  # after the node's first network state
        assert answer == cpb.SessionMessage(session_id=first.session_id,
                                            heartbeat_period_ms=d.period_ms)
        heard: list[float] = []
        for _ in range(3):  # nobody takes a message meanwhile: a slow connection
            beats.beat()
            await beats.heard()
            heard.append(d._last_beat["n2"])
            await asyncio.sleep(FAST.heartbeat_period)
        assert heard == sorted(heard) and len(set(heard)) == 3
        await store.update(lambda tx: tx.create(task("t3", "n2")))
        await asyncio.sleep(FAST.heartbeat_period)
        # What waited: one answer, for the three heartbeats, then the new task (and the
        # network states), and nothing else.
        assert await next_message(stream) == answer
        assert [t.id for t in (await next_assignments(stream)).assignments.update] == ["t3"]
        assert store.view().get("node", "n2").status.state == opb.NODE_STATE_READY
        beats.beat()
        assert await next_assignments(stream) == answer
        await stream.aclose()
        await d.stop()

    run(body())


def test_a_session_that_sends_anything_but_heartbeats_ends_with_the_reason() -> None:
    async def body() -> None:
        store, d = await _setup()
        beats = Beats()
        stream = d.session(cpb.SessionRequest(node_id="n2"), beats)
        await anext(stream)
        beats.send(cpb.SessionUp(open=cpb.SessionRequest(node_id="n2")))
        with pytest.raises(InvalidArgument, match="only heartbeats"):
            while True:
                await next_message(stream)
        assert "n2" not in d._sessions
        await d.stop()

    run(body())


def test_a_takeover_grace_keeps_a_node_up_until_it_has_had_time_to_find_the_leader() -> None:
    """A new leader (manager.take_office on a shared store) starts its dispatcher with
    ManagerConfig.takeover_grace: a node still looking for it is not marked down (which
    would replace its tasks while they run) before that."""
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        node = opb.Node(id="n2")
        node.status.state = opb.NODE_STATE_READY
        await store.update(lambda tx: tx.create(node))
        d = Dispatcher(store, FAST, {"n1"})
        await d.start(grace=0.8)
        await asyncio.sleep(0.5)  # past reconnect_grace (0.15 s) and a missed-beat window
        assert store.view().get("node", "n2").status.state == opb.NODE_STATE_READY
        await asyncio.sleep(0.3 + FAST.down_after + 3 * FAST.heartbeat_period)
        assert store.view().get("node", "n2").status.state == opb.NODE_STATE_DOWN
        await d.stop()

    run(body())


def test_status_updates_move_forward_only_and_only_for_the_nodes_own_tasks() -> None:
    async def body() -> None:
        store, d = await _setup()
        stream = d.session(cpb.SessionRequest(node_id="n1"))
        first = await anext(stream)

        def update(task_id: str, state: int) -> cpb.TaskStatusUpdate:
            return cpb.TaskStatusUpdate(task_id=task_id, status=opb.TaskStatus(state=state))

        answer = await d.update_task_status(cpb.UpdateTaskStatusRequest(
            node_id="n1", session_id=first.session_id,
            updates=[update("t1", S.TASK_STATE_RUNNING), update("t2", S.TASK_STATE_RUNNING)]))
        assert list(answer.refused) == ["t2"]  # n2's task
        assert store.view().get("task", "t1").status.state == S.TASK_STATE_RUNNING
        answer = await d.update_task_status(cpb.UpdateTaskStatusRequest(
            node_id="n1", session_id=first.session_id,
            updates=[update("t1", S.TASK_STATE_STARTING)]))
        assert list(answer.refused) == ["t1"]  # backwards
        with pytest.raises(NotFound):
            await d.update_task_status(cpb.UpdateTaskStatusRequest(
                node_id="n1", session_id="stale", updates=[]))
        await stream.aclose()
        await d.stop()

    run(body())


async def next_network(stream: Any) -> cpb.SessionMessage:
    """The next message carrying a NetworkState (assignment messages are skipped)."""
    while True:
        message = await next_message(stream)
        if message.HasField("network"):
            return message


async def _web_cluster() -> Cluster:
    """Three nodes with a service "web" of three tasks placed (spread over them)."""
    c = await Cluster.start(nodes=3)
    await c.deploy([service_spec("web", replicas=3, ports=((80, 8080, INGRESS),))])
    await c.placed("s_web", 3)
    return c


def test_network_state_follows_the_complete_assignments_and_each_change() -> None:
    async def body() -> None:
        c = await _web_cluster()
        d = Dispatcher(c.store, FAST, {"n1"})
        await d.start()
        stream = d.session(cpb.SessionRequest(node_id="n1", addr="198.18.0.1"))
        first = await anext(stream)
        assert first.assignments.type == cpb.Assignments.COMPLETE
        assert not first.HasField("network")
        second = await next_message(stream)
        assert second.HasField("network") and second.session_id == first.session_id
        # An agent that applies `assignments` unconditionally must see no change.
        assert second.assignments.type == cpb.Assignments.INCREMENTAL
        assert not second.assignments.update and not second.assignments.remove
        ingress = nets.ingress(c.store.view())
        assert ingress is not None
        assert ingress.id in {n.id for n in second.network.networks}
        assert {p.node_id for p in second.network.peers} == {"n2", "n3"}
        (web,) = second.network.endpoints
        assert not web.tasks  # none running yet
        version = second.network.version
        assert version > 0

        await c.run_all()  # the tasks start: every node is told, in whole states
        while len(web.tasks) < 3:
            message = await next_network(stream)
            assert message.network.version > version
            version = message.network.version
            (web,) = message.network.endpoints
        assert sorted(t.name for t in web.tasks) == ["s_web.1", "s_web.2", "s_web.3"]

        # One stops: the next state leaves it out.
        stopping = web.tasks[0].task_id

        def stop(tx: Any) -> None:
            t = opb.Task()
            t.CopyFrom(tx.get("task", stopping))
            t.desired_state = S.TASK_STATE_SHUTDOWN
            tx.update(t)

        await c.store.update(stop)
        message = await next_network(stream)
        assert message.network.version > version
        (web,) = message.network.endpoints
        assert stopping not in {t.task_id for t in web.tasks}
        await stream.aclose()
        await d.stop()
        await c.stop()

    run(body())


def test_a_waiting_session_holds_no_state_it_has_sent() -> None:
    """Between messages a session waits on its queue. What it sent must not stay
    referenced from it: a whole NetworkState is megabytes at 10,000 tasks, and a thousand
    sessions each held their last one, twice (bench/scale.py's memory peak)."""
    async def held(stream: Any) -> list[str]:
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "expected the session to wait for its next message"
        found = [name for name, value in stream.ag_frame.f_locals.items()
                 if isinstance(value, bytes | Serialized)]
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await waiting
        return found

    async def body() -> None:
        c = await _web_cluster()
        # (no heartbeats are sent here: the deadline is far off)
        d = Dispatcher(c.store, ManagerConfig(heartbeat_period=5), {"n1"})
        await d.start()
        stream = d.session(cpb.SessionRequest(node_id="n1", addr="198.18.0.1"))
        await anext(stream)  # the COMPLETE assignments
        assert isinstance(await anext(stream), Serialized)  # the whole state
        assert await held(stream) == []
        await stream.aclose()

        stream = d.session(cpb.SessionRequest(node_id="n1", addr="198.18.0.1"))
        await next_network(stream)
        await c.run_all()  # deltas follow
        await next_network(stream)
        assert await held(stream) == []
        await stream.aclose()
        await d.stop()
        await c.stop()

    run(body())


def test_a_sent_state_is_not_kept_by_grpcs_stream_either() -> None:
    """gRPC's server keeps a stream's last response referenced until the next one: a
    Serialized message gives its bytes up once serialized for sending, so the waiting
    session's last message holds nothing. Checked through a real gRPC stream."""
    sent: list[Serialized] = []
    gate = asyncio.Event()

    async def session(request: bytes, context: Any) -> Any:
        message = session_message("s1", 1000, b"\x08\x07" * 50_000)
        sent.append(message)
        yield message
        await gate.wait()

    async def body() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(session,
                                                       response_serializer=serialize_session)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.T", {"Session": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/t.T/Session",
                                        response_deserializer=cpb.SessionMessage.FromString)(b"")
            received = await anext(aiter(call))
            assert received.network.version == 7 and received.session_id == "s1"
            assert sent[0].data == b""  # what gRPC still references is empty
            gate.set()
            call.cancel()
        await server.stop(None)

    run(body())


def test_a_node_that_reopens_its_session_unchanged_is_not_rewritten() -> None:
    """A session that reopens (a node's stream broke, the node is the same) writes nothing:
    every node write wakes the orchestrator, the scheduler, the allocator and the network
    pushes, and at a thousand nodes reopening sessions were a steady stream of them."""
    async def body() -> None:
        store, d = await _setup()
        desc = opb.NodeDescription(hostname="one")
        request = cpb.SessionRequest(node_id="n1", description=desc, addr="10.0.0.1")
        stream = d.session(request)
        await anext(stream)
        version = store.view().get("node", "n1").meta.version
        await stream.aclose()

        again = d.session(request)
        await anext(again)
        assert store.view().get("node", "n1").meta.version == version
        await again.aclose()

        # A node that comes back different (new address, after being down) is written.
        await store.update(lambda tx: tx.update(_down(tx.get("node", "n1"))))
        moved = d.session(cpb.SessionRequest(node_id="n1", description=desc, addr="10.0.0.2"))
        await anext(moved)
        node = store.view().get("node", "n1")
        assert node.status.state == opb.NODE_STATE_READY and node.status.addr == "10.0.0.2"
        await moved.aclose()
        await d.stop()

    run(body())


def _down(node: opb.Node) -> opb.Node:
    out = opb.Node()
    out.CopyFrom(node)
    out.status.state = opb.NODE_STATE_DOWN
    out.status.message = "heartbeat failure"
    return out


def test_network_states_take_turns_and_a_waiting_sessions_assignments_go_out() -> None:
    """At most `sending_bytes` of states are on their way at once (one state at least):
    gRPC holds a message until the connection takes it, and a round that told 1,000 nodes
    held 1.3 GB of them (bench/scale.py). A session waiting for its turn still gets its
    assignments; its state follows once the one before it has gone, or its stream ended."""
    async def waits(stream: Any) -> asyncio.Future[Any]:
        pending = asyncio.ensure_future(next_message(stream))
        await asyncio.sleep(0.2)
        assert not pending.done(), "expected no state while another is on its way"
        return pending

    async def body() -> None:
        c = await _web_cluster()
        d = Dispatcher(c.store, ManagerConfig(heartbeat_period=5), {"n1"})
        d.network.sending_bytes = 1  # one state at a time
        await d.start()
        one = d.session(cpb.SessionRequest(node_id="n1", addr="198.18.0.1"))
        await anext(one)  # COMPLETE
        assert (await next_message(one)).HasField("network")  # n1's turn: not over yet
        two = d.session(cpb.SessionRequest(node_id="n2", addr="198.18.0.2"))
        assert (await anext(two)).assignments.type == cpb.Assignments.COMPLETE
        pending = await waits(two)

        # n2's tasks change meanwhile: that goes out at once, ahead of its state.
        mine = next(t.id for t in c.store.view().all("task") if t.node_id == "n2")
        await c.store.update(lambda tx: shut_down(tx, mine))
        message = await asyncio.wait_for(pending, 2)
        assert not message.HasField("network")
        assert [t.id for t in message.assignments.update] == [mine]
        pending = await waits(two)

        # n1's stream reads on (gRPC took its state): n2's turn.
        reading = asyncio.ensure_future(anext(one))
        assert (await asyncio.wait_for(pending, 2)).HasField("network")

        # A stream that ends in its turn gives the turn up too.
        three = d.session(cpb.SessionRequest(node_id="n3", addr="198.18.0.3"))
        await anext(three)
        pending = await waits(three)
        await two.aclose()
        assert (await asyncio.wait_for(pending, 2)).HasField("network")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await reading
        for stream in (one, three):
            await stream.aclose()
        await d.stop()
        await c.stop()

    run(body())


def test_turns_given_at_once_count_the_states_still_to_come() -> None:
    """When a turn ends, the sessions waiting get theirs while what is on its way stays
    under the budget; a turn given counts for a state (the last one's size) before its
    session has pulled it. Counting it as nothing gave every waiting session its turn at
    once: 1,000 states pulled together, a 1.3 GB peak at 1,000 nodes (bench/scale.py)."""
    async def body() -> None:
        c = await Cluster.start(nodes=2)
        push = NetworkPush(c.store, sending_bytes=2)  # less than any state
        push.open()
        told: list[str] = []
        for key in ("a", *(f"w{i}" for i in range(5))):
            push.add(key, "n1", lambda key=key: told.append(key))
        assert push.turn("a") and push.pull("a")
        assert not any(push.turn(f"w{i}") for i in range(5))  # "a" holds the budget
        push.sent("a")
        assert told == ["w0"], "one turn given: a state of the last one's size fills it"
        assert push.turn("w0") and push.pull("w0")
        push.sent("w0")
        assert told == ["w0", "w1"]
        push.remove("w1")  # a session that ends in its turn gives it up
        assert told == ["w0", "w1", "w2"]

        def behind() -> float:  # what bench/scale.py waits on: sessions not up to date
            return c.store.metrics.snapshot()["netpush_sessions_behind"]

        assert behind() == 3  # w2 (its turn given), w3 and w4 (told, waiting)
        assert push.turn("w2") and push.pull("w2")
        assert behind() == 3  # w2 until gRPC has taken its state
        push.sent("w2")
        for key in ("w3", "w4"):
            assert push.turn(key) and push.pull(key)
            push.sent(key)
        assert behind() == 0
        await c.stop()

    run(body())


def test_a_node_marked_down_gives_up_its_turn_even_while_its_stream_is_stuck() -> None:
    """A node that vanished without closing its connection leaves its stream stuck in a
    write (gRPC never takes the state) for as long as TCP retries. Marked DOWN, its turn
    goes to the next session at once, or every other node would wait that long."""
    async def body() -> None:
        c = await _web_cluster()
        cfg = ManagerConfig(heartbeat_period=0.5, heartbeat_misses=3, reconnect_grace=1.5)
        d = Dispatcher(c.store, cfg, {"n1"})
        d.network.sending_bytes = 1  # one state at a time
        await d.start()
        gone = d.session(cpb.SessionRequest(node_id="n1", addr="198.18.0.1"))
        await anext(gone)
        assert (await next_message(gone)).HasField("network")  # its turn; never read on
        beats = Beats()
        alive = d.session(cpb.SessionRequest(node_id="n2", addr="198.18.0.2"), beats)
        await anext(alive)

        async def beat() -> None:
            while True:
                beats.beat()
                await asyncio.sleep(0.05)

        beating = asyncio.create_task(beat())
        waiting = asyncio.ensure_future(next_network(alive))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "expected n2 to wait for n1's turn"
        assert (await asyncio.wait_for(waiting, 5)).HasField("network")
        assert c.store.view().get("node", "n1").status.state == opb.NODE_STATE_DOWN
        beating.cancel()
        for stream in (gone, alive):
            await stream.aclose()
        await d.stop()
        await c.stop()

    run(body())


def test_a_session_opens_with_its_request_or_is_refused() -> None:
    """The servicer's side (servicers.opening): a node's first message on the Session
    stream is its SessionRequest; anything else, or nothing, is INVALID_ARGUMENT."""
    async def first_of(*messages: cpb.SessionUp) -> cpb.SessionRequest:
        async def stream() -> Any:
            for message in messages:
                yield message
        return await opening(stream())

    async def body() -> None:
        request = cpb.SessionRequest(node_id="n1", addr="198.18.0.1")
        assert await first_of(cpb.SessionUp(open=request), HEARTBEAT) == request
        for messages in ((HEARTBEAT, cpb.SessionUp(open=request)), ()):
            with pytest.raises(InvalidArgument, match="opens with its SessionRequest"):
                await first_of(*messages)

    run(body())
