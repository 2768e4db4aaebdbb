"""The service load balancer of one node: Swarm's routing mesh and service VIPs, without IPVS.

Every node accepts every ingress-published port of every service, and each new connection
goes to one of the service's serving tasks anywhere in the cluster, in turn; a service's
virtual IP (VIP) on an overlay network spreads the connections of this node's containers
over the service's tasks on that network. Two implementations behind one API
(``ServiceLB``):

- **nftables** (the default): DNAT with ``numgen inc`` in the node's own table, as
  kube-proxy's nftables mode does. No IPVS, no userspace hop, one transaction per change.
  The ruleset is drawn in ``lb_nft.py``.
- **userspace** (``proxy.py``): an asyncio TCP proxy per published port (and per VIP and
  declared port), used when nftables cannot be programmed, or forced with
  ``PYSWARM_LB=userspace``.

What a backend is (``Backend.ip``) is the caller's choice (``agent/lb_sync.py``): a task of
this node by its container's node-bridge address, a task of another node by its address on
the ingress overlay; for a VIP, each task's address on the VIP's network.

Addresses and NAT. Replies must come back through this node, so:

- to a task on this node's bridge, from another machine or namespace: DNAT only, no
  masquerade. **The backend sees the client's real source address** (tested), and answers
  through its default route, the bridge gateway, where conntrack undoes the DNAT.
- to a task reached through an overlay (a task of another node, or any VIP backend): the
  source becomes this node's own address on that overlay (``set_overlays``: the subnet ->
  address map that ``lb_postrouting`` SNATs with), so the task answers to this node. The
  client's address is lost on that path, as it always is in Docker's routing mesh.
- from the host itself to 127.0.0.1: node.py's ``route_localnet=1`` on the bridge and its
  "loopback to container" masquerade make a bridge backend see the gateway address; for an
  overlay backend ``set_overlays`` turns ``route_localnet`` on for the interfaces that hold
  this node's overlay addresses (found by address: whoever made them), and the SNAT applies.
- from a container on the bridge to the gateway or any node address (hairpin): node.py's
  "hairpin" masquerade; the backend sees the gateway.
- a container picked as its own backend: where ``br_netfilter`` is loaded with
  ``bridge-nf-call-iptables=1`` (as Docker leaves it), the DNAT happens in the *bridge's*
  prerouting and the packet is then bridged, not routed, back towards the port it came in by,
  which a bridge refuses unless that port has ``hairpin_mode`` on. The SYN vanishes before
  conntrack confirms it, so the client's retransmit is balanced anew: it works, one second
  late, and the container never reaches itself. So ``set_service`` turns ``hairpin_mode`` on
  for the bridge ports of its local backends (as Docker and kubelet's hairpin-veth do).

These rely on ``NodeNetwork.setup()`` having run (its postrouting and forward chains) for
backends on this node's bridge, and on a route to every overlay backend (the overlay's
bridge) for the others.

Policy:

- A published port belongs to one owner: a service, a container's ``-p``, or a host process.
  ``set_service`` raises Conflict, changing nothing, if another one holds it. To make the
  check work the other way round too (``NodeNetwork.publish`` tries to bind the port, and a
  host process would be shadowed silently by the DNAT), the nftables path keeps a socket
  bound on each published port ("port holding", as kube-proxy did for node ports); a new
  ``ServiceLB`` binds them again for the services it finds in the kernel.
- ``set_service`` / ``set_vip`` are idempotent and atomic (one nft transaction including the
  base chains, so they also work right after a ``NodeNetwork.teardown``); a changed backend
  set applies to new connections only: established connections keep their conntrack mapping
  (for UDP flows, until their conntrack entry expires).
- Zero backends: new connections are refused at once (a TCP reset, an ICMP port unreachable
  for UDP), on published ports and on VIPs alike; nothing hangs.
- A service with no ports has nothing to publish: ``set_service(id, [], ...)`` removes it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pyswarm.common.errors import Conflict, InvalidArgument, RuntimeFailure
from pyswarm.worker.network.lb_nft import (
    Backend,
    ServicePort,
    ServiceState,
    VipState,
    VirtualIP,
    base_script,
    off_loop,
    overlays_script,
    parse_overlays,
    parse_services,
    parse_vips,
    remove_script,
    remove_vip_script,
    service_script,
    vip_comment,
    vip_script,
)
from pyswarm.worker.network.node import NodeNetwork, veth_name

__all__ = ["Backend", "ServiceLB", "ServicePort", "ServiceState", "VipState", "VirtualIP"]

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,99}")  # comments hold at most 128 bytes
_PROTOCOLS = ("tcp", "udp")
_COMMENT_MAX = 127


# ---- validation ---------------------------------------------------------------------


def check_service(
    service_id: str, ports: Sequence[ServicePort], backends: Sequence[Backend]
) -> None:
    """Everything here ends up in nft text: check it before it gets there."""
    if not _ID.fullmatch(service_id):
        raise InvalidArgument(f"invalid service id {service_id!r}")
    seen: set[tuple[str, int]] = set()
    for p in ports:
        if p.proto not in _PROTOCOLS:
            raise InvalidArgument(f"invalid protocol {p.proto!r}: must be tcp or udp")
        if not (1 <= p.published <= 65535 and 1 <= p.target <= 65535):
            raise InvalidArgument(f"invalid port in {p}: must be 1-65535")
        if (p.proto, p.published) in seen:
            raise InvalidArgument(f"port {p.published}/{p.proto} is published twice")
        seen.add((p.proto, p.published))
    check_backends(backends)


def check_backends(backends: Sequence[Backend]) -> None:
    ips: set[str] = set()
    for b in backends:
        if not _ID.fullmatch(b.task_id):
            raise InvalidArgument(f"invalid task id {b.task_id!r}")
        _check_address(b.ip, "backend address")
        if b.ip in ips:
            raise InvalidArgument(f"backend address {b.ip} is listed twice")
        ips.add(b.ip)


def check_vip(vip: VirtualIP, backends: Sequence[Backend]) -> None:
    if not _ID.fullmatch(vip.service_id):
        raise InvalidArgument(f"invalid service id {vip.service_id!r} of VIP {vip.addr!r}")
    if not _ID.fullmatch(vip.network_id):
        raise InvalidArgument(f"invalid network id {vip.network_id!r} of VIP {vip.addr!r}")
    _check_address(vip.addr, "virtual IP")
    if len(vip_comment(vip)) > _COMMENT_MAX:
        raise InvalidArgument(f"VIP {vip.addr}: service and network ids too long together")
    for port in vip.ports:
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"invalid port {port} of VIP {vip.addr}: must be 1-65535")
    check_backends(backends)


def check_overlays(overlays: Mapping[str, str]) -> None:
    """Subnet -> address pairs, the address inside its subnet, no two subnets overlapping."""
    nets: list[ipaddress.IPv4Network] = []
    for subnet, addr in overlays.items():
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError:
            raise InvalidArgument(f"invalid overlay subnet {subnet!r}") from None
        _check_address(addr, f"address on overlay {subnet}")
        if ipaddress.IPv4Address(addr) not in net:
            raise InvalidArgument(f"address {addr} is outside its overlay subnet {subnet}")
        for other in nets:
            if net.overlaps(other):
                raise InvalidArgument(f"overlay subnets {other} and {net} overlap")
        nets.append(net)


def _check_address(ip: str, what: str) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {ip!r}") from None


def check_owner(
    network: NodeNetwork,
    services: dict[str, ServiceState],
    service_id: str,
    ports: Sequence[ServicePort],
) -> None:
    """Raise Conflict if another service or a container ``-p`` holds one of the ports."""
    wanted = {(p.proto, p.published) for p in ports}
    for other, (other_ports, _) in services.items():
        for p in other_ports:
            if other != service_id and (p.proto, p.published) in wanted:
                raise Conflict(
                    f"port {p.published}/{p.proto} is already published by service {other}"
                )
    # A service listens on every address: a container's binding on any one address clashes.
    for container_id, bindings in network.published().items():
        for b in bindings:
            if (b.proto, b.host_port) in wanted:
                raise Conflict(
                    f"port {b.host_port}/{b.proto} is already published by container"
                    f" {container_id[:12]}"
                )


# ---- the two implementations --------------------------------------------------------


class _Impl(Protocol):
    def state(self) -> dict[str, ServiceState]: ...
    def apply(self, service_id: str, ports: Sequence[ServicePort],
              backends: Sequence[Backend], old: ServiceState | None) -> None: ...
    def remove(self, service_id: str, old: ServiceState) -> None: ...
    def vip_state(self) -> dict[str, VipState]: ...
    def apply_vip(self, vip: VirtualIP, backends: Sequence[Backend],
                  old: VipState | None) -> None: ...
    def remove_vip(self, old: VipState) -> None: ...
    def overlay_state(self) -> dict[str, str]: ...
    def apply_overlays(self, overlays: Mapping[str, str]) -> None: ...
    def overlays_pending(self) -> bool: ...
    def close(self) -> None: ...


PortKey = tuple[str, int]  # (proto, published)


def hold_port(proto: str, port: int) -> socket.socket:
    """Bind the port on every address, so no process can; Conflict if one has it."""
    tcp = proto == "tcp"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:
            # A listener excludes every other bind, SO_REUSEADDR or not (NodeNetwork's probe
            # included), while SO_REUSEADDR lets it pass TIME_WAIT leftovers. It never sees a
            # SYN: the DNAT (or the refusal in lb_input) comes first. Should the rules vanish
            # under it (a table deleted by hand), connections would wait in its backlog.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(1)
        else:
            s.bind(("0.0.0.0", port))  # without SO_REUSEADDR no other socket may bind it
    except OSError as e:
        s.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise Conflict(
                f"port {port}/{proto} is already in use on this node by another process"
            ) from None
        raise
    return s


@dataclass
class _NftImpl:
    network: NodeNetwork
    table: str = field(init=False)
    holds: dict[PortKey, socket.socket] = field(default_factory=dict)
    unplaced: set[str] = field(default_factory=set)  # overlay addresses on no interface yet
    hairpinned: set[str] = field(default_factory=set)  # veths whose port is in hairpin mode

    def __post_init__(self) -> None:
        self.table = self.network.cfg.nft_table

    def hold_existing(self) -> None:
        """Hold the ports of the services found in the kernel (a restarted daemon)."""
        for sid, (ports, _) in self.state().items():
            for p in ports:
                if (p.proto, p.published) not in self.holds:
                    try:
                        self.holds[(p.proto, p.published)] = hold_port(p.proto, p.published)
                    except (Conflict, OSError) as e:
                        log.warning("service %s: cannot hold its port: %s", sid, e)

    def rehold(
        self, ports: Sequence[ServicePort], old: ServiceState | None
    ) -> tuple[list[PortKey], list[PortKey]]:
        """Hold the new ports (all or none); return them, and the old ones to let go of."""
        wanted = {(p.proto, p.published) for p in ports}
        new: dict[PortKey, socket.socket] = {}
        try:
            for key in sorted(wanted - self.holds.keys()):
                new[key] = hold_port(*key)
        except BaseException:
            for s in new.values():
                s.close()
            raise
        self.holds.update(new)
        before = {(p.proto, p.published) for p in (old[0] if old else [])}
        return list(new), sorted(before - wanted)

    def close(self) -> None:
        self.release(list(self.holds))

    def release(self, keys: Iterable[PortKey]) -> None:
        for key in keys:
            if (s := self.holds.pop(key, None)) is not None:
                s.close()

    def probe(self) -> None:
        """Program the base chains: raises where nftables cannot be used."""
        self.network._nft.run(base_script(self.table))

    def _objects(self) -> list[dict[str, Any]]:
        try:
            return self.network._nft.query(f"list table ip {self.table}")
        except RuntimeFailure:
            return []  # no table (yet, or torn down): nothing

    def state(self) -> dict[str, ServiceState]:
        return parse_services(self._objects())

    def apply(self, service_id: str, ports: Sequence[ServicePort],
              backends: Sequence[Backend], old: ServiceState | None) -> None:
        enable_hairpin(self.network, backends, self.hairpinned)
        added, gone = self.rehold(ports, old)
        script = base_script(self.table) + service_script(
            self.table, service_id, ports, backends, old)
        try:
            self.network._nft.run(script)
        except BaseException:
            self.release(added)
            raise
        self.release(gone)

    def remove(self, service_id: str, old: ServiceState) -> None:
        self.network._nft.run(remove_script(self.table, service_id, old))
        self.release((p.proto, p.published) for p in old[0])

    def vip_state(self) -> dict[str, VipState]:
        return parse_vips(self._objects())

    def apply_vip(self, vip: VirtualIP, backends: Sequence[Backend],
                  old: VipState | None) -> None:
        if old == (vip, list(backends)):
            return  # unchanged: keep the numgen counter
        self.network._nft.run(base_script(self.table) + vip_script(
            self.table, vip, backends, old))

    def remove_vip(self, old: VipState) -> None:
        self.network._nft.run(remove_vip_script(self.table, old))

    def overlay_state(self) -> dict[str, str]:
        return parse_overlays(self._objects())

    def apply_overlays(self, overlays: Mapping[str, str]) -> None:
        if self.overlay_state() != overlays:
            self.network._nft.run(base_script(self.table) + overlays_script(self.table,
                                                                            overlays))
        self.unplaced = allow_loopback_sources(overlays.values())

    def overlays_pending(self) -> bool:
        return bool(self.unplaced)


def enable_hairpin(network: NodeNetwork, backends: Sequence[Backend], done: set[str]) -> None:
    """Let the bridge send a frame back by the port it came in by, for local backends.

    By netlink, not /sys/class/net: a daemon that entered only a network namespace (a lab
    node) still sees the host's sysfs, where its veths do not exist. ``done`` holds the
    veths already set (a veth's name is its container's, never reused), so an update of the
    backends costs nothing for ports set before.
    """
    local = {ip: cid for cid, ip in network.ipam.leases().items()}
    names = {veth_name(cid) for b in backends if (cid := local.get(b.ip)) is not None}
    done &= set(map(veth_name, local.values()))  # forget containers that are gone
    if not names - done:
        return
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        for name in sorted(names - done):
            found = ipr.link_lookup(ifname=name)
            if not found:
                continue  # a backend being detached: not worth failing the service for
            try:
                ipr.brport("set", index=found[0], mode=1)  # IFLA_BRPORT_MODE: hairpin
                done.add(name)
            except NetlinkError as e:
                log.warning("cannot turn hairpin mode on for %s: %s", name, e)


def allow_loopback_sources(addresses: Iterable[str]) -> set[str]:
    """``route_localnet=1`` on the interfaces holding these (this node's overlay) addresses.

    A host process's connection to 127.0.0.1:<published> DNATed to a task of another node
    leaves by the overlay's interface still carrying source 127.0.0.1 until postrouting's
    SNAT, and its answers come back to 127.0.0.1 by that interface: martians unless the
    interface allows them. The interfaces are found by the addresses they hold, so whatever
    made them (the overlay driver) need not tell their names. Returns the addresses that no
    interface holds (yet).
    """
    wanted = set(addresses)
    if not wanted:
        return set()
    from pyroute2 import IPRoute  # lazily: only nodes on overlays need it

    def holders() -> dict[str, str]:
        with IPRoute() as ipr:
            return {str(a.get_attr("IFA_ADDRESS")):
                    str(ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME"))
                    for a in ipr.get_addr(family=socket.AF_INET)
                    if a.get_attr("IFA_ADDRESS") in wanted}

    found = off_loop(holders)
    names = set(found.values())
    for name in sorted(names):
        path = Path("/proc/sys/net/ipv4/conf") / name / "route_localnet"
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
        except OSError as e:
            log.warning("cannot set route_localnet on %s: %s", name, e)
    return wanted - found.keys()


class ServiceLB:
    """Published ports and VIPs of services on this node, spread over their backends.

    ``mode``: "nftables", "userspace" or "auto" (default: ``$PYSWARM_LB``, else "auto":
    nftables, falling back to userspace when the base chains cannot be programmed).

    Userspace mode runs its proxies on an asyncio loop: construct ``ServiceLB`` from a
    coroutine on the agent's running loop (or pass ``loop=``). Every method may then be
    called from any thread, that loop's thread included: it never blocks on the loop.
    """

    def __init__(self, network: NodeNetwork, mode: str | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.network = network
        self._lock = threading.Lock()  # one read-check-write of the rules at a time
        chosen = mode or os.environ.get("PYSWARM_LB", "") or "auto"
        if chosen not in ("auto", "nftables", "userspace"):
            raise InvalidArgument(f"invalid load balancer mode {chosen!r}")
        self._impl: _Impl
        if chosen != "userspace":
            nft = _NftImpl(network)
            try:
                nft.probe()
                nft.hold_existing()
                self._impl, self.mode = nft, "nftables"
                return
            except RuntimeFailure as e:
                if chosen == "nftables":
                    raise
                log.warning("nftables unusable (%s): using the userspace proxy", e)
        from pyswarm.worker.network.proxy import ProxyLB

        self._impl, self.mode = ProxyLB(loop or asyncio.get_running_loop()), "userspace"

    # ---- published ports ---------------------------------------------------------------

    def set_service(self, service_id: str, ports: Sequence[ServicePort],
                    backends: Sequence[Backend]) -> None:
        """Publish ``ports`` of a service over ``backends``, replacing what was there."""
        check_service(service_id, ports, backends)
        if not ports:
            self.remove_service(service_id)
            return
        # The node's lock too: a container's publish() must not slip in between the check of
        # its ports and our rules (NodeNetwork never calls back here, so no lock-order issue).
        with self._lock, self.network._lock:
            current = self._impl.state()
            check_owner(self.network, current, service_id, ports)
            old = current.get(service_id)
            if old == (list(ports), list(backends)):
                return  # unchanged: keep the numgen counters (and the proxies) as they are
            self._impl.apply(service_id, list(ports), list(backends), old)

    def remove_service(self, service_id: str) -> None:
        with self._lock:
            old = self._impl.state().get(service_id)
            if old is not None:
                self._impl.remove(service_id, old)

    def services(self) -> dict[str, ServiceState]:
        with self._lock:
            return self._impl.state()

    # ---- virtual IPs -------------------------------------------------------------------

    def set_vip(self, vip: VirtualIP, backends: Sequence[Backend]) -> None:
        """Spread connections to ``vip.addr`` (any port, tcp and udp) over ``backends``."""
        check_vip(vip, backends)
        with self._lock:
            old = self._impl.vip_state().get(vip.addr)
            self._impl.apply_vip(vip, list(backends), old)

    def remove_vip(self, addr: str) -> None:
        with self._lock:
            old = self._impl.vip_state().get(addr)
            if old is not None:
                self._impl.remove_vip(old)

    def vips(self) -> dict[str, VipState]:
        with self._lock:
            return self._impl.vip_state()

    # ---- overlays ----------------------------------------------------------------------

    def set_overlays(self, overlays: Mapping[str, str]) -> None:
        """This node's own address on each overlay subnet it takes part in (replaces all).

        What is balanced to a backend inside one of these subnets leaves with that address.
        """
        overlays = {str(ipaddress.IPv4Network(s)) if _is_network(s) else s: a
                    for s, a in overlays.items()}
        check_overlays(overlays)
        with self._lock:
            if self._impl.overlay_state() != overlays or self._impl.overlays_pending():
                self._impl.apply_overlays(overlays)

    def overlays_pending(self) -> bool:
        """Whether an overlay address had no interface yet when last set (set it again)."""
        with self._lock:
            return self._impl.overlays_pending()

    def overlays(self) -> dict[str, str]:
        with self._lock:
            return self._impl.overlay_state()

    # ---- all ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every service's ports and every VIP (the LB's empty base chains stay)."""
        with self._lock:
            for service_id, old in self._impl.state().items():
                self._impl.remove(service_id, old)
            for old_vip in self._impl.vip_state().values():
                self._impl.remove_vip(old_vip)
            self._impl.apply_overlays({})

    def close(self) -> None:
        """Let go of what this process holds (on the agent's shutdown).

        nftables: the held ports; the kernel rules stay and keep balancing, and a restarted
        daemon's ``ServiceLB`` finds them. Userspace: the proxies stop listening.
        """
        with self._lock:
            self._impl.close()


def _is_network(text: str) -> bool:
    try:
        ipaddress.IPv4Network(text)
    except ValueError:
        return False
    return True
