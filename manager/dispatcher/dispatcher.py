"""The dispatcher: worker sessions, heartbeats and task status.

Policy:
- A session starts with the COMPLETE set of the node's tasks, then streams INCREMENTAL
  changes computed from the store's watch at each commit (level-triggered: the set is
  recomputed and diffed against what was sent, so no event can be missed or doubled).
- One watch serves every session: each commit's task events are routed by node id, and
  only the sessions of nodes a commit touched recompute their set. (A watch per session
  made every commit cost O(sessions): a million wake-ups to join a thousand nodes.)
- Heartbeats come on the session's own stream (proto/cluster.proto) and live in memory
  only: a heartbeat never writes to the store. The node's state is written when it
  changes (READY on a session, DOWN when its heartbeats stop). Each session reads its
  heartbeats as they arrive, whatever it is sending meanwhile, and answers them one at a
  time: an answer waits in the session's queue behind what was queued before it, and
  heartbeats heard while it waits are not answered again (they are when it has left).
- A node whose heartbeats stop for `heartbeat_misses` periods is DOWN; the orchestrator
  then replaces its tasks elsewhere at once. After a manager start every known node gets
  `reconnect_grace` to come back before that happens. The wait grows by what the manager
  itself takes to hear a heartbeat (probe.py), and after DOWNs that were false: nodes that
  open a session again right after (ManagerConfig.false_down_*).
- Status updates arrive in batches per node, and the batches of all nodes are written
  together (group commit: while one commit is in flight the next requests gather, and go
  in one transaction when it ends). An update that would move a task backwards is refused
  for that task alone. A thousand nodes reporting at once cost a handful of commits.
- After the COMPLETE assignments a session gets its node's whole NetworkState, then deltas
  against what it last sent whenever it changes (netpush.py: coalesced rounds, pulled
  when the stream is ready to send).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.common.errors import InvalidArgument, NotFound, PermissionDenied
from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher import assignments as asg
from pyswarm.manager.dispatcher.netpush import NetworkPush, Serialized, session_message
from pyswarm.manager.dispatcher.probe import IngressProbe
from pyswarm.manager.security.ca import removed
from pyswarm.manager.store import Event, Store, Watch, WriteTx
from pyswarm.manager.store.errors import NotLeader
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

N = opb.NodeState
# In a session's queue: "answer the heartbeats heard" (a SessionMessage of the period).
ANSWER = "answer"
# Lateness of the liveness loop's own wake-up (seconds) past which it counts as a manager
# stall, given back to every node's heartbeat deadline.
STALL_TOLERANCE = 0.05


@dataclass
class _Session:
    id: str
    node_id: str
    queue: asyncio.Queue[cpb.SessionMessage | Serialized | bool | str | None] = field(
        default_factory=asyncio.Queue)
    # What the node was last sent: task id -> fingerprint (assignments.diff).
    sent: dict[str, int] = field(default_factory=dict)
    answering: bool = False  # an ANSWER is in the queue
    failure: Exception | None = None  # what ended the session, if not the node or a DOWN

    def end(self, network: NetworkPush) -> None:
        """End the session: its stream returns when it next reads its queue, and any turn
        it holds for a NetworkState is given up now. A stream stuck writing to a node that
        is gone (no FIN: a partition, a machine off) does not read its queue for as long
        as TCP keeps retrying, and with its turn it would hold up every other node's."""
        self.queue.put_nowait(None)
        network.remove(self.id)

    def offer_network(self) -> None:
        """NetworkPush's notice that the node's NetworkState may have changed: `True` in
        the queue stands for "pull it when the stream gets there" (NetworkPush queues one
        at a time), so a slow stream gets one delta since what it last sent, not every
        state since it fell behind."""
        self.queue.put_nowait(True)


class Dispatcher:
    def __init__(self, store: Store, cfg: ManagerConfig, manager_node_ids: set[str],
                 managers: Callable[[], list[str]] = list,
                 deposed: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.deposed = deposed  # called when a write finds this manager's term over
        self.managers = managers  # every live manager's ADDR:PORT, the leader's first
        self.cfg = cfg
        self.manager_node_ids = manager_node_ids
        self._sessions: dict[str, _Session] = {}
        self._last_beat: dict[str, float] = {}
        self._liveness: asyncio.Task[None] | None = None
        self._router: asyncio.Task[None] | None = None
        self._downs: collections.deque[float] = collections.deque()  # recent DOWN marks
        self._held_since: dict[str, float] = {}  # nodes held by _hold_mass_failure
        self._marked_down: dict[str, float] = {}  # node -> when it was marked DOWN (recent)
        self._extra = 0.0          # seconds added before DOWN after false ones (config)
        self._extra_since = 0.0    # when the extra last grew or shrank
        self._holding = False
        # Status batches waiting for the next group commit, and whether one is running.
        self._statuses: list[tuple[str, list[cpb.TaskStatusUpdate],
                                   asyncio.Future[list[str]]]] = []
        self._status_writer: asyncio.Task[None] | None = None
        self.network = NetworkPush(store)
        store.metrics.gauge("dispatcher_down_extra_seconds",
                            lambda: self._current_extra(time.monotonic()))
        # Measures heartbeats' delay inside this manager (probe.py): nodes get that much
        # more time before they are DOWN. Started and stopped by the manager.
        self.probe: IngressProbe | None = None

    def ingress_lag(self) -> float:
        return self.probe.lag() if self.probe is not None else 0.0

    @property
    def period_ms(self) -> int:
        return int(self.cfg.heartbeat_period * 1000)

    async def start(self, grace: float | None = None) -> None:
        """Every node not already down gets `grace` seconds (reconnect_grace by default)
        to open a session before it is marked down."""
        grace = self.cfg.reconnect_grace if grace is None else grace
        deadline_base = time.monotonic() + grace - self.cfg.down_after
        for node in self.store.view().all("node"):
            if node.status.state != N.NODE_STATE_DOWN:
                self._last_beat[node.id] = deadline_base
        self._liveness = asyncio.create_task(self._watch_liveness())
        self._router = asyncio.create_task(self._route(self.store.watch({"task", "node"})))
        await self.network.start()

    async def stop(self) -> None:
        await self.network.stop()
        for loop in (self._liveness, self._router):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        for session in list(self._sessions.values()):
            session.end(self.network)

    # ---- sessions ------------------------------------------------------------------------

    async def session(self, request: cpb.SessionRequest,
                      heartbeats: AsyncIterator[cpb.SessionUp] | None = None,
                      ) -> AsyncIterator[cpb.SessionMessage | Serialized]:
        """The node's session: its messages, network states among them already serialized
        (netpush.Serialized), and answers to the `heartbeats` (the node's later messages on
        the stream), which are heard as they come. The session ends when they end, with
        what ended them (a message that is not a heartbeat: InvalidArgument)."""
        node_id = request.node_id
        if not node_id:
            raise NotFound("a session needs the node's id")
        self._came_back(node_id)
        self.store.metrics.add("dispatcher_sessions")
        await self.store.update(lambda tx: self._register(tx, request), retries=5, fenced=True)
        session = _Session(secrets.token_hex(8), node_id)
        old = self._sessions.get(node_id)
        if old is not None:
            old.end(self.network)  # a node has one session: the newest wins
        self._sessions[node_id] = session
        self._last_beat[node_id] = time.monotonic()
        hearing = (asyncio.create_task(self._hear(session, heartbeats))
                   if heartbeats is not None else None)
        try:
            # No await between reading the set and registering the session: every later
            # commit reaches it through the router.
            update, _, session.sent = asg.diff({}, self._tasks_of(node_id))
            self.network.add(session.id, node_id, session.offer_network)
            session.offer_network()  # the first NetworkState (whole), right after these
            yield cpb.SessionMessage(
                session_id=session.id, heartbeat_period_ms=self.period_ms,
                assignments=asg.message(cpb.Assignments.COMPLETE, update, []),
                managers=self.managers())
            # What was sent is not kept while the session waits: a whole state is megabytes
            # at 10,000 tasks, and every session held its last one (twice) until the next.
            while True:
                item = await session.queue.get()
                if item is None:
                    if session.failure is not None:
                        raise session.failure
                    return
                if item is ANSWER:
                    session.answering = False  # heartbeats heard from now on: another
                    yield cpb.SessionMessage(session_id=session.id,
                                             heartbeat_period_ms=self.period_ms)
                    continue
                turn = item is True
                if turn:
                    # The state in its turn (netpush.py); until then the queue's other
                    # messages go out, and the turn comes back through the queue.
                    if not self.network.turn(session.id):
                        continue
                    state = self.network.pull(session.id)
                    if state is None:
                        self.network.sent(session.id)
                        continue  # nothing changed for this node
                    item = session_message(session.id, self.period_ms, state)
                    state = None
                assert isinstance(item, cpb.SessionMessage | Serialized)
                yield item  # back here once gRPC has taken it
                item = None
                if turn:
                    self.network.sent(session.id)
        finally:
            if hearing is not None:
                hearing.cancel()
            self.network.remove(session.id)
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]

    async def _hear(self, session: _Session, heartbeats: AsyncIterator[cpb.SessionUp]) -> None:
        """Hear a session's heartbeats until they end; then end the session (with the
        error, if one ended them)."""
        try:
            async for up in heartbeats:
                if not up.HasField("heartbeat"):
                    raise InvalidArgument("a session is opened once: after its first "
                                          "message a node sends only heartbeats on it")
                self._beat(session)
        except Exception as exc:  # noqa: BLE001 - the session's stream reports it
            session.failure = exc
        session.end(self.network)

    def _tasks_of(self, node_id: str) -> list[opb.Task]:
        return [t for t in self.store.view().find("task", node_id=node_id)
                if asg.belongs_to_node(t, node_id)]

    async def _route(self, watch: Watch) -> None:
        """The one watch of every session: after each commit, the sessions of the nodes it
        touched get their INCREMENTAL changes; nodes it deleted end their sessions."""
        touched: set[str] = set()
        try:
            async for item in watch:
                if isinstance(item, Event):
                    if item.kind == "task":
                        touched.add(item.obj.node_id)
                        if item.old is not None:
                            touched.add(item.old.node_id)
                    elif item.action == "delete":
                        self._node_removed(item.obj.id)
                    continue
                for node_id in touched:
                    session = self._sessions.get(node_id) if node_id else None
                    if session is None:
                        continue
                    update, remove, session.sent = asg.diff(session.sent,
                                                            self._tasks_of(node_id))
                    if update or remove:
                        session.queue.put_nowait(cpb.SessionMessage(
                            session_id=session.id, heartbeat_period_ms=self.period_ms,
                            assignments=asg.message(cpb.Assignments.INCREMENTAL, update,
                                                    remove)))
                touched.clear()
        finally:
            watch.close()

    def _node_removed(self, node_id: str) -> None:
        """A node deleted from the store (`node rm`): its session ends PERMISSION_DENIED,
        which its agent reports, and a new one is refused (security/authz.py)."""
        session = self._sessions.pop(node_id, None)
        self._last_beat.pop(node_id, None)
        if session is not None:
            print(f"pyswarm manager: ended the session of node {node_id}: it was removed "
                  "from the swarm", flush=True)
            session.failure = PermissionDenied(removed(node_id))
            session.end(self.network)

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
            before = None
        else:
            before, node = node, _copy(node)
        node.description.CopyFrom(request.description)
        node.status.state = N.NODE_STATE_READY
        node.status.message = ""
        node.status.addr = request.addr
        if fresh:
            tx.create(node)
        elif node != before:
            # A session reopened by the same node changes nothing: no write, no event.
            tx.update(node)

    # ---- heartbeats ------------------------------------------------------------------------

    def _beat(self, session: _Session) -> None:
        """A heartbeat of the session's node: it is alive now; answered once the answer
        already due (if any) is on its way."""
        if self._sessions.get(session.node_id) is not session:
            return  # the session is over (replaced, or its node marked DOWN): it ends
        now = time.monotonic()
        previous = self._last_beat.get(session.node_id)
        if previous is not None:
            self.store.metrics.peak("dispatcher_heartbeat_gap_seconds", now - previous)
        self._last_beat[session.node_id] = now
        self._held_since.pop(session.node_id, None)
        self.store.metrics.add("dispatcher_heartbeats")
        if not session.answering:
            session.answering = True
            session.queue.put_nowait(ANSWER)

    async def _watch_liveness(self) -> None:
        while True:
            # Wake when the first node is due (not on a fixed tick, which added up to half a
            # period to every failure's detection), and at least every half period.
            due = (min(self._last_beat.values(), default=time.monotonic())
                   + self.cfg.down_after + self.ingress_lag() + self._extra)
            nap = min(max(due - time.monotonic(), 0.01), self.cfg.heartbeat_period / 2)
            before = time.monotonic()
            await asyncio.sleep(nap)
            now = time.monotonic()
            late = now - before - nap
            if late > STALL_TOLERANCE:
                # The manager itself was stalled (a long pass, a slow disk, an overloaded
                # loop): heartbeats that arrived meanwhile were not heard either. Nodes get
                # that time back, or one stall marks every node DOWN at once and the
                # cluster collapses under the re-placement it causes. A mass-failure hold
                # gets the time back too: it is there for an overloaded manager.
                for node_id in self._last_beat:
                    self._last_beat[node_id] += late
                for node_id in self._held_since:
                    self._held_since[node_id] += late
                self.store.metrics.add("dispatcher_stall_seconds", late)
            # A heartbeat takes this manager `lag` to hear now (an overloaded manager):
            # nobody is DOWN for what is still in its own queues.
            lag = self.ingress_lag()
            self.store.metrics.peak("dispatcher_ingress_lag_seconds", lag)
            wait = self.cfg.down_after + lag + self._current_extra(now)
            dead = [n for n, t in self._last_beat.items() if now - t > wait]
            dead = self._hold_mass_failure(dead, now)
            if not dead:
                continue
            self._downs.extend(now for _ in dead)
            self.store.metrics.add("dispatcher_marked_down", len(dead))
            self._marked_down.update((n, now) for n in dead)
            for node_id in dead:
                self._held_since.pop(node_id, None)
                del self._last_beat[node_id]
                session = self._sessions.pop(node_id, None)
                if session is not None:
                    session.end(self.network)
            # (batch: more nodes than one etcd transaction holds may go down at once)
            try:
                await self.store.batch(lambda tx, dead=dead: _mark_down(tx, dead),
                                       retries=5, fenced=True)
            except NotLeader:
                self.deposed()
                return

    def _came_back(self, node_id: str) -> None:
        """A session opened: if the node was marked DOWN moments ago, that was a false DOWN,
        and the manager waits longer before the next (ManagerConfig.false_down_*)."""
        now = time.monotonic()
        window = self.cfg.false_down_window
        for n, t in list(self._marked_down.items()):
            if now - t > window:
                del self._marked_down[n]
        if self._marked_down.pop(node_id, None) is None:
            return
        self._current_extra(now)
        grown = min(max(2 * self._extra, self.cfg.heartbeat_period),
                    self.cfg.false_down_max_extra)
        if grown > self._extra:
            if self._extra == 0:
                print(f"pyswarm manager: node {node_id} was marked down but is back at once; "
                      f"waiting longer before marking nodes down (is this manager "
                      f"overloaded?)", flush=True)
            self._extra = grown
            self.store.metrics.peak("dispatcher_false_down_extra_seconds", grown)
        self._extra_since = now
        self.store.metrics.add("dispatcher_false_downs")

    def _current_extra(self, now: float) -> float:
        """The extra wait before DOWN now: halved for each quiet window since it changed."""
        while self._extra and now - self._extra_since > self.cfg.false_down_window:
            self._extra = self._extra / 2 if self._extra / 2 >= self.cfg.heartbeat_period else 0.0
            self._extra_since += self.cfg.false_down_window
        return self._extra

    def _hold_mass_failure(self, dead: list[str], now: float) -> list[str]:
        """The nodes to mark DOWN now: all of `dead`, unless too many nodes fail at once
        (ManagerConfig.mass_failure_*): those are given one more period at a time, each for
        at most mass_failure_hold seconds."""
        window = 3 * self.cfg.down_after
        while self._downs and self._downs[0] < now - window:
            self._downs.popleft()
        failing = len(self._downs) + len(dead)
        tracked = len(self._last_beat) + len(self._downs)
        if len(dead) < self.cfg.mass_failure_min or (
                failing <= self.cfg.mass_failure_fraction * tracked):
            return dead
        held = [n for n in dead
                if now - self._held_since.setdefault(n, now) < self.cfg.mass_failure_hold]
        if held:
            if not self._holding:
                print(f"pyswarm manager: {failing} of {tracked} nodes missed their heartbeats "
                      f"at once; holding off marking them down for up to "
                      f"{self.cfg.mass_failure_hold:g} s (is this manager overloaded or cut "
                      f"off?)", flush=True)
            self._holding = True
            for node_id in held:
                self._last_beat[node_id] = now - self.cfg.down_after + self.cfg.heartbeat_period
            self.store.metrics.add("dispatcher_mass_failure_holds", len(held))
        else:
            self._holding = False
        held_set = set(held)
        return [n for n in dead if n not in held_set]

    # ---- task status -----------------------------------------------------------------------

    async def update_task_status(
        self, request: cpb.UpdateTaskStatusRequest
    ) -> cpb.UpdateTaskStatusResponse:
        session = self._sessions.get(request.node_id)
        if session is None or session.id != request.session_id:
            raise NotFound("session invalid: open a new session")
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._statuses.append((request.node_id, list(request.updates), done))
        if self._status_writer is None:
            self._status_writer = asyncio.create_task(self._write_statuses())
        return cpb.UpdateTaskStatusResponse(refused=await done)

    async def _write_statuses(self) -> None:
        """Write the gathered status batches, one transaction each round, until none wait.

        The write may be split into several commits (Store.batch: etcd caps a txn's ops);
        that is safe because applying a status twice is a no-op, so a retry after a
        conflict in a later part redoes only what is missing."""
        try:
            while self._statuses:
                batches, self._statuses = self._statuses, []
                try:
                    results = await self.store.batch(
                        lambda tx, b=batches: [_apply_statuses(tx, node_id, updates)
                                               for node_id, updates, _ in b], retries=5,
                        fenced=True)
                except Exception as exc:  # noqa: BLE001 - each caller gets the error
                    if isinstance(exc, NotLeader):
                        self.deposed()
                    for *_, done in batches:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                self.store.metrics.add("dispatcher_status_commits")
                self.store.metrics.add("dispatcher_status_updates",
                                       sum(len(u) for _, u, _ in batches))
                for (*_, done), refused in zip(batches, results, strict=True):
                    if not done.done():
                        done.set_result(refused)
        finally:
            self._status_writer = None


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
