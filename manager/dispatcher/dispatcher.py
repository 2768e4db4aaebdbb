"""The dispatcher: worker sessions, heartbeats and task status.

Policy:
- A session starts with the COMPLETE set of the node's tasks, then streams INCREMENTAL
  changes computed from the store's watch at each commit (level-triggered: the set is
  recomputed and diffed against what was sent, so no event can be missed or doubled).
- Heartbeats live in memory only: a heartbeat never writes to the store. The node's state
  is written when it changes (READY on a session, DOWN when its heartbeats stop).
- A node whose heartbeats stop for `heartbeat_misses` periods is DOWN; the orchestrator
  then replaces its tasks elsewhere at once. After a manager start every known node gets
  `reconnect_grace` to come back before that happens.
- Status updates arrive in batches and are written in one transaction per batch; an update
  that would move a task backwards is refused for that task alone.
- After the COMPLETE assignments a session gets its node's NetworkState, then the whole
  state again whenever it changes (netpush.py: coalesced, one round for all sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.common.errors import NotFound
from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher import assignments as asg
from pyswarm.manager.dispatcher.netpush import NetworkPush, session_message
from pyswarm.manager.store import Commit, Event, Store, WriteTx
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

N = opb.NodeState


@dataclass
class _Session:
    id: str
    node_id: str
    queue: asyncio.Queue[cpb.SessionMessage | bool | None] = field(
        default_factory=asyncio.Queue)
    # The newest NetworkState not yet sent, serialized; `True` in the queue stands for it,
    # so a slow stream holds one state (the latest), not every state since it fell behind.
    network: bytes | None = None

    def offer_network(self, state: bytes) -> None:
        if self.network is None:
            self.queue.put_nowait(True)
        self.network = state


class Dispatcher:
    def __init__(self, store: Store, cfg: ManagerConfig, manager_node_ids: set[str]) -> None:
        self.store = store
        self.cfg = cfg
        self.manager_node_ids = manager_node_ids
        self._sessions: dict[str, _Session] = {}
        self._last_beat: dict[str, float] = {}
        self._liveness: asyncio.Task[None] | None = None
        self.network = NetworkPush(store)

    @property
    def period_ms(self) -> int:
        return int(self.cfg.heartbeat_period * 1000)

    async def start(self) -> None:
        # Every node not already down gets the grace period to reconnect.
        deadline_base = time.monotonic() + self.cfg.reconnect_grace - self.cfg.down_after
        for node in self.store.view().all("node"):
            if node.status.state != N.NODE_STATE_DOWN:
                self._last_beat[node.id] = deadline_base
        self._liveness = asyncio.create_task(self._watch_liveness())
        await self.network.start()

    async def stop(self) -> None:
        await self.network.stop()
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
        for session in list(self._sessions.values()):
            session.queue.put_nowait(None)

    # ---- sessions ------------------------------------------------------------------------

    async def session(self, request: cpb.SessionRequest) -> AsyncIterator[cpb.SessionMessage]:
        node_id = request.node_id
        if not node_id:
            raise NotFound("a session needs the node's id")
        await self.store.update(lambda tx: self._register(tx, request), retries=5)
        session = _Session(secrets.token_hex(8), node_id)
        old = self._sessions.get(node_id)
        if old is not None:
            old.queue.put_nowait(None)  # a node has one session: the newest wins
        self._sessions[node_id] = session
        self._last_beat[node_id] = time.monotonic()
        watch = self.store.watch({"task"})
        try:
            now = [t for t in self.store.view().find("task", node_id=node_id)
                   if asg.belongs_to_node(t, node_id)]
            update, _, sent = asg.diff({}, now)
            self.network.add(session.id, node_id, session.offer_network)
            yield cpb.SessionMessage(
                session_id=session.id, heartbeat_period_ms=self.period_ms,
                assignments=asg.message(cpb.Assignments.COMPLETE, update, []))
            pump = asyncio.create_task(self._pump(watch, session, sent))
            try:
                while True:
                    item = await session.queue.get()
                    if item is None:
                        return
                    if item is True:
                        state, session.network = session.network, None
                        if state is None:
                            continue
                        item = session_message(session.id, self.period_ms, state)
                    assert isinstance(item, cpb.SessionMessage)
                    yield item
            finally:
                pump.cancel()
        finally:
            self.network.remove(session.id)
            watch.close()
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]

    async def _pump(self, watch: AsyncIterator[Event | Commit], session: _Session,
                    sent: dict[str, tuple[int, int]]) -> None:
        """Turn store commits touching this node's tasks into incremental assignments.

        `sent` is what the COMPLETE set held; the watch was opened before it was read, so
        every later commit is seen here."""
        node_id = session.node_id
        touched = False
        async for item in watch:
            if isinstance(item, Event):
                if item.obj.node_id == node_id or (item.old is not None
                                                   and item.old.node_id == node_id):
                    touched = True
                continue
            if not touched:
                continue
            touched = False
            now = [t for t in self.store.view().find("task", node_id=node_id)
                   if asg.belongs_to_node(t, node_id)]
            update, remove, sent = asg.diff(sent, now)
            if update or remove:
                session.queue.put_nowait(cpb.SessionMessage(
                    session_id=session.id, heartbeat_period_ms=self.period_ms,
                    assignments=asg.message(cpb.Assignments.INCREMENTAL, update, remove)))

    def _register(self, tx: WriteTx, request: cpb.SessionRequest) -> None:
        node = tx.get("node", request.node_id)
        fresh = node is None
        if fresh:
            node = opb.Node(id=request.node_id)
            manager = request.node_id in self.manager_node_ids
            role = opb.NODE_ROLE_MANAGER if manager else opb.NODE_ROLE_WORKER
            node.role = role
            node.spec.desired_role = role
            node.spec.availability = opb.NODE_AVAILABILITY_ACTIVE
        else:
            node = _copy(node)
        node.description.CopyFrom(request.description)
        node.status.state = N.NODE_STATE_READY
        node.status.message = ""
        node.status.addr = request.addr
        if fresh:
            tx.create(node)
        else:
            tx.update(node)

    # ---- heartbeats ------------------------------------------------------------------------

    def heartbeat(self, request: cpb.HeartbeatRequest) -> cpb.HeartbeatResponse:
        session = self._sessions.get(request.node_id)
        if session is None or session.id != request.session_id:
            raise NotFound("session invalid: open a new session")
        self._last_beat[request.node_id] = time.monotonic()
        return cpb.HeartbeatResponse(period_ms=self.period_ms)

    async def _watch_liveness(self) -> None:
        while True:
            # Wake when the first node is due (not on a fixed tick, which added up to half a
            # period to every failure's detection), and at least every half period.
            due = min(self._last_beat.values(), default=time.monotonic()) + self.cfg.down_after
            await asyncio.sleep(min(max(due - time.monotonic(), 0.01),
                                    self.cfg.heartbeat_period / 2))
            now = time.monotonic()
            dead = [n for n, t in self._last_beat.items() if now - t > self.cfg.down_after]
            if not dead:
                continue
            for node_id in dead:
                del self._last_beat[node_id]
                session = self._sessions.pop(node_id, None)
                if session is not None:
                    session.queue.put_nowait(None)
            await self.store.update(lambda tx, dead=dead: _mark_down(tx, dead), retries=5)

    # ---- task status -----------------------------------------------------------------------

    async def update_task_status(
        self, request: cpb.UpdateTaskStatusRequest
    ) -> cpb.UpdateTaskStatusResponse:
        session = self._sessions.get(request.node_id)
        if session is None or session.id != request.session_id:
            raise NotFound("session invalid: open a new session")
        refused = await self.store.update(
            lambda tx: _apply_statuses(tx, request.node_id, request.updates), retries=5)
        return cpb.UpdateTaskStatusResponse(refused=refused)


def _copy(msg):  # type: ignore[no-untyped-def]
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _mark_down(tx: WriteTx, node_ids: list[str]) -> None:
    for node_id in node_ids:
        node = tx.get("node", node_id)
        if node is None or node.status.state == N.NODE_STATE_DOWN:
            continue
        node = _copy(node)
        node.status.state = N.NODE_STATE_DOWN
        node.status.message = "heartbeat failure"
        tx.update(node)


def _apply_statuses(tx: WriteTx, node_id: str, updates: list[cpb.TaskStatusUpdate]) -> list[str]:
    refused = []
    for u in updates:
        task = tx.get("task", u.task_id)
        if task is None or task.node_id != node_id:
            refused.append(u.task_id)
            continue
        if task.status == u.status:
            continue
        try:
            taskstate.check(task.status.state, u.status.state)
        except taskstate.IllegalTransition:
            refused.append(u.task_id)
            continue
        task = _copy(task)
        task.status.CopyFrom(u.status)
        tx.update(task)
    return refused
