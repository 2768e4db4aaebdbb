"""Checks a stack deploy must pass before anything of it is written.

The allocator writes addresses and ports asynchronously, after the deploy has committed, so
what would make it fail later is refused here, in the deploy's own transaction, with a
message that names the clash: a subnet overlapping another network's (or a pool the cluster
reserves), a subnet changed on a network that already has one, and a port published in
ingress mode by two services.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network

from pyswarm.common.errors import Conflict, InvalidArgument
from pyswarm.manager.allocator.networks import INGRESS_SUBNET, STACK_LABEL, VIP_POOL, is_ingress
from pyswarm.manager.store import ReadTx
from pyswarm.proto import objects_pb2 as opb

RESERVED = {VIP_POOL: "the service VIP pool", INGRESS_SUBNET: "the ingress network"}


def check_deploy(tx: ReadTx, stack: str) -> None:
    """Raise InvalidArgument/Conflict if the stack's networks or services (as the deploy's
    transaction has written them) clash with each other or with the rest of the cluster."""
    networks = tx.all("network")
    mine = [n for n in networks if n.spec.labels.get(STACK_LABEL) == stack]
    for network in mine:
        check_subnet(network, networks)  # type: ignore[arg-type]
    services = tx.all("service")
    ours = [s for s in services if s.spec.labels.get(STACK_LABEL) == stack]
    check_ports(ours, services)  # type: ignore[arg-type]


def _subnet_of(network: opb.Network) -> IPv4Network | None:
    text = network.subnet or network.spec.subnet
    if not text:
        return None
    return ipaddress.IPv4Network(text, strict=False)


def check_subnet(network: opb.Network, others: list[opb.Network]) -> None:
    name = network.spec.name
    if not network.spec.subnet:
        return
    try:
        wanted = ipaddress.ip_network(network.spec.subnet, strict=False)
    except ValueError:
        raise InvalidArgument(f"network {name}: subnet: {network.spec.subnet!r} is not a "
                              "subnet like 10.0.9.0/24") from None
    if not isinstance(wanted, IPv4Network) or not 8 <= wanted.prefixlen <= 29:
        raise InvalidArgument(f"network {name}: subnet: {wanted} must be an IPv4 subnet "
                              "from /8 to /29")
    if network.subnet and ipaddress.IPv4Network(network.subnet) != wanted:
        raise Conflict(f"network {name}: subnet: the network already has subnet "
                       f"{network.subnet}; remove the stack (or the network) to change it")
    if not is_ingress(network):
        for pool, what in RESERVED.items():
            if wanted.overlaps(pool):
                raise Conflict(f"network {name}: subnet {wanted} overlaps {what} ({pool})")
    for other in others:
        if other.id == network.id:
            continue
        theirs = _subnet_of(other)
        if theirs is not None and theirs.overlaps(wanted):
            raise Conflict(f"network {name}: subnet {wanted} overlaps network "
                           f"{other.spec.name} ({theirs})")


def check_ports(services: list[opb.Service], everyone: list[opb.Service]) -> None:
    """No (protocol, port) published in ingress mode by two services: the ports other
    services asked for or were given, against the ones these ask for."""
    owners: dict[tuple[str, int], list[str]] = {}
    for service in sorted(everyone, key=lambda s: s.spec.name):
        for port in _ingress_ports(service):
            owners.setdefault(port, []).append(service.spec.name)
    for service in services:
        for port in sorted(_ingress_ports(service)):
            others = [name for name in owners[port] if name != service.spec.name]
            if others:
                raise Conflict(f"service {service.spec.name}: port {port[1]}/{port[0]} is "
                               f"already published by service {others[0]}")


def _ingress_ports(service: opb.Service) -> set[tuple[str, int]]:
    """Ports the service publishes in ingress mode: asked for, or allocated earlier for a
    port it still publishes."""
    out = {(p.protocol or "tcp", p.published_port) for p in service.spec.endpoint.ports
           if p.publish_mode == opb.PUBLISH_MODE_INGRESS and p.published_port}
    dynamic = {(p.protocol or "tcp", p.target_port) for p in service.spec.endpoint.ports
               if p.publish_mode == opb.PUBLISH_MODE_INGRESS and not p.published_port}
    out.update((p.protocol or "tcp", p.published_port) for p in service.endpoint.ports
               if p.publish_mode == opb.PUBLISH_MODE_INGRESS and p.published_port
               and (p.protocol or "tcp", p.target_port) in dynamic)
    return out
