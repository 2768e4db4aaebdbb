"""Keeps this node's load balancer in step with the cluster: Swarm's routing mesh and VIPs.

Two inputs, merged by the pure ``wanted_state``:

- the **local controllers** (the tasks this node runs): the truth for this node's tasks. A
  local task is a backend while its controller says RUNNING and the manager still wants it
  running; it leaves as soon as the manager wants it stopped (desired state past RUNNING),
  before its container gets the stop signal, so new connections never go to a stopping
  task. And it joins before the agent reports it RUNNING (``settled``), so before the
  manager's NetworkState can list it.
- the latest **NetworkState** from the manager (``update_network``): every service on the
  overlays this node takes part in, with its allocated ports, VIPs and RUNNING tasks of
  every node. Tasks of other nodes are backends while it lists them; this node's own
  entries in it are ignored (the controllers know better and sooner).

What is programmed (``lb.py`` / ``lb_nft.py`` say how):

- every ingress-published port of every service, on this node, over all its serving
  tasks: a local task by its container's node-bridge address (the task sees the client's
  real address), a task of another node by its address on the "ingress" overlay (it sees
  this node's ingress address: the client's is lost, as in Docker's routing mesh). Host-mode
  ports are not here: only the task's own node publishes them (``agent/spec.py``).
- every VIP of a vip-mode service on an overlay this node takes part in, over the tasks'
  addresses on that network (dnsrr services have none).
- this node's own address on each overlay, which what is balanced into an overlay leaves
  with.

Before the first NetworkState (a one-node cluster, or a manager that sends none) this is
exactly the local-only balancer: published ports over this node's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.common.errors import PyswarmError
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.controller import TaskController
from pyswarm.worker.network.lb import Backend, ServiceLB, ServicePort, VirtualIP

S = taskstate.S

# The overlay that carries the routing mesh: the manager labels it (manager/allocator
# /networks.py); by its name (Docker's) where the label is missing.
INGRESS_NAME, INGRESS_LABEL = "ingress", "pyswarm.network.ingress"

Ports = tuple[ServicePort, ...]
Backends = tuple[Backend, ...]


@dataclass(frozen=True)
class Wanted:
    """What the load balancer should hold, as plain values (compared to skip no-op applies)."""

    services: dict[str, tuple[Ports, Backends]] = field(default_factory=dict)
    vips: dict[str, tuple[VirtualIP, Backends]] = field(default_factory=dict)
    overlays: dict[str, str] = field(default_factory=dict)  # subnet -> this node's address


def wanted_state(controllers: Mapping[str, TaskController],
                 network: cpb.NetworkState | None = None, node_id: str | None = None) -> Wanted:
    """Merge the local controllers with the cluster's NetworkState (see the module doc).

    ``node_id``: this node's id. Without it, a task is this node's when the NetworkState
    lists its node as no peer (peers are every *other* node).
    """
    state = network if network is not None else cpb.NetworkState()
    peers = {p.node_id for p in state.peers}

    def remote(task: cpb.EndpointTask) -> bool:
        return task.node_id != node_id if node_id else task.node_id in peers

    joined = {n.id for n in state.networks}
    ingress = {n.id for n in state.networks if n.spec.labels.get(INGRESS_LABEL) == "true"} \
        or {n.id for n in state.networks if n.spec.name == INGRESS_NAME}
    serving = {tid: c for tid, c in controllers.items() if _serving(c)}

    # Published ports: the NetworkState's allocation when it has the service, else the one
    # frozen in a local task (a service the manager has not sent yet).
    ports: dict[str, Ports] = {}
    for c in controllers.values():
        ports.setdefault(c.task.service_id, _ingress_ports(
            c.task.endpoint.ports or c.task.endpoint.spec.ports))
    for ep in state.endpoints:
        ports[ep.service_id] = _ingress_ports(ep.ports)

    backends: dict[str, list[Backend]] = {sid: [] for sid, p in ports.items() if p}
    for c in serving.values():
        if c.task.service_id in backends and c.container is not None \
                and c.container.ip_address:
            backends[c.task.service_id].append(Backend(c.container.ip_address, c.task.id))
    for ep in state.endpoints:
        if ep.service_id not in backends:
            continue
        for t in ep.tasks:
            if remote(t) and (ip := _address_on(t.networks, ingress)):
                backends[ep.service_id].append(Backend(ip, t.task_id))

    vips: dict[str, tuple[VirtualIP, Backends]] = {}
    for ep in state.endpoints:
        if ep.mode == "dnsrr":
            continue
        local = [c for c in serving.values() if c.task.service_id == ep.service_id]
        declared = tuple(sorted({p.target_port for p in ep.ports
                                 if (p.protocol or "tcp") == "tcp" and p.target_port}))
        for v in ep.vips:
            if v.network_id not in joined or not _is_address(v.addr):
                continue  # no container of this node can be on that network
            members = [Backend(ip, c.task.id) for c in local
                       if (ip := _address_on(c.task.networks, {v.network_id}))]
            members += [Backend(ip, t.task_id) for t in ep.tasks
                        if remote(t) and (ip := _address_on(t.networks, {v.network_id}))]
            vips[v.addr] = (VirtualIP(v.addr, ep.service_id, v.network_id, declared),
                            _sorted(members))

    overlays: dict[str, str] = {}
    for att in state.node_attachments:
        for cidr in att.addresses:
            with contextlib.suppress(ValueError):
                iface = ipaddress.IPv4Interface(cidr)
                overlays.setdefault(str(iface.network), str(iface.ip))

    return Wanted(
        services={sid: (p, _sorted(backends.get(sid, []))) for sid, p in ports.items() if p},
        vips=vips, overlays=overlays)


def _serving(c: TaskController) -> bool:
    return (c.status.state == S.TASK_STATE_RUNNING and not c.removed
            and c.task.desired_state <= S.TASK_STATE_RUNNING)


def _ingress_ports(ports: Iterable[opb.PortConfig]) -> Ports:
    return tuple(ServicePort(p.protocol or "tcp", p.published_port, p.target_port)
                 for p in ports
                 if p.publish_mode == opb.PUBLISH_MODE_INGRESS and p.published_port)


def _address_on(attachments: Iterable[opb.NetworkAttachment], networks: set[str]) -> str:
    """The first IPv4 address (prefix stripped) on one of ``networks``; "" if none."""
    for att in attachments:
        if att.network_id in networks:
            for cidr in att.addresses:
                with contextlib.suppress(ValueError):
                    return str(ipaddress.IPv4Interface(cidr).ip)
    return ""


def _is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _sorted(backends: Iterable[Backend]) -> Backends:
    unique = {b.ip: b for b in sorted(backends, key=lambda b: b.task_id, reverse=True)}
    return tuple(sorted(unique.values(), key=lambda b: b.task_id))


class LBSync:
    """Applies ``wanted_state`` to a ``ServiceLB``: coalesced, in a thread, one at a time.

    Wiring (the agent's hooks): ``on_tasks_changed=sync.update``,
    ``on_network_state=sync.update_network``, ``before_report=sync.settled``.

    ``networks_ready``: awaited before each apply, e.g. ``OverlaySync.settled``: the overlays'
    bridges (which hold this node's overlay addresses and route to other nodes' tasks) are
    then in place before anything is balanced into them.
    """

    def __init__(self, lb: ServiceLB, node_id: str | None = None,
                 networks_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        self.lb = lb
        self.node_id = node_id
        self.networks_ready = networks_ready
        # What the kernel holds from before a restart counts as applied, so that services
        # and VIPs gone meanwhile are removed at the first update.
        self._applied = Wanted(
            services={sid: (tuple(ports), _sorted(backends))
                      for sid, (ports, backends) in lb.services().items()},
            vips={addr: (vip, _sorted(backends)) for addr, (vip, backends) in lb.vips().items()},
            overlays=lb.overlays())
        self._controllers: Mapping[str, TaskController] = {}
        self._network: cpb.NetworkState | None = None
        self._dirty = False
        self._flushing: asyncio.Task[None] | None = None

    def update(self, controllers: Mapping[str, TaskController]) -> None:
        """Called on every task change; coalesced into one apply at a time."""
        self._controllers = controllers
        self._schedule()

    def update_network(self, state: cpb.NetworkState) -> None:
        """The agent's ``on_network_state`` hook: the manager's latest view of the cluster."""
        self._network = state
        self._schedule()

    async def settled(self) -> None:
        """Until every update so far is in the kernel: the agent reports a task RUNNING only
        once new connections can reach it."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    def _schedule(self) -> None:
        self._dirty = True
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._dirty:
            if self.networks_ready is not None:
                with contextlib.suppress(Exception):  # its errors are its own to report
                    await self.networks_ready()
            self._dirty = False
            # The merge reads the live controllers, so it runs here on the loop (it is
            # cheap); the kernel work runs in a thread.
            wanted = wanted_state(self._controllers, self._network, self.node_id)
            await asyncio.to_thread(self._apply, wanted)

    def _apply(self, wanted: Wanted) -> None:
        applied = self._applied
        # Overlays first: the SNAT must be there before anything is balanced into them.
        # (Asked again while an overlay's interface was missing: see ServiceLB.set_overlays.)
        if applied.overlays != wanted.overlays or self.lb.overlays_pending():
            if self._try("overlays", self.lb.set_overlays, wanted.overlays):
                applied.overlays.clear()
                applied.overlays.update(wanted.overlays)
        for service_id, (ports, backends) in wanted.services.items():
            if applied.services.get(service_id) != (ports, backends) and self._try(
                    f"service {service_id}", self.lb.set_service, service_id, ports, backends):
                applied.services[service_id] = (ports, backends)
        for service_id in set(applied.services) - set(wanted.services):
            self._try(f"service {service_id}", self.lb.remove_service, service_id)
            del applied.services[service_id]
        for addr, (vip, backends) in wanted.vips.items():
            old = applied.vips.get(addr)
            if (old != (vip, backends) or old[0].ports != vip.ports) and self._try(
                    f"VIP {addr}", self.lb.set_vip, vip, backends):
                applied.vips[addr] = (vip, backends)
        for addr in set(applied.vips) - set(wanted.vips):
            self._try(f"VIP {addr}", self.lb.remove_vip, addr)
            del applied.vips[addr]

    @staticmethod
    def _try(what: str, call: Callable[..., None], *args: object) -> bool:
        try:
            call(*args)
        except PyswarmError as exc:
            print(f"pyswarm agent: load balancer for {what}: {exc}", flush=True)
            return False
        return True
