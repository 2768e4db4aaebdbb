"""Pushes every session its node's NetworkState: whole first, then deltas against what the
session was last delivered (netstate.py builds both; common/netdelta.py applies them).

Policy:
- Pull-based: a session pulls its first state (whole) after its COMPLETE assignments;
  then, while something may be new for it, its queue holds one marker, and when its stream
  gets there the dispatcher asks `pull` for the state since what the session last
  delivered. A slow stream skips versions (one delta spans many rounds), and
  no delta is lost or sent twice. Nothing is sent when a node's state did not change.
- Coalesced and paced rounds: a round runs at most every `interval` seconds, after store
  events that can change some node's state (`matters`), and no sooner after the last one
  than the sessions it told take to send (SENDS_PER_SECOND; nor while many of them have
  not pulled yet, nor before the bytes pulled have drained at BYTES_PER_SECOND): what a
  node is sent per change is small, but every node is sent it, and each message and each
  byte has its cost. A round re-reads only the objects those events
  name (netstate.Dirty), logs what changed and marks the sessions whose state may have
  changed: all of them when a peer or a network changed, else those whose node's
  attachments changed or whose networks a changed endpoint is on.
- A round's snapshot has every event up to its revision behind it: the watch is drained
  (which never waits while items are queued) right before the snapshot is taken.
- Never an older state than sent: a session only moves forward through the rounds.
- Turns: sessions pull while the states on their way (pulled, their stream not yet past
  them) total under SENDING_BYTES; the others wait their turn in order (`turn`, `sent`),
  and meanwhile their streams carry their other messages (assignments).
- A state goes out as a SessionMessage with an empty INCREMENTAL `assignments`, so that an
  agent that applies `assignments` unconditionally sees "no change" rather than an empty
  COMPLETE set.
- Counters (Store.metrics): netpush_rounds, netpush_round_seconds, netpush_whole_states,
  netpush_deltas, netpush_bytes (serialized states handed to sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyswarm.common.protowire import varint
from pyswarm.manager.dispatcher.netstate import (
    Changes,
    Delivered,
    Dirty,
    NetworkModel,
    takes_connections,
    task_name,
)
from pyswarm.manager.store import Commit, Event, Store, Watch
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

# Rounds at most this often: a node starting 100 tasks gets a handful of deltas, not 100.
INTERVAL = 0.05
# And paced by what they cost: a round that told N sessions is followed by the next one no
# sooner than N / SENDS_PER_SECOND later (at a thousand nodes, every half second). Building
# a delta costs microseconds; sending it (gRPC, TLS, the manager port's relay) costs the
# loop that heartbeats share much more: unpaced, a thousand nodes joining had rounds every
# 50 ms each telling every node, and nodes fell behind on heartbeats (bench/scale.py).
SENDS_PER_SECOND = 2000
# Nor does a round start while more than a tenth of the sessions told by the last ones have
# not pulled yet (their streams are behind: the loop is busy), for up to this long.
BACKLOG_WAIT = 1.0
# Nor before what was pulled so far has drained at this many bytes per second. The states
# themselves are the bulk of what a manager sends: a deploy of 10,000 tasks on two overlays
# to 1,000 nodes is a gigabyte (each node learns every endpoint). Unpaced, gRPC took it as
# fast as it was pulled, the manager stopped hearing heartbeats under it, marked nine nodes
# in ten DOWN and never converged (bench/scale.py). Paced, the nodes learn of the new
# endpoints later, in bigger deltas; the total is about the same.
BYTES_PER_SECOND = 32 << 20
# And at most this many bytes of states on their way at once (one state at least). gRPC
# holds a stream's message until the connection has taken it, so a round that told every
# node held every node's state in the manager: at 1,000 nodes and 10,000 tasks, 1.3 GB of
# deltas waited behind slow connections (bench/scale.py's peak memory), and each of those
# connections had its heartbeat answers queued behind a megabyte. In turns, the states
# wait unbuilt; the manager sends as many bytes a second either way.
SENDING_BYTES = 32 << 20
KINDS = {"node", "service", "task", "network"}


@dataclass
class _Target:
    node_id: str
    notify: Callable[[], None]
    had: Delivered | None = None  # what its node has (None: nothing yet)
    pending: bool = False         # notified, not pulled since


class NetworkPush:
    def __init__(self, store: Store, interval: float = INTERVAL,
                 bytes_per_second: float = BYTES_PER_SECOND,
                 sending_bytes: int = SENDING_BYTES) -> None:
        self.store = store
        self.interval = interval
        self.bytes_per_second = bytes_per_second
        self.sending_bytes = sending_bytes
        # Sessions whose turn it is -> the bytes they count for: what they pulled, or until
        # they pull, the size of the last state pulled (a turn given is a state coming; a
        # 64th of the budget at least, so that turns given after small states are few).
        self._sending: dict[str, int] = {}
        self._last_size = 0
        self._turns: dict[str, None] = {}  # sessions waiting for a turn, oldest first
        self.model = NetworkModel()
        self._targets: dict[str, _Target] = {}
        self._dirty = Dirty()
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0                  # sessions told, not pulled since
        self._caught_up = asyncio.Event()  # set when few are
        self._drained_at = 0.0  # loop time when what was pulled so far has drained
        self.rounds = 0
        store.metrics.gauge("netpush_sessions_behind", lambda: sum(
            1 for key, t in self._targets.items() if t.pending or key in self._sending))
        store.metrics.gauge("netpush_changes_waiting", lambda: bool(self._dirty))

    def add(self, key: str, node_id: str, notify: Callable[[], None]) -> None:
        """Follow a session. It pulls its first state (whole) when ready to send it; from
        then on `notify()` means "pull when ready to send", once until the session pulls."""
        self.remove(key)
        self._targets[key] = _Target(node_id, notify, pending=True)
        self._pending += 1

    def remove(self, key: str) -> None:
        target = self._targets.pop(key, None)
        if target is not None and target.pending:
            self._pulled()
        self._turns.pop(key, None)
        self.sent(key)

    def turn(self, key: str) -> bool:
        """Whether the session may pull now. If not, it waits its turn, and its `notify()`
        is called when the turn comes; call `sent()` once its stream is past what it
        pulled (gRPC took it), or nothing changed for it."""
        if key in self._sending:
            return True
        if not self._room():
            self._turns[key] = None
            return False
        self._turns.pop(key, None)
        self._give_turn(key)
        return True

    def _room(self) -> bool:
        """Whether another turn fits: none is on, or what is on its way is under budget."""
        return not self._sending or sum(self._sending.values()) < self.sending_bytes

    def _give_turn(self, key: str) -> None:
        self._sending[key] = max(self._last_size, self.sending_bytes // 64)

    def sent(self, key: str) -> None:
        """The session's turn is over; the next ones waiting get theirs."""
        self._sending.pop(key, None)
        while self._turns and self._room():
            waiting = next(iter(self._turns))
            del self._turns[waiting]
            target = self._targets.get(waiting)
            if target is not None:
                self._give_turn(waiting)
                target.notify()

    def pull(self, key: str) -> bytes | None:
        """The session's NetworkState since what it last pulled, serialized (whole the first
        time, then deltas; see session_message), or None when nothing changed for it. What
        is returned counts as delivered."""
        target = self._targets.get(key)
        if target is None:
            return None
        if target.pending:
            target.pending = False
            self._pulled()
        wholes = self.model.whole_states
        data, target.had = self.model.state_for(target.node_id, target.had)
        if data is not None:
            if key in self._sending:
                self._sending[key] = self._last_size = len(data)
            metrics = self.store.metrics
            metrics.add("netpush_whole_states" if self.model.whole_states > wholes
                        else "netpush_deltas")
            metrics.add("netpush_bytes", len(data))
            now = asyncio.get_running_loop().time()
            self._drained_at = max(self._drained_at, now) + len(data) / self.bytes_per_second
        return data

    # ---- rounds ----------------------------------------------------------------------------

    def open(self) -> None:
        """Follow the store from its current snapshot (start() does this, then runs)."""
        if self._watch is None:
            self._watch = self.store.watch(KINDS)
            self.model.load(self.store.view())  # no await between: the watch has the rest

    async def start(self) -> None:
        self.open()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    async def _run(self) -> None:
        assert self._watch is not None
        watch = self._watch
        loop = asyncio.get_running_loop()
        due = -math.inf  # the next round's earliest time
        while True:
            try:
                self._note(await anext(watch))
            except StopAsyncIteration:
                return
            if not self._dirty:
                continue
            delay = max(due, self._drained_at) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._backlog():
                with contextlib.suppress(TimeoutError):
                    self._caught_up.clear()
                    await asyncio.wait_for(self._caught_up.wait(), BACKLOG_WAIT)
            told = self._pending
            if await self.step() is not None:
                told = self._pending - told
                due = loop.time() + max(self.interval, told / SENDS_PER_SECOND)

    def _backlog(self) -> bool:
        return self._pending > max(1, len(self._targets) // 10)

    def _pulled(self) -> None:
        self._pending -= 1
        if not self._backlog():
            self._caught_up.set()

    async def step(self) -> Changes | None:
        """One round now: the events queued so far, then the store's current snapshot."""
        watch = self._watch
        assert watch is not None, "open() first"
        while watch.pending():
            self._note(await anext(watch))  # queued: returns without waiting
        return self._round()

    def _note(self, item: Event | Commit) -> None:
        if isinstance(item, Event) and matters(item):
            self._dirty.note(item)

    def _round(self) -> Changes | None:
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, Dirty()
        changes = self.model.advance(self.store.view(), dirty)
        if changes is not None:
            self.rounds += 1
            self._notify(changes)
            metrics = self.store.metrics
            metrics.add("netpush_rounds")
            metrics.add("netpush_round_seconds", time.perf_counter() - started)
        return changes

    def _notify(self, ch: Changes) -> None:
        for target in self._targets.values():
            if target.pending:
                continue
            had = target.had
            if (had is None or ch.networks or (ch.peers and ch.peers != {target.node_id})
                    or target.node_id in ch.nodes or not ch.touched.isdisjoint(had.joined)):
                target.pending = True
                self._pending += 1
                target.notify()


class Serialized:
    """A SessionMessage, serialized already: a NetworkState is built serialized (a whole one
    is a megabyte at 10,000 tasks), and parsing it into a message only for gRPC to
    serialize it again cost the manager's loop as much as building it and held three
    copies per session. The Dispatcher service's Session serializer (servicers.py) passes
    these through.

    It is sent once, and gives its bytes up to the serializer: gRPC's server keeps a
    stream's last response referenced until the stream yields the next one, so every
    waiting session would otherwise hold the last state it was sent (bench/scale.py's
    memory peak: a few hundred megabytes at 300 nodes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def parse(self) -> cpb.SessionMessage:
        return cpb.SessionMessage.FromString(self.data)

    def take(self) -> bytes:
        """The bytes, once: the message is empty afterwards."""
        data, self.data = self.data, b""
        return data


def serialize_session(message: cpb.SessionMessage | Serialized) -> bytes:
    """The Session stream's response serializer."""
    if isinstance(message, Serialized):
        return message.take()
    return message.SerializeToString()


def session_message(session_id: str, period_ms: int, state: bytes) -> Serialized:
    """A SessionMessage carrying a serialized NetworkState, with an empty INCREMENTAL
    assignments (see the module's policy), serialized."""
    head = cpb.SessionMessage(session_id=session_id, heartbeat_period_ms=period_ms,
                              assignments=cpb.Assignments(type=cpb.Assignments.INCREMENTAL))
    return Serialized(b"".join((head.SerializeToString(), _NETWORK_TAG, varint(len(state)),
                                state)))


# SessionMessage.network: field 4, length-delimited.
_NETWORK_TAG = bytes([cpb.SessionMessage.NETWORK_FIELD_NUMBER << 3 | 2])


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
            old.node_id != new.node_id or old.networks != new.networks
            or task_name(old) != task_name(new))  # type: ignore[arg-type]
    if event.kind == "node":
        if old is None or new is None:
            return True
        return (old.status.addr != new.status.addr
                or _ready(old) != _ready(new)  # type: ignore[arg-type]
                or old.attachments != new.attachments)
    return False


def _ready(node: opb.Node) -> bool:
    return node.status.state == opb.NODE_STATE_READY
