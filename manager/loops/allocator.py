"""The allocator loop: gives networks, services, tasks and nodes their addresses.

    orchestrator ─▶ task NEW ─▶ allocator ─▶ PENDING (addresses, endpoint) ─▶ scheduler

Edge-triggered intake, level-triggered work, like the orchestrator: store events mark
objects dirty (and free what ended: a task in a terminal state or deleted, a removed
service, network or node, at once and in memory only); at each commit the dirty objects are
allocated from the store in one transaction.

Policy:
- A task leaves NEW only once it has an address on every network of its spec (and on
  "ingress" if its service publishes a port in ingress mode) and its service's endpoint is
  allocated; until then it waits in NEW with the reason in its status message.
- Every node has an address on "ingress"; on an overlay, while a live task of that
  overlay is placed on it.
- A failed write (another manager wrote meanwhile, or a bug) rebuilds the memory from the
  store and marks everything dirty: the store is the truth, the memory a cache of it.
"""

from __future__ import annotations

import logging
import sys

from pyswarm.common import taskstate
from pyswarm.manager.allocator import AllocationError, Allocator
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.loops.pacing import run_passes
from pyswarm.manager.loops.tasks import copy, set_status
from pyswarm.manager.store import Event, ReadTx, Store, WriteTx
from pyswarm.manager.store.errors import NotLeader
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S
log = logging.getLogger(__name__)


def _waiting(task: opb.Task) -> bool:
    """A task the allocator still has to give addresses to."""
    return task.status.state == S.TASK_STATE_NEW and task.desired_state <= S.TASK_STATE_RUNNING


def _placed_on(task: opb.Task) -> tuple[str, frozenset[str]] | None:
    """(node, overlay networks) a live placed task makes its node take part in."""
    if not task.node_id or taskstate.is_terminal(task.status.state):
        return None
    return task.node_id, frozenset(a.network_id for a in task.networks)


class AllocatorLoop:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.alloc = Allocator()
        self._networks: set[str] = set()
        self._services: set[str] = set()
        self._tasks: set[str] = set()
        self._nodes: set[str] = set()
        # node id -> network id -> live tasks placed there with an address on it
        self._members: dict[str, dict[str, set[str]]] = {}
        # task id -> _placed_on, with the allocator's one copy of each set of networks
        # (Allocator.interned): a set per task, and its tuple, were 4.4 MB of a manager
        # with 10,000 tasks (tracemalloc)
        self._placed: dict[str, tuple[str, frozenset[str]]] = {}
        self._blocked: dict[str, str] = {}  # service id -> why its endpoint is not allocated

    async def run(self) -> None:
        watch = self.store.watch({"network", "service", "task", "node"})
        try:
            await self.store.update(nets.ensure_ingress, retries=5, fenced=True)
            self._reset(self.store.view())
            await self._tick()
            await run_passes(watch, self._mark, self._tick)
        finally:
            watch.close()

    # ---- intake -------------------------------------------------------------------------

    def _reset(self, view: ReadTx) -> None:
        """Memory rebuilt from the store; every object dirty."""
        self.alloc = Allocator.rebuild(view)
        self._members.clear()
        self._placed.clear()
        self._blocked.clear()
        self._networks = {n.id for n in view.all("network")}
        self._services = {s.id for s in view.all("service")}
        self._nodes = {n.id for n in view.all("node")}
        self._tasks = set()
        for task in view.all("task"):
            self._track(task)  # type: ignore[arg-type]
            if _waiting(task):  # type: ignore[arg-type]
                self._tasks.add(task.id)

    def _mark(self, event: Event) -> bool:
        """Follow the event; always True (a pass decides whether there is work)."""
        obj = event.obj
        gone = event.action == "delete"
        if event.kind == "network":
            if gone:
                self.alloc.release_network(obj.id)
            self._networks.add(obj.id)
        elif event.kind == "service":
            if gone:
                self.alloc.release_service(obj.id)
                self._blocked.pop(obj.id, None)
            else:
                self._services.add(obj.id)
            self._services.update(self._blocked)  # a port freed may unblock them
        elif event.kind == "task":
            if gone or taskstate.is_terminal(obj.status.state):
                self.alloc.release_task(obj.id)
                self._untrack(obj.id)
            else:
                self._track(obj)
                if _waiting(obj):
                    self._tasks.add(obj.id)
        elif event.kind == "node":
            if gone:
                self.alloc.release_node(obj.id)
                self._members.pop(obj.id, None)
            else:
                self._nodes.add(obj.id)
        return True

    def _track(self, task: opb.Task) -> None:
        """Keep the node ↔ network membership of a placed task current."""
        now = _placed_on(task)
        before = self._placed.get(task.id)
        if now == before:
            return
        self._untrack(task.id)
        if now is None:
            return
        node_id, network_ids = now
        network_ids = self.alloc.interned(network_ids)
        task_id, node_id = sys.intern(task.id), sys.intern(node_id)
        self._placed[task_id] = node_id, network_ids
        for network_id in network_ids:
            self._members.setdefault(node_id, {}).setdefault(network_id, set()).add(task_id)
        if network_ids:
            self._nodes.add(node_id)

    def _untrack(self, task_id: str) -> None:
        before = self._placed.pop(task_id, None)
        if before is None:
            return
        node_id, network_ids = before
        on_node = self._members.get(node_id, {})
        for network_id in network_ids:
            tasks = on_node.get(network_id)
            if tasks is not None:
                tasks.discard(task_id)
                if not tasks:
                    del on_node[network_id]
                    self._nodes.add(node_id)
        if not on_node:
            self._members.pop(node_id, None)

    # ---- work ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        if not (self._networks or self._services or self._tasks or self._nodes):
            return
        # In batches: thousands of new tasks may exceed one etcd transaction. A batch that
        # fails part-way leaves its first commits in the store, which the rebuild reads.
        try:
            await self.store.batch(self._allocate, fenced=True)
        except NotLeader:
            raise  # the term is over: nothing to rebuild
        except Exception:  # noqa: BLE001 - the store is the truth: start again from it
            log.warning("allocator: transaction failed; rebuilding from the store",
                        exc_info=True)
            self._reset(self.store.view())
            await self.store.batch(self._allocate, fenced=True)

    def _allocate(self, tx: WriteTx) -> None:
        network_ids, self._networks = self._networks, set()
        service_ids, self._services = self._services, set()
        task_ids, self._tasks = self._tasks, set()
        if self._allocate_networks(tx, network_ids):
            service_ids.update(s.id for s in tx.all("service"))
            task_ids.update(t.id for t in tx.all("task") if _waiting(t))  # type: ignore[arg-type]
            self._nodes.update(n.id for n in tx.all("node"))
        for service_id in sorted(service_ids):
            if self._allocate_service(tx, service_id):
                task_ids.update(t.id for t in tx.find("task", service_id=service_id)
                                if _waiting(t))  # type: ignore[arg-type]
        for task_id in sorted(task_ids):
            self._allocate_task(tx, task_id)
        node_ids, self._nodes = self._nodes, set()
        ingress = nets.ingress(tx)
        for node_id in sorted(node_ids):
            self._allocate_node(tx, node_id, ingress)

    def _allocate_networks(self, tx: WriteTx, ids: set[str]) -> bool:
        """True if a network came or went (services and waiting tasks then need a look)."""
        changed = False
        for network_id in sorted(ids):
            network = tx.get("network", network_id)
            if network is None:
                changed = True
                continue
            known = self.alloc.knows(network_id)
            try:
                done = self.alloc.network(network)  # type: ignore[arg-type]
            except AllocationError as exc:
                log.warning("allocator: %s", exc)
                continue
            if done is not None:
                tx.update(done)
            changed = changed or not known
        return changed

    def _allocate_service(self, tx: WriteTx, service_id: str) -> bool:
        """Bring the service's endpoint up to date; True if it is allocated."""
        service: opb.Service | None = tx.get("service", service_id)  # type: ignore[assignment]
        if service is None:
            return False
        found, _ = nets.attachment_targets(tx, service.spec)
        try:
            endpoint = self.alloc.service(service, [n.id for n, _ in found])
        except AllocationError as exc:
            self._blocked[service_id] = str(exc)
            return True  # its waiting tasks show why
        self._blocked.pop(service_id, None)
        if endpoint != service.endpoint:
            service = copy(service)
            service.endpoint.CopyFrom(endpoint)
            tx.update(service)
        return True

    def _allocate_task(self, tx: WriteTx, task_id: str) -> None:
        task: opb.Task | None = tx.get("task", task_id)  # type: ignore[assignment]
        if task is None or not _waiting(task):
            return
        service: opb.Service | None = tx.get("service", task.service_id)  # type: ignore[assignment]
        if service is None:
            return  # the orchestrator shuts it down
        blocked = self._blocked.get(service.id)
        if blocked is not None:
            _wait(tx, task, blocked)
            return
        found, missing = nets.attachment_targets(tx, service.spec, task.spec.networks)
        if missing:
            _wait(tx, task, f"network {missing[0]} not found")
            return
        try:
            attachments = self.alloc.task(task, found)
        except AllocationError as exc:
            _wait(tx, task, str(exc))
            return
        task = copy(task)
        del task.networks[:]
        task.networks.extend(attachments)
        task.endpoint.CopyFrom(service.endpoint)
        task.status.err = ""
        set_status(task, S.TASK_STATE_PENDING, "pending task scheduling")
        tx.update(task)
        self._track(task)

    def _allocate_node(self, tx: WriteTx, node_id: str, ingress: opb.Network | None) -> None:
        node: opb.Node | None = tx.get("node", node_id)  # type: ignore[assignment]
        if node is None:
            return
        wanted = set(self._members.get(node_id, {}))
        # Sticky: a node keeps its address on a network it joined until the network goes.
        # Dropping it with the node's last task there tore the node's overlay down just as
        # that task's replacement (restart policy) landed on the same node, which was then
        # rejected: "network ... is not on this node".
        wanted.update(a.network_id for a in node.attachments
                      if tx.get("network", a.network_id) is not None)
        if ingress is not None:
            wanted.add(ingress.id)
        attachments = self.alloc.node(node, wanted)
        if attachments is None:
            return
        node = copy(node)
        del node.attachments[:]
        node.attachments.extend(attachments)
        tx.update(node)


def _wait(tx: WriteTx, task: opb.Task, reason: str) -> None:
    """Leave the task NEW, saying why (written only when the reason changes)."""
    if task.status.message == reason:
        return
    task = copy(task)
    task.status.message = reason
    task.status.err = reason
    tx.update(task)
