"""Keeps this node's service load balancer in step with the tasks it runs.

Every published (ingress) port of a service with a task on this node is accepted here and
spread over that service's RUNNING tasks. A task leaves the backends as soon as the manager
wants it stopped (desired state past RUNNING), before its container gets the stop signal:
new connections never go to a task that is stopping.

Backends are the tasks of this node; spreading over the tasks of every node comes with the
overlay network (the multi-node issue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from pyswarm.common.errors import PyswarmError
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.controller import TaskController
from pyswarm.worker.network.lb import Backend, ServiceLB, ServicePort

S = opb.TaskState

Wanted = dict[str, tuple[tuple[ServicePort, ...], tuple[Backend, ...]]]


def wanted_state(controllers: Mapping[str, TaskController]) -> Wanted:
    wanted: dict[str, tuple[tuple[ServicePort, ...], list[Backend]]] = {}
    for c in controllers.values():
        task = c.task
        ports = tuple(
            ServicePort(p.protocol or "tcp", p.published_port, p.target_port)
            for p in (task.endpoint.ports or task.endpoint.spec.ports)
            if p.publish_mode == opb.PUBLISH_MODE_INGRESS and p.published_port)
        if not ports:
            continue
        entry = wanted.setdefault(task.service_id, (ports, []))
        serving = (c.status.state == S.TASK_STATE_RUNNING and not c.removed
                   and task.desired_state <= S.TASK_STATE_RUNNING)
        if serving and c.container is not None and c.container.ip_address:
            entry[1].append(Backend(c.container.ip_address, task.id))
    return {sid: (ports, tuple(sorted(b, key=lambda x: x.task_id)))
            for sid, (ports, b) in wanted.items()}


class LBSync:
    def __init__(self, lb: ServiceLB) -> None:
        self.lb = lb
        # What the kernel holds from before a restart counts as applied, so that services
        # gone meanwhile are removed at the first update.
        self._applied: Wanted = {
            sid: (tuple(ports), tuple(sorted(backends, key=lambda x: x.task_id)))
            for sid, (ports, backends) in lb.services().items()}
        self._pending: Wanted | None = None
        self._flushing: asyncio.Task[None] | None = None

    def update(self, controllers: Mapping[str, TaskController]) -> None:
        """Called on every task change; coalesced into one apply at a time."""
        self._pending = wanted_state(controllers)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def settled(self) -> None:
        """Until every update so far is in the kernel: the agent reports a task RUNNING only
        once new connections can reach it."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        while self._pending is not None:
            wanted, self._pending = self._pending, None
            await asyncio.to_thread(self._apply, wanted)

    def _apply(self, wanted: Wanted) -> None:
        for service_id, (ports, backends) in wanted.items():
            if self._applied.get(service_id) == (ports, backends):
                continue
            try:
                self.lb.set_service(service_id, ports, backends)
                self._applied[service_id] = (ports, backends)
            except PyswarmError as exc:
                print(f"pyswarm agent: load balancer for service {service_id}: {exc}",
                      flush=True)
        for service_id in set(self._applied) - set(wanted):
            with contextlib.suppress(PyswarmError):
                self.lb.remove_service(service_id)
            del self._applied[service_id]
