"""The scheduler loop: places pending tasks on nodes.

At each commit that made a task pending, freed room on a node (a task ended or moved) or
changed a node, every pending task is offered to the pure pipeline (`schedule()`), and its
decisions are written in one transaction: ASSIGNED with the node for placed tasks; for the
others the reason stays visible in the task's status message ("no suitable node (...)"),
written only when it changes so that waiting tasks cost no writes.

At scale: the pending tasks, and what every node holds (NodeLedger), are followed from the
watch: a pass reads the pending tasks and the nodes, not every task (a failure at 10,000
tasks took a dozen passes, each scanning them all). Passes are paced (pacing.py): a burst
of commits costs one pass, not one each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyswarm.common import taskstate
from pyswarm.manager.loops.pacing import run_passes
from pyswarm.manager.loops.tasks import copy, set_status
from pyswarm.manager.scheduler.nodeinfo import NodeLedger
from pyswarm.manager.scheduler.pipeline import schedule
from pyswarm.manager.store import Event, Store, WriteTx
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S




class Scheduler:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # ids of tasks waiting for a node, in the order they came (a dict: placements are
        # reproducible)
        self._pending: dict[str, None] = {}
        self._ledger = NodeLedger()
        self._attempted = False  # a try of the current pass has run (store.batch retries)

    async def run(self) -> None:
        watch = self.store.watch({"task", "node"})
        # A run after a crash (manager._supervise restarts the loop) did not read what was
        # written since its last watch closed.
        self._ledger.invalidate()
        try:
            self._pending = dict.fromkeys(t.id for t in self.store.view().all("task")
                                          if _pending(t))
            await self._tick()
            await run_passes(watch, self._follow, self._tick)
        finally:
            watch.close()

    def _follow(self, event: Event) -> bool:
        """Keep the pending set current; True if the event calls for a pass."""
        if event.kind == "task":
            task = event.obj
            deleted = event.action == "delete"
            if not deleted and _pending(task):
                self._pending[task.id] = None
            else:
                self._pending.pop(task.id, None)
            ledger = self._ledger
            if ledger.valid and (deleted or task.meta.version > ledger.built_at):
                ledger.task_changed(task.id, None if deleted else task)
        return _matters(event)

    async def _tick(self) -> None:
        if not self._pending:
            return
        started = time.perf_counter()
        self._attempted = False
        try:
            # Split past the backend's per-commit limit (etcd); a retry re-reads the store.
            placed = await self.store.batch(self._schedule, retries=5, fenced=True)
        except BaseException:
            self._ledger.invalidate()  # it holds assignments that were not committed
            raise
        metrics = self.store.metrics
        metrics.add("scheduler_passes")
        metrics.add("scheduler_placed", placed)
        metrics.add("scheduler_seconds", time.perf_counter() - started)

    def _schedule(self, tx: WriteTx) -> int:
        """One pass; the number of tasks it placed."""
        now = self.clock()
        pending = []
        for task_id in self._pending:
            task = tx.get("task", task_id)
            if task is not None and _pending(task):
                pending.append(task)
        if not pending:
            return 0
        ledger = self._ledger
        if self._attempted:
            ledger.invalidate()  # an earlier try of this pass assigned on it, uncommitted
        self._attempted = True
        ledger.sync(tx.revision, tx.all("node"), lambda: tx.all("task"))
        infos = ledger.infos
        decisions = schedule(pending, infos, now)
        for task_id, node_id in decisions.assigned:
            task = copy(tx.get("task", task_id))
            task.node_id = node_id
            set_status(task, S.TASK_STATE_ASSIGNED, "scheduler assigned task to node")
            tx.update(task)
            ledger.placed(task, node_id)
        for task_id, reason in decisions.unplaced.items():
            task = tx.get("task", task_id)
            if task is not None and task.status.message != reason:
                task = copy(task)
                task.status.message = reason
                task.status.err = reason
                tx.update(task)
        return len(decisions.assigned)


def _pending(task: opb.Task) -> bool:
    return task.status.state == S.TASK_STATE_PENDING and task.desired_state <= S.TASK_STATE_RUNNING


def _matters(event: Event) -> bool:
    if event.kind == "node":
        return True
    task = event.obj
    if event.action == "delete":
        return bool(task.node_id)
    if _pending(task) and (event.old is None or not _pending(event.old)):
        return True  # newly pending
    # A task that ended or moved frees room on its node.
    return event.old is not None and (
        taskstate.is_terminal(task.status.state) != taskstate.is_terminal(event.old.status.state)
        or task.desired_state != event.old.desired_state)
