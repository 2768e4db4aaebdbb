"""Simulated worker nodes: the real join and Dispatcher protocol, no containers.

A `SimNode` joins like a daemon does (the manager's root CA read from the TLS handshake and
checked against the token, a CSR sent with the token to NodeCA, its own ECDSA key), then
keeps a session over mutual TLS: it heartbeats at the period the manager sets, and moves
each assigned task through ACCEPTED to RUNNING after `start_delay` (or to SHUTDOWN when the
manager wants it stopped), reporting in batches as the real agent does. It can fail a task
or die on command (its connection dropped, no more heartbeats: a crashed machine).

A `Fleet` runs many of them in one asyncio process: a thousand fit beside a manager on a
small machine. Used by `bench/scale.py` and the scale tests; it never runs in a daemon.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from pyswarm.common import pki, taskstate
from pyswarm.common.netdelta import NetworkView, StaleDelta
from pyswarm.common.rpc import SESSION_METHOD
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from pyswarm.proto import objects_pb2 as opb
from pyswarm.proto import sim_pb2
from pyswarm.worker import membership
from pyswarm.worker.agent.keepalive import (
    Helpers,
    Outbox,
    open_session,
    send_heartbeats,
    send_reports,
)

S = taskstate.S
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0

LAG_TICK = 0.1  # seconds between the fleet's checks of its own event loop


@dataclass
class SimStats:
    """Counters over a fleet, for benchmarks and tests."""

    sessions: int = 0          # sessions opened (reconnects included)
    heartbeats: int = 0
    reports: int = 0           # UpdateTaskStatus calls
    refused: int = 0           # task updates the manager refused
    worst_heartbeat_gap: float = 0.0  # seconds between two heartbeats, at worst (this
                                      # process's own lag shows here)
    errors: list[str] = field(default_factory=list)
    # why sessions ended: "CODE: details" of the gRPC error, or "closed" (the stream ended)
    ended: collections.Counter[str] = field(default_factory=collections.Counter)
    # the longest this process's event loop was late (seconds): when this grows, the
    # simulated nodes themselves are slow to heartbeat, and the figures measure them
    worst_loop_lag: float = 0.0


class VersionChain:
    """A simulated node's NetworkState when it does not keep the state itself: it only
    checks that no delta was missed (each is against the version it has). A thousand full
    views of a 10,000-task network cost this process more CPU than the manager spends
    sending them, and would measure the simulator, not the manager; so would parsing the
    states (such a node reads them as sim_pb2.NetworkStateVersions)."""

    def __init__(self) -> None:
        self.version = 0

    def update(self, msg: cpb.NetworkState | sim_pb2.NetworkStateVersions) -> None:
        if msg.base_version and msg.base_version != self.version:
            raise StaleDelta(self.version, msg.base_version)
        self.version = msg.version


class SimNode:
    def __init__(self, name: str, certs: membership.NodeCerts, manager: str, addr: str,
                 stats: SimStats, start_delay: float = 0.0,
                 resources: opb.Resources | None = None, track_network: bool = True) -> None:
        self.name = name
        self.certs = certs
        self.node_id = certs.identity.node_id
        self.manager = manager
        self.addr = addr
        self.stats = stats
        self.start_delay = start_delay
        self.description = opb.NodeDescription(
            hostname=name, os="linux", architecture="x86_64",
            resources=resources or opb.Resources(nano_cpus=4 * 10**9, memory_bytes=8 << 30),
            engine_version="pyswarm-sim")
        self.tasks: dict[str, opb.Task] = {}        # what the manager assigned
        self.states: dict[str, int] = {}            # what this node reported last
        # The cluster's network view as this node has it: whole states and deltas applied
        # as the real agent applies them (a delta against another version is an error);
        # with track_network=False only the version chain is checked (VersionChain).
        self.network: NetworkView | VersionChain = (
            NetworkView(self.node_id) if track_network else VersionChain())
        self.network_messages = 0
        self._outbox = Outbox()
        self._last_beat = 0.0
        self._heard = 0.0  # when the session stream last brought a message (monotonic)
        self._starting: dict[str, asyncio.TimerHandle] = {}
        self._run: asyncio.Task[None] | None = None
        self._session_id = ""
        self.period = 1.0  # heartbeat period, as the manager sets it
        self.connected = asyncio.Event()
        self.dead = False

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self.dead = False
        self._run = asyncio.create_task(self._loop(), name=f"sim {self.name}")

    async def die(self) -> None:
        """Stop at once, like a machine losing power: no goodbye, no more heartbeats."""
        self.dead = True
        for handle in self._starting.values():
            handle.cancel()
        self._starting.clear()
        if self._run is not None:
            self._run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run
            self._run = None
        self.connected.clear()

    def fail(self, task_id: str, message: str = "simulated failure") -> None:
        """The task's process exits non-zero."""
        self._set(task_id, S.TASK_STATE_FAILED, message, err=message)

    def running(self) -> list[str]:
        return [t for t, s in self.states.items() if s == S.TASK_STATE_RUNNING]

    # ---- the session -----------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            channel = self.certs.channel(self.manager)
            try:
                await self._session(cpb_grpc.DispatcherStub(channel), self._open(channel))
                backoff = BACKOFF_MIN
                self.stats.ended["closed"] += 1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.stats.ended[f"{exc.code().name}: {exc.details()}"[:80]] += 1
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                      grpc.StatusCode.NOT_FOUND):
                    self.stats.errors.append(f"{self.name}: {exc.code().name} {exc.details()}")
            finally:
                self.connected.clear()
                await channel.close(grace=None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _open(self, channel: grpc.aio.Channel) -> Any:
        """Dispatcher/Session, read whole, or (VersionChain) with network states read only
        as far as their versions (proto/sim.proto says why)."""
        if isinstance(self.network, NetworkView):
            return cpb_grpc.DispatcherStub(channel).Session
        return channel.stream_stream(
            SESSION_METHOD, request_serializer=cpb.SessionUp.SerializeToString,
            response_deserializer=sim_pb2.SessionMessageVersions.FromString)

    async def _session(self, stub: Any, new_call: Any) -> None:
        call = new_call()
        helpers = Helpers(call)
        try:
            await open_session(call, cpb.SessionRequest(
                node_id=self.node_id, description=self.description, addr=self.addr))
            async for message in call:
                self._heard = time.monotonic()  # a word from the manager (send_heartbeats)
                if message.session_id != self._session_id:
                    self._session_id = message.session_id
                    self.stats.sessions += 1
                    self._last_beat = time.monotonic()
                    helpers.start(
                        send_heartbeats(call, lambda: self.period, lambda: self._heard),
                        send_reports(stub, self.node_id, self._session_id, self._outbox,
                                     answered=self._report_answered))
                    self._outbox.ready.set()
                    self.connected.set()
                self.period = message.heartbeat_period_ms / 1000 or self.period
                if not (message.HasField("assignments") or message.HasField("network")):
                    self._heartbeat_answered()
                if message.HasField("assignments"):
                    self._apply(message.assignments)
                if message.HasField("network"):
                    try:
                        self.network.update(message.network)
                    except StaleDelta as exc:
                        self.stats.errors.append(f"{self.name}: {exc}")
                        raise
                    self.network_messages += 1
        except asyncio.CancelledError:
            if (cause := await helpers.cause()) is not None:
                raise cause from None
            raise
        finally:
            helpers.stop()
            self._session_id = ""

    def _heartbeat_answered(self) -> None:
        now = time.monotonic()
        self.stats.heartbeats += 1
        self.stats.worst_heartbeat_gap = max(self.stats.worst_heartbeat_gap,
                                             now - self._last_beat)
        self._last_beat = now

    def _report_answered(self, answer: cpb.UpdateTaskStatusResponse) -> None:
        self.stats.reports += 1
        self.stats.refused += len(answer.refused)

    # ---- tasks -------------------------------------------------------------------------------

    def _apply(self, assignments: cpb.Assignments) -> None:
        if assignments.type == cpb.Assignments.COMPLETE:
            wanted = {t.id for t in assignments.update}
            for task_id in list(self.tasks):
                if task_id not in wanted:
                    self._forget(task_id)
        for task in assignments.update:
            self.tasks[task.id] = task
            state = self.states.get(task.id)
            if state is None:  # new to this node (or this run of it)
                state = task.status.state
                self.states[task.id] = state
            elif assignments.type == cpb.Assignments.COMPLETE:
                self._outbox.correct(task.id, task.status, opb.TaskStatus(
                    state=state, message="reported again",  # type: ignore[arg-type]
                    timestamp=_now()))
            if task.desired_state > S.TASK_STATE_RUNNING:
                if not taskstate.is_terminal(state):
                    self._cancel_start(task.id)
                    self._set(task.id, S.TASK_STATE_SHUTDOWN, "shutdown")
            elif state < S.TASK_STATE_ACCEPTED:
                self._set(task.id, S.TASK_STATE_ACCEPTED, "accepted")
                self._starting[task.id] = asyncio.get_running_loop().call_later(
                    self.start_delay, self._started, task.id)
        for task_id in assignments.remove:
            self._forget(task_id)

    def _started(self, task_id: str) -> None:
        self._starting.pop(task_id, None)
        if task_id in self.tasks:
            self._set(task_id, S.TASK_STATE_RUNNING, "started")

    def _cancel_start(self, task_id: str) -> None:
        handle = self._starting.pop(task_id, None)
        if handle is not None:
            handle.cancel()

    def _forget(self, task_id: str) -> None:
        self._cancel_start(task_id)
        self.tasks.pop(task_id, None)
        self.states.pop(task_id, None)
        self._outbox.drop(task_id)

    def _set(self, task_id: str, state: int, message: str, err: str = "") -> None:
        current = self.states.get(task_id)
        if current is None or current == state:
            return
        try:
            taskstate.check(current, state)
        except taskstate.IllegalTransition:
            return
        self.states[task_id] = state
        status = opb.TaskStatus(state=state, message=message, err=err,  # type: ignore[arg-type]
                                timestamp=_now())
        self._outbox.put(task_id, status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000000Z"


class Fleet:
    """Many simulated nodes of one cluster, in this process."""

    def __init__(self, manager: str, token: str, start_delay: float = 0.0,
                 addr_prefix: str = "127.77", track_network: bool = True) -> None:
        self.manager = manager
        self.token = token
        self.start_delay = start_delay
        self.track_network = track_network
        self.addr_prefix = addr_prefix
        self.stats = SimStats()
        self.nodes: list[SimNode] = []
        self._ca: bytes | None = None
        self._lag_watch: asyncio.Task[None] | None = None

    async def _watch_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            late = time.monotonic() - before - LAG_TICK
            self.stats.worst_loop_lag = max(self.stats.worst_loop_lag, late)

    async def join(self, count: int, concurrency: int = 32) -> list[SimNode]:
        """Join `count` more nodes (each its own key, CSR and certificate) and start them."""
        host, port = membership.parse_manager_addr(self.manager)
        if self._ca is None:
            ca, _ = await asyncio.to_thread(membership.fetch_root_ca, host, port,
                                            pki.parse_token(self.token))
            self._ca = ca
        first = len(self.nodes)
        gate = asyncio.Semaphore(concurrency)
        if self._lag_watch is None:
            self._lag_watch = asyncio.create_task(self._watch_lag())

        async def one(index: int) -> SimNode:
            name = f"sim-{index:05d}"
            async with gate:
                assert self._ca is not None
                certs, _ = await membership.request_certificate(host, port, self._ca,
                                                                self.token, name)
            # Loopback underlay addresses: real nodes of the cluster (the manager's own agent)
            # program VXLAN peers from them, and nothing may leave the machine.
            addr = f"{self.addr_prefix}.{index // 250}.{index % 250 + 1}"
            return SimNode(name, certs, self.manager, addr, self.stats, self.start_delay,
                           track_network=self.track_network)

        joined = await asyncio.gather(*(one(i) for i in range(first, first + count)))
        self.nodes.extend(joined)
        for node in joined:
            node.start()
        return joined

    async def connected(self, nodes: Iterable[SimNode] | None = None,
                        timeout: float = 60.0) -> None:
        waits = [n.connected.wait() for n in (self.nodes if nodes is None else nodes)]
        await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def running(self) -> int:
        return sum(len(n.running()) for n in self.nodes if not n.dead)

    async def close(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
            self._lag_watch = None
        await asyncio.gather(*(n.die() for n in self.nodes))
