"""The orchestrator loop: keeps every service at its desired tasks.

Edge-triggered intake, level-triggered work (SwarmKit's replicated orchestrator): store
events only mark services dirty (a task event only when it can change a decision:
`_may_change_reconcile`); at each pass (pacing.py) every dirty service is reconciled from
the store by the pure `reconcile()` and its actions are applied in one transaction (split
only past the backend's per-commit limit: Store.batch). A task event, or a node event for
the tasks on that node, marks only the task's slot of a replicated service: marked slots
are reconciled alone (`reconcile_slots`) when the rest of the service cannot change, else
the whole service is.

Policy beyond `reconcile()`:
- A replacement that must wait (restart delay) is not created early: a timer marks the
  service dirty again when the delay is over, and `reconcile()` then asks for it.
- A removed service's tasks are shut down; ended ones are deleted once their node has
  reported them (or at once if they never reached a node).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pyswarm.common import taskstate
from pyswarm.manager.config import PASS_CHUNK_TASKS
from pyswarm.manager.loops.pacing import run_passes
from pyswarm.manager.loops.tasks import copy, new_task, set_status
from pyswarm.manager.orchestrator.actions import CreateTask, RemoveTask, ShutdownTask
from pyswarm.manager.orchestrator.reconcile import reconcile
from pyswarm.manager.orchestrator.replicated import reconcile_slots
from pyswarm.manager.store import Event, ReadTx, Store, WriteTx
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S


class Orchestrator:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._dirty: set[str] = set()
        # replicated service -> the slots task or node events concern (reconciled alone)
        self._slots: dict[str, set[int]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def run(self) -> None:
        watch = self.store.watch({"service", "task", "node"})
        try:
            self._dirty.update(s.id for s in self.store.view().all("service"))
            self._dirty.update(t.service_id for t in self.store.view().all("task"))
            await self._tick()
            await run_passes(watch, self._mark, self._tick)
        finally:
            watch.close()
            for timer in self._timers.values():
                timer.cancel()

    def _mark(self, event: Event) -> bool:
        """Mark the services the event may change the decisions of; True if any."""
        wanted = self._mark_for(event)
        if wanted:
            self.store.metrics.add(f"orchestrator_wakes_{event.kind}")
        return wanted

    def _mark_for(self, event: Event) -> bool:
        if event.kind == "service":
            self._dirty.add(event.obj.id)
        elif event.kind == "task":
            if not _may_change_reconcile(event):
                return False
            view = self.store.view()
            self._mark_task(view, event.obj)
            if event.old is not None and event.old.slot != event.obj.slot:
                self._mark_task(view, event.old)
        elif event.kind == "node":
            return self._mark_node(event)
        return True

    def _mark_node(self, event: Event) -> bool:
        """A node event matters to the services with tasks on the node (lost, drained,
        back) and to global services (one task per eligible node); a replicated service
        with nothing on the node decides nothing by it: placing is the scheduler's. At a
        thousand nodes, marking every service on every node write made each reopened
        session or address change a reconcile of every task in the cluster."""
        old, new = event.old, (None if event.action == "delete" else event.obj)
        if old is not None and new is not None and not _node_may_change_reconcile(old, new):
            return False
        view = self.store.view()
        marked = False
        for task in view.find("task", node_id=event.obj.id):
            self._mark_task(view, task)
            marked = True
        for service in view.all("service"):
            if service.spec.WhichOneof("mode") == "global":
                self._dirty.add(service.id)
                marked = True
        return marked

    def _mark_task(self, view: ReadTx, task: opb.Task) -> None:
        """A task or its node changed: a replicated service's slot of that task (its
        decisions are the slot's own while the service is steady: `reconcile_slots`),
        a global service whole."""
        service = view.get("service", task.service_id)
        if service is not None and service.spec.WhichOneof("mode") != "global":
            self._slots.setdefault(task.service_id, set()).add(task.slot)
        else:
            self._dirty.add(task.service_id)

    def mark_dirty(self, service_id: str) -> None:
        self._dirty.add(service_id)

    async def _tick(self) -> float:
        """One pass; the seconds it held the event loop (its reconciling, not the commits
        awaited between chunks: pacing.py rests that long)."""
        if not self._dirty and not self._slots:
            return 0.0
        # service id -> the slots to reconcile (None: the whole service)
        work: dict[str, set[int] | None] = dict.fromkeys(self._dirty)
        for service_id, slots in self._slots.items():
            work.setdefault(service_id, slots)
        self._dirty, self._slots = set(), {}
        started = time.perf_counter()
        busy = 0.0

        def reconcile(tx: WriteTx, chunk: dict[str, set[int] | None]) -> None:
            nonlocal busy
            began = time.perf_counter()
            try:
                self._reconcile(tx, chunk)
            finally:
                busy += time.perf_counter() - began

        for chunk in self._chunks(work):
            # Split past the backend's per-commit limit (etcd): a retry re-reconciles from
            # the store, so parts already committed are not done twice (Store.update).
            await self.store.batch(lambda tx, c=chunk: reconcile(tx, c), retries=5,
                                   fenced=True)
        metrics = self.store.metrics
        metrics.add("orchestrator_passes")
        metrics.add("orchestrator_services", len(work))
        metrics.add("orchestrator_seconds", time.perf_counter() - started)
        metrics.add("orchestrator_busy_seconds", busy)
        return busy

    def _chunks(self, work: dict[str, set[int] | None]) -> list[dict[str, set[int] | None]]:
        """The pass's services in groups of about PASS_CHUNK_TASKS tasks (or slots, for a
        service reconciled by its slots), each reconciled
        and committed on its own. Services are independent (a service's decisions read its
        own tasks and the nodes), and each commit is an await: heartbeats are heard between
        groups, where one transaction over every task of a large cluster held the event
        loop for a second, the dispatcher gave every node that second back, and dead nodes
        were noticed that much later (bench/scale.py, 1,000 nodes)."""
        view = self.store.view()
        chunks: list[dict[str, set[int] | None]] = []
        size = 0
        for service_id in sorted(work):
            slots = work[service_id]
            tasks = (len(slots) if slots is not None
                     else len(view.find("task", service_id=service_id)))
            if not chunks or (size and size + tasks > PASS_CHUNK_TASKS):
                chunks.append({})
                size = 0
            chunks[-1][service_id] = slots
            size += tasks
        return chunks

    def _reconcile(self, tx: WriteTx, work: dict[str, set[int] | None]) -> None:
        now = self.clock()
        nodes = {n.id: n for n in tx.all("node")}
        for service_id in sorted(work):
            service = tx.get("service", service_id)
            tasks = tx.find("task", service_id=service_id)
            if service is None:
                _wind_down(tx, tasks)
                continue
            slots = work[service_id]
            actions = (reconcile_slots(service, tasks, slots, nodes, now)
                       if slots is not None else None)
            if actions is None:
                actions = reconcile(service, tasks, nodes, now)
            else:
                self.store.metrics.add("orchestrator_slot_reconciles")
            for action in actions:
                self._apply(tx, service, action, now)

    def _apply(self, tx: WriteTx, service: opb.Service, action: object, now: float) -> None:
        if isinstance(action, CreateTask):
            if action.delay_until > now:
                self._wake_at(service.id, action.delay_until - now)
                return
            tx.create(new_task(service, action.slot, action.node_id))
        elif isinstance(action, ShutdownTask):
            task = tx.get("task", action.task_id)
            if task is None:
                return
            _shut_down(tx, task, action.reason)
        elif isinstance(action, RemoveTask):
            if tx.get("task", action.task_id) is not None:
                tx.delete("task", action.task_id)

    def _wake_at(self, service_id: str, delay: float) -> None:
        if service_id in self._timers:
            return
        loop = asyncio.get_running_loop()

        def wake() -> None:
            self._timers.pop(service_id, None)
            self._dirty.add(service_id)
            loop.create_task(self._tick())

        self._timers[service_id] = loop.call_later(max(delay, 0.0), wake)


def _may_change_reconcile(event: Event) -> bool:
    """Whether a task event can change what `reconcile()` decides for its service.

    reconcile() reads a task's slot, node, spec, desired state, and of its status only
    whether it is RUNNING or has ended (and when). A task moving on between ASSIGNED and
    STARTING, most of the writes of a deploy, changes none of that: reconciling a
    10,000-task service at each of them is what made a large deploy fall behind."""
    new, old = event.obj, event.old
    if event.action != "update" or old is None:
        return True
    if (new.desired_state != old.desired_state or new.node_id != old.node_id
            or new.slot != old.slot or new.spec_version != old.spec_version):
        return True
    state, before = new.status.state, old.status.state
    if state == before:
        return False
    return (S.TASK_STATE_RUNNING in (state, before) or taskstate.is_terminal(state)
            or taskstate.is_terminal(before))


def _node_may_change_reconcile(old: opb.Node, new: opb.Node) -> bool:
    """Whether a node update can change what `reconcile()` decides: it reads a node's
    state and availability, and (global services' constraints) its role, spec and
    description; never its status message, address, overlay attachments or stamps."""
    return (old.status.state != new.status.state or old.spec != new.spec
            or old.role != new.role or old.description != new.description)


def _shut_down(tx: WriteTx, task: opb.Task, reason: str) -> None:
    if task.desired_state >= S.TASK_STATE_SHUTDOWN and (
            task.status.state >= S.TASK_STATE_ASSIGNED or taskstate.is_terminal(task.status.state)):
        return
    task = copy(task)
    task.desired_state = max(task.desired_state, S.TASK_STATE_SHUTDOWN)  # type: ignore[assignment]
    if task.status.state < S.TASK_STATE_ASSIGNED:
        # Never reached a node: nobody else will report it ended.
        set_status(task, S.TASK_STATE_SHUTDOWN, reason or "shutdown")
    tx.update(task)


def _wind_down(tx: WriteTx, tasks: list[opb.Task]) -> None:
    for task in tasks:
        if taskstate.is_terminal(task.status.state):
            tx.delete("task", task.id)
        else:
            _shut_down(tx, task, "service removed")
