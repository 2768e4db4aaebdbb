"""Pushes every session its node's NetworkState: once after its COMPLETE assignments, then
whole again each time it changes.

Policy:
- Coalesced: a round runs at most every `interval` seconds, whatever the rate of commits,
  and only after a commit that could change some node's state (a task starting or stopping
  to take connections, a service, a network, a node's address, readiness or attachments).
- One round serves every session from one snapshot (netstate.Round); a session is sent
  its state only when its bytes differ from what it was last sent, and never an older one.
- A state goes out as a SessionMessage with an empty INCREMENTAL `assignments`, so that an
  agent that applies `assignments` unconditionally sees "no change" rather than an empty
  COMPLETE set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from pyswarm.manager.dispatcher.netstate import Builder, Parts, serialized, takes_connections
from pyswarm.manager.store import Commit, Event, Store, Watch
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

# Rounds at most this often: a node starting 100 tasks gets a handful of states, not 100,
# and one round's cost (every session's state) is paid at most 20 times a second.
INTERVAL = 0.05


@dataclass
class _Target:
    node_id: str
    send: Callable[[bytes], None]
    sent: Parts | None = None
    version: int = 0


class NetworkPush:
    def __init__(self, store: Store, interval: float = INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._builder = Builder()
        self._targets: dict[str, _Target] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def add(self, key: str, node_id: str, send: Callable[[bytes], None]) -> None:
        """Follow a session: its first state goes out with the next round. `send` gets the
        serialized NetworkState (see session_message)."""
        self._targets[key] = _Target(node_id, send)
        self._wake.set()

    def remove(self, key: str) -> None:
        self._targets.pop(key, None)

    async def start(self) -> None:
        watch = self.store.watch({"node", "service", "task", "network"})
        self._task = asyncio.create_task(self._run(watch))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, watch: Watch) -> None:
        reader = asyncio.create_task(self._read(watch))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.push()
                await asyncio.sleep(self.interval)
        finally:
            reader.cancel()
            watch.close()

    async def _read(self, watch: Watch) -> None:
        relevant = False
        async for item in watch:
            if isinstance(item, Event):
                relevant = relevant or matters(item)
            elif isinstance(item, Commit) and relevant:
                relevant = False
                self._wake.set()

    async def push(self) -> None:
        """One round: every followed session whose state changed is sent it. The loop is
        given back between sessions: at a thousand nodes a round takes seconds, and
        heartbeats must not wait for it."""
        if not self._targets:
            return
        self.rounds += 1
        now = self._builder.build(self.store.view())
        for target in list(self._targets.values()):
            await asyncio.sleep(0)
            if now.revision < target.version:
                continue
            parts = now.parts(target.node_id)
            if parts == target.sent:
                continue
            target.sent = parts
            target.version = now.revision
            target.send(serialized(now.revision, parts))


def session_message(session_id: str, period_ms: int, state: bytes) -> cpb.SessionMessage:
    """A SessionMessage carrying a serialized NetworkState, parsed once: building it from a
    NetworkState object would copy the state again (it is a megabyte at 10,000 tasks)."""
    head = cpb.SessionMessage(session_id=session_id, heartbeat_period_ms=period_ms,
                              assignments=cpb.Assignments(type=cpb.Assignments.INCREMENTAL))
    return cpb.SessionMessage.FromString(
        head.SerializeToString() + _NETWORK_TAG + _varint(len(state)) + state)


# SessionMessage.network: field 4, length-delimited.
_NETWORK_TAG = bytes([4 << 3 | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def matters(event: Event) -> bool:
    """Whether a store event can change any node's NetworkState."""
    if event.kind in ("service", "network"):
        return True
    old, new = event.old, (None if event.action == "delete" else event.obj)
    if event.kind == "task":
        before = old is not None and takes_connections(old)  # type: ignore[arg-type]
        after = new is not None and takes_connections(new)  # type: ignore[arg-type]
        if before != after:
            return True
        return after and old is not None and new is not None and (
            old.node_id != new.node_id or old.networks != new.networks)
    if event.kind == "node":
        if old is None or new is None:
            return True
        return (old.status.addr != new.status.addr
                or _ready(old) != _ready(new)  # type: ignore[arg-type]
                or old.attachments != new.attachments)
    return False


def _ready(node: opb.Node) -> bool:
    return node.status.state == opb.NODE_STATE_READY
