"""The allocator's memory: which subnet, VNI, address, VIP and port belongs to whom.

Nothing here is persisted on its own: every allocation is written on the object it belongs
to (Network.subnet/vni, Service.endpoint, Task.networks, Node.attachments), and `rebuild()`
claims them all again from the store when the allocator starts. A task holds its addresses
until it ends (a terminal observed state) or is deleted, so a restarted manager never hands
out an address that a running container still uses.

Each method takes objects as the store has them and returns what should be written (or None
when nothing changes); the loop (manager/loops/allocator.py) does the writing. A failed
allocation leaves the memory as it was.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterable

from pyswarm.common import taskstate
from pyswarm.manager.allocator.ipam import AddressSpace, Subnets
from pyswarm.manager.allocator.networks import (
    FIRST_VNI,
    INGRESS_VNI,
    LAST_VNI,
    VIP_POOL,
    is_ingress,
)
from pyswarm.manager.allocator.pool import Pool
from pyswarm.manager.allocator.ports import PortConflict, Ports
from pyswarm.manager.store import ReadTx
from pyswarm.proto import objects_pb2 as opb

log = logging.getLogger(__name__)


class AllocationError(Exception):
    """Why an object could not be allocated (shown in its tasks' status messages)."""


def node_owner(node_id: str) -> str:
    return f"node:{node_id}"


def vip_owner(service_id: str, network_id: str) -> str:
    return f"{service_id}/{network_id}"


class Allocator:
    def __init__(self) -> None:
        self.subnets = Subnets()
        self.vnis = Pool(LAST_VNI - FIRST_VNI + 1)
        self.spaces: dict[str, AddressSpace] = {}   # network id -> its addresses
        self.vips = AddressSpace(VIP_POOL)
        self.ports = Ports()
        # task id / node id -> the networks it has an address on. The sets are interned
        # (`interned`): thousands of tasks share a handful of them, and the line that made a
        # set each held 4.3 MB of a manager with 10,000 tasks (bench/scale.py, tracemalloc).
        self.task_networks: dict[str, frozenset[str]] = {}
        self.node_networks: dict[str, frozenset[str]] = {}
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self.service_vips: dict[str, dict[str, int]] = {}  # service id -> network id -> VIP slot

    @classmethod
    def rebuild(cls, view: ReadTx) -> Allocator:
        """Claim every allocation the store records. Conflicting records (which only a bug
        could write) are logged and left to the object that claimed first."""
        alloc = cls()
        for network in sorted(view.all("network"), key=lambda n: n.meta.version):
            alloc.claim_network(network)  # type: ignore[arg-type]
        for service in view.all("service"):
            alloc.claim_service(service)  # type: ignore[arg-type]
        for task in view.all("task"):
            alloc.claim_task(task)  # type: ignore[arg-type]
        for node in view.all("node"):
            alloc.claim_node(node)  # type: ignore[arg-type]
        return alloc

    # ---- networks -----------------------------------------------------------------------

    def knows(self, network_id: str) -> bool:
        return network_id in self.spaces

    def claim_network(self, network: opb.Network) -> bool:
        """Take an allocated network's subnet and VNI into memory; False if not allocated
        (or it clashes with another network)."""
        if network.id in self.spaces:
            return True
        if not network.subnet or not network.vni:
            return False
        subnet = ipaddress.IPv4Network(network.subnet)
        if not self.subnets.assign(network.id, subnet):
            log.warning("allocator: network %s: subnet %s overlaps another network",
                        network.id, subnet)
            return False
        if network.vni != INGRESS_VNI and not self.vnis.claim(network.vni - FIRST_VNI,
                                                              network.id):
            log.warning("allocator: network %s: VNI %d is another network's", network.id,
                        network.vni)
        self.spaces[network.id] = AddressSpace(subnet)
        return True

    def network(self, network: opb.Network) -> opb.Network | None:
        """The network with its subnet and VNI allocated, if it needs writing."""
        if self.claim_network(network):
            return None
        if network.subnet:  # allocated, but clashing: nothing more to do here
            return None
        if network.spec.subnet:
            subnet = ipaddress.IPv4Network(network.spec.subnet, strict=False)
            if not self.subnets.assign(network.id, subnet):
                other = self.subnets.overlapping(subnet, network.id)
                raise AllocationError(f"network {network.spec.name}: subnet {subnet} overlaps "
                                      f"network {other}")
        else:
            got = self.subnets.allocate(network.id)
            if got is None:
                raise AllocationError(f"network {network.spec.name}: the overlay pool has no "
                                      "free subnet left")
            subnet = got
        if is_ingress(network):
            vni = INGRESS_VNI
        else:
            slot = self.vnis.take(network.id)
            if slot is None:
                self.subnets.release(network.id)
                raise AllocationError(f"network {network.spec.name}: no free VXLAN id left")
            vni = FIRST_VNI + slot
        self.spaces[network.id] = AddressSpace(subnet)
        out = opb.Network()
        out.CopyFrom(network)
        out.subnet = str(subnet)
        out.vni = vni
        return out

    def release_network(self, network_id: str) -> None:
        self.subnets.release(network_id)
        self.vnis.release_owner(network_id)
        self.spaces.pop(network_id, None)
        for held in (self.task_networks, self.node_networks):
            for key, networks in held.items():
                if network_id in networks:
                    held[key] = self.interned(networks - {network_id})
        self._sets = {k: v for k, v in self._sets.items() if network_id not in k}
        for service_id, vips in self.service_vips.items():
            slot = vips.pop(network_id, None)
            if slot is not None:
                self.vips.pool.release(slot, vip_owner(service_id, network_id))

    # ---- services -----------------------------------------------------------------------

    def claim_service(self, service: opb.Service) -> None:
        for port in service.endpoint.ports:
            if port.publish_mode == opb.PUBLISH_MODE_INGRESS and port.published_port:
                key = (port.protocol or "tcp", port.published_port)
                if not self.ports.claim(key, service.id):
                    log.warning("allocator: service %s: port %s/%s is another service's",
                                service.id, key[1], key[0])
        for vip in service.endpoint.virtual_ips:
            if self.vips.claim(vip.addr, vip_owner(service.id, vip.network_id)):
                slot = self.vips.slot(vip.addr)
                assert slot is not None
                self.service_vips.setdefault(service.id, {})[vip.network_id] = slot
            else:
                log.warning("allocator: service %s: VIP %s is taken", service.id, vip.addr)

    def service(self, service: opb.Service, network_ids: Iterable[str]) -> opb.Endpoint:
        """The endpoint the service should have on these (allocated) networks: its ports
        published and, in vip mode, a VIP on each. Raises AllocationError (and then
        changes nothing) when a port is taken or a pool is full."""
        try:
            ports = self.ports.allocate(service.id, service.spec.endpoint,
                                        list(service.endpoint.ports))
        except PortConflict as exc:
            raise AllocationError(f"service {service.spec.name}: {exc}") from None
        wanted = [n for n in network_ids if n in self.spaces]
        if service.spec.endpoint.mode == "dnsrr":
            wanted = []
        vips = self.service_vips.setdefault(service.id, {})
        for network_id in list(vips):
            if network_id not in wanted:
                self.vips.pool.release(vips.pop(network_id), vip_owner(service.id, network_id))
        for network_id in wanted:
            if network_id not in vips:
                slot = self.vips.take(vip_owner(service.id, network_id))
                if slot is None:
                    raise AllocationError(f"service {service.spec.name}: the VIP pool "
                                          f"{VIP_POOL} is full")
                vips[network_id] = slot
        if not vips:
            del self.service_vips[service.id]
        endpoint = opb.Endpoint()
        endpoint.spec.CopyFrom(service.spec.endpoint)
        endpoint.ports.extend(ports)
        for network_id in wanted:
            endpoint.virtual_ips.add(network_id=network_id,
                                     addr=str(self.vips.address(vips[network_id])))
        if endpoint.virtual_ips:
            endpoint.virtual_ip = endpoint.virtual_ips[0].addr
        return endpoint

    def release_service(self, service_id: str) -> None:
        self.ports.release_service(service_id)
        for network_id, slot in self.service_vips.pop(service_id, {}).items():
            self.vips.pool.release(slot, vip_owner(service_id, network_id))

    # ---- tasks --------------------------------------------------------------------------

    def claim_task(self, task: opb.Task) -> None:
        if taskstate.is_terminal(task.status.state):
            return
        for attachment in task.networks:
            self._claim_addresses(task.id, attachment, self.task_networks)

    def task(self, task: opb.Task,
             networks: list[tuple[opb.Network, list[str]]]) -> list[opb.NetworkAttachment]:
        """An address for the task on each network (addresses it already has are kept)."""
        have = {a.network_id: a.addresses[0] for a in task.networks if a.addresses}
        out: list[opb.NetworkAttachment] = []
        new: list[tuple[AddressSpace, int]] = []
        try:
            for network, names in networks:
                space = self.spaces.get(network.id)
                if space is None:
                    raise AllocationError(f"network {network.spec.name} is not allocated yet")
                addr = have.get(network.id)
                if addr is None or not space.claim(addr, task.id):
                    slot = space.take(task.id)
                    if slot is None:
                        raise AllocationError(f"network {network.spec.name} has no free "
                                              "address left")
                    new.append((space, slot))
                    addr = space.cidr(slot)
                out.append(opb.NetworkAttachment(network_id=network.id, addresses=[addr],
                                                 aliases=names))
        except AllocationError:
            for space, slot in new:
                space.pool.release(slot, task.id)
            raise
        self.task_networks[sys.intern(task.id)] = self.interned(
            self.task_networks.get(task.id, frozenset()) | {a.network_id for a in out})
        return out

    def release_task(self, task_id: str) -> None:
        for network_id in self.task_networks.pop(task_id, ()):
            space = self.spaces.get(network_id)
            if space is not None:
                space.release_owner(task_id)

    def holds(self, task_id: str) -> bool:
        return task_id in self.task_networks

    # ---- nodes --------------------------------------------------------------------------

    def claim_node(self, node: opb.Node) -> None:
        for attachment in node.attachments:
            self._claim_addresses(node_owner(node.id), attachment, self.node_networks,
                                  key=node.id)

    def node(self, node: opb.Node, wanted: set[str]) -> list[opb.NetworkAttachment] | None:
        """The node's attachments for exactly the `wanted` networks (those known here),
        sorted by network id; None when the node already has them."""
        owner = node_owner(node.id)
        have = {a.network_id: a.addresses[0] for a in node.attachments if a.addresses}
        out: list[opb.NetworkAttachment] = []
        for network_id in sorted(n for n in wanted if n in self.spaces):
            space = self.spaces[network_id]
            addr = have.get(network_id)
            if addr is None or not space.claim(addr, owner):
                slot = space.take(owner)
                if slot is None:
                    log.warning("allocator: network %s has no free address for node %s",
                                network_id, node.id)
                    continue
                addr = space.cidr(slot)
            out.append(opb.NetworkAttachment(network_id=network_id, addresses=[addr]))
        held = {a.network_id for a in out}
        for network_id in (self.node_networks.get(node.id, frozenset()) | set(have)) - held:
            space = self.spaces.get(network_id)
            if space is not None:
                space.release_owner(owner)
        if held:
            self.node_networks[node.id] = self.interned(frozenset(held))
        else:
            self.node_networks.pop(node.id, None)
        if list(node.attachments) == out:
            return None
        return out

    def release_node(self, node_id: str) -> None:
        for network_id in self.node_networks.pop(node_id, ()):
            space = self.spaces.get(network_id)
            if space is not None:
                space.release_owner(node_owner(node_id))

    # ---- helpers ------------------------------------------------------------------------

    def _claim_addresses(self, owner: str, attachment: opb.NetworkAttachment,
                         held: dict[str, frozenset[str]], key: str = "") -> None:
        space = self.spaces.get(attachment.network_id)
        if space is None:
            return
        for addr in attachment.addresses:
            if space.claim(addr, owner):
                key = key or owner
                held[key] = self.interned(held.get(key, frozenset()) | {attachment.network_id})
            else:
                log.warning("allocator: %s: address %s on network %s is taken", owner, addr,
                            attachment.network_id)

    def interned(self, networks: frozenset[str]) -> frozenset[str]:
        """The one copy of this set of networks (see task_networks; the allocator loop keeps
        its own sets of a task's networks through it too)."""
        return self._sets.setdefault(networks, networks)
