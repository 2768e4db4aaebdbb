"""The node's container network: one bridge, a veth per container, NAT and published ports.

::

      host processes ─┐            other machines / namespaces
      (127.0.0.1,     │                    │ eth0 / any link
       node addrs)    │                    │
                ┌─────▼────────────────────▼───────────────────────────────────┐
                │ nft table ip <cfg.nft_table>                                 │
                │  output      (nat)  fib daddr type local ─┐                  │
                │  prerouting  (nat)  fib daddr type local ─┴─► ports: DNAT    │
                │  forward  (filter)  iif/oif bridge accept                    │
                │  postrouting (nat)  masquerade: subnet out ≠ bridge (egress) │
                │                     127/8 → bridge, hairpin                  │
                └──────────────────────────┬───────────────────────────────────┘
                          <cfg.bridge>  10.213.0.1/16 (gateway, route_localnet=1)
                        ┌────────┴────────┐
                  psw<id[:8]>        psw<id[:8]>          veth pairs, host side
                  ───────────        ───────────
                     eth0               eth0              container side, in the netns
                  10.213.0.2         10.213.0.3           bind-mounted at
                                                           <cfg.network_dir>/netns/<id[:12]>

Why the two loopback knobs: a host process connecting to 127.0.0.1:<published> is DNAT'ed in
``output`` and re-routed out of the bridge still carrying source 127.0.0.1. The kernel calls
such a packet a martian unless ``route_localnet=1`` is set on the interface it leaves by and
whose answers arrive on, the bridge (that is the interface that matters, not ``lo``); and the
container could not answer 127.0.0.1 anyway, so ``postrouting`` masquerades 127/8 going to the
bridge into the gateway address.

State: the IPAM file and the namespace files live under ``cfg.network_dir`` (a run folder),
published ports in the kernel's nft rules; the veth name and MAC derive from the id and the
address. So a restarted daemon finds every attachment and published port of the containers
that kept running, and ``attach`` of an attached id returns what exists.

Overlays (overlay.py) are more bridges of this node, one per overlay network; a cluster task
gets one more interface per network it is on (``attach_overlays``: eth1, eth2, ... MTU 1450,
no default route, so traffic to service VIPs leaves by eth0 to this host's load balancer).
Which networks each container is on is kept in ``overlays/<id>.json`` beside the IPAM file,
written before the links are made so that ``detach`` always knows what to remove; the
service DNS (dns.py) reads it to tell which names a querying container may see.

Threads: netlink work runs on one dedicated thread (netns.py), which may step into container
namespaces; nothing forks. Public methods are safe to call from any thread.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from pyswarm.common.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from pyswarm.common.paths import EngineConfig
from pyswarm.worker.network import firewall, links, netns, overlay, rules
from pyswarm.worker.network.ipam import IpamStore, gateway_of
from pyswarm.worker.network.nft import Nft
from pyswarm.worker.network.ports import PortBinding

_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")
_IFNAME = re.compile(r"[0-9A-Za-z_.-]{1,15}")
T = TypeVar("T")
# Random host ports come from the kernel's ephemeral range; retry when it offers one that an
# existing rule already claims (the kernel knows nothing of DNAT rules).
_PICK_ATTEMPTS = 32


@dataclass(frozen=True)
class Attachment:
    netns_path: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str
    veth_host: str


@dataclass(frozen=True)
class OverlayEndpoint:
    """A container's interface on an overlay network."""

    network_id: str
    address: str  # CIDR, as the manager allocated it
    ifname: str  # in the container: eth1, eth2, ...
    veth_host: str  # on the overlay's bridge


def veth_name(container_id: str) -> str:
    return "psw" + container_id[:8]


def overlay_veth_name(container_id: str, position: int) -> str:
    """Host side of the container's eth<position> (1-based): ``psv`` + 8 + digits <= 15."""
    return f"psv{container_id[:8]}{position}"


class NodeNetwork:
    def __init__(self, cfg: EngineConfig) -> None:
        if not _IFNAME.fullmatch(cfg.bridge):
            raise InvalidArgument(f"invalid bridge name {cfg.bridge!r}: 1-15 of [A-Za-z0-9_.-]")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cfg.nft_table):
            raise InvalidArgument(f"invalid nftables table name {cfg.nft_table!r}")
        self.cfg = cfg
        self.gateway = gateway_of(cfg.subnet)
        self.netns_dir = cfg.network_dir / "netns"
        self.ipam = IpamStore(cfg.network_dir, cfg.subnet)
        self._nft = Nft()
        self._lock = threading.RLock()  # one change of links, leases or rules at a time
        self._thread: netns.NetnsThread | None = None
        self._host: IPRoute | None = None  # used on the netns thread only
        self._bridge_index = 0
        self._reaper: links.LinkReaper | None = None
        self.overlays = overlay.OverlayNetworks(cfg.bridge, self._netlink, self._lock,
                                                self._nft, cfg.nft_table)
        self.overlays_dir = cfg.network_dir / "overlays"
        # The address the node's service DNS answers on, once it serves (set by
        # overlay_sync.py); empty: containers keep the host's resolvers.
        self.service_dns = ""
        # Bridge IP -> overlay network ids, for the DNS; rebuilt after each change.
        self._members: dict[str, tuple[str, ...]] | None = None
        self._members_gen = 0
        self._members_lock = threading.Lock()

    # ---- node-wide -------------------------------------------------------------------

    def setup(self) -> None:
        """Create (or check) the bridge, sysctls, the nft table and the namespace folder."""
        with self._lock:
            thread = self._ensure_thread()
            self._bridge_index = thread.call(links.ensure_bridge, self._ipr(), self.cfg.bridge,
                                             self.gateway)
            _sysctl("net/ipv4/ip_forward", "1")
            _sysctl(f"net/ipv4/conf/{self.cfg.bridge}/route_localnet", "1")
            netns.prepare_dir(self.netns_dir)
            self._nft.run(rules.base_script(self.cfg.nft_table, self.cfg.bridge, self.cfg.subnet))
            firewall.install(self.cfg.bridge)

    def teardown(self) -> None:
        """Remove everything of this config: attachments, bridge, nft table, accept rules."""
        with self._lock:
            ids = set(self.ipam.leases())
            for path in self.netns_dir.glob("*") if self.netns_dir.is_dir() else []:
                ids.add(path.name)
            if self.overlays_dir.is_dir():
                ids.update(path.stem for path in self.overlays_dir.glob("*.json"))
            for container_id in sorted(ids):
                self.detach(container_id)
            self.settle()
            self.overlays.teardown()
            thread = self._ensure_thread()
            thread.call(self._remove_bridge)
            self._nft.run(rules.delete_table_script(self.cfg.nft_table))
            firewall.remove(self.cfg.bridge)
            if self.netns_dir.is_dir():
                netns.remove_dir(self.netns_dir)
            if self.overlays_dir.is_dir():
                for path in self.overlays_dir.iterdir():
                    path.unlink(missing_ok=True)
                self.overlays_dir.rmdir()
            for name in ("ipam.json", "ipam.lock"):
                (self.cfg.network_dir / name).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the netns thread (the kernel state stays)."""
        with self._lock:
            if self._thread is not None:
                if self._host is not None and not self._thread.broken:
                    self._thread.call(self._host.close)
                self._thread.close()
            if self._reaper is not None:
                self._reaper.close()
            self._thread, self._host, self._reaper = None, None, None

    # ---- containers ------------------------------------------------------------------

    def attach(self, container_id: str) -> Attachment:
        """Give the container a namespace with eth0 on the bridge; returns what exists if any."""
        _check_id(container_id)
        with self._lock:
            existing = self.attachment(container_id)
            if existing is not None:
                return existing
            if not self._bridge_index:
                raise RuntimeFailure("the node network is not set up (call setup() first)")
            ip = self.ipam.allocate(container_id)
            att = self._attachment(container_id, ip)
            address = ipaddress.IPv4Interface(f"{ip}/{att.prefixlen}")
            thread = self._ensure_thread()
            if self._reaper is not None:
                self._reaper.wait(att.veth_host)  # the same id detached a moment ago
            try:
                thread.call(links.plumb, thread, self._ipr(), Path(att.netns_path),
                            att.veth_host, self._bridge_index, address, att.gateway)
            except Exception as e:
                self.detach(container_id)
                if isinstance(e, RuntimeFailure):
                    raise
                raise RuntimeFailure(f"cannot attach {container_id[:12]}: {e}") from e
            return att

    def attachment(self, container_id: str) -> Attachment | None:
        """The container's attachment if it is complete (namespace mounted and a lease)."""
        ip = self.ipam.leases().get(container_id)
        if ip is None or not netns.is_netns(self._netns_path(container_id)):
            return None
        return self._attachment(container_id, ip)

    def detach(self, container_id: str) -> None:
        """Remove the veth, the namespace file, the published ports and the lease. Idempotent."""
        with self._lock:
            self.unpublish(container_id)
            netns.remove(self._netns_path(container_id))
            # The reaper skips names that do not exist; /sys/class/net cannot tell, as it
            # shows the links of the namespace /sys was mounted in, not of this process.
            reaper = self._ensure_reaper()
            reaper.delete(veth_name(container_id))
            for endpoint in self.overlay_endpoints(container_id):
                reaper.delete(endpoint.veth_host)
            self._overlay_file(container_id).unlink(missing_ok=True)
            self.ipam.release(container_id)
            self._members_changed()

    # ---- overlay networks ------------------------------------------------------------

    def attach_overlays(
        self, container_id: str, overlays: Sequence[tuple[str, str]]
    ) -> list[OverlayEndpoint]:
        """Give an attached container one interface per (network id, CIDR address), eth1
        onwards, on the overlays' bridges. The networks must be on this node (NotFound)."""
        _check_id(container_id)
        with self._lock:
            att = self.attachment(container_id)
            if att is None:
                raise RuntimeFailure(f"container {container_id[:12]} has no network namespace")
            plan: list[tuple[str, str, int, ipaddress.IPv4Interface]] = []
            endpoints: list[OverlayEndpoint] = []
            bridges: dict[str, int] = {}
            seen: set[str] = set()
            for i, (network_id, cidr) in enumerate(overlays):
                where = f"overlays[{i}]"
                if network_id in seen:
                    raise InvalidArgument(f"{where}: network {network_id} is listed twice")
                seen.add(network_id)
                bridge, spec = self.overlays.bridge_for(network_id)
                address = _overlay_address(cidr, spec.subnet, where)
                if spec.address is not None and address.ip == spec.address.ip:
                    raise InvalidArgument(
                        f"{where}.address: {address.ip} is this node's own address on "
                        f"network {spec.name}")
                endpoint = OverlayEndpoint(network_id, str(address), f"eth{i + 1}",
                                           overlay_veth_name(container_id, i + 1))
                endpoints.append(endpoint)
                if bridge not in bridges:
                    bridges[bridge] = self._netlink(_link_index, bridge)
                plan.append((endpoint.veth_host, endpoint.ifname, bridges[bridge], address))
            if not endpoints:
                return []
            self._write_overlays(container_id, endpoints)  # before the links: detach finds them
            self._members_changed()
            thread = self._ensure_thread()
            for endpoint in endpoints:
                if self._reaper is not None:
                    self._reaper.wait(endpoint.veth_host)
            try:
                thread.call(links.plumb_more, thread, self._ipr(), Path(att.netns_path), plan,
                            overlay.MTU)
            except Exception as e:
                if isinstance(e, RuntimeFailure):
                    raise
                raise RuntimeFailure(
                    f"cannot attach {container_id[:12]} to its overlay networks: {e}") from e
            return endpoints

    def overlay_endpoints(self, container_id: str) -> list[OverlayEndpoint]:
        """The container's overlay interfaces, as recorded (none if it has none)."""
        try:
            data = json.loads(self._overlay_file(container_id).read_text())
            return [OverlayEndpoint(**item) for item in data]
        except (OSError, ValueError, TypeError):
            return []

    def networks_of(self, ip: str) -> tuple[str, ...]:
        """The overlay networks of the container whose eth0 has ``ip`` (in eth1.. order)."""
        members = self._members
        if members is None:
            gen = self._members_gen
            members = {}
            for container_id, address in self.ipam.leases().items():
                found = self.overlay_endpoints(container_id)
                if found:
                    members[address] = tuple(e.network_id for e in found)
            with self._members_lock:
                if gen == self._members_gen:  # else a change came meanwhile: rebuild next time
                    self._members = members
        return members.get(ip, ())

    def _members_changed(self) -> None:
        with self._members_lock:
            self._members_gen += 1
            self._members = None

    def _overlay_file(self, container_id: str) -> Path:
        return self.overlays_dir / f"{container_id}.json"

    def _write_overlays(self, container_id: str, endpoints: list[OverlayEndpoint]) -> None:
        self.overlays_dir.mkdir(parents=True, exist_ok=True)
        path = self._overlay_file(container_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(e) for e in endpoints]))
        os.replace(tmp, path)

    def _netlink(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(host socket, *args)`` on the netns thread (overlay.py's netlink runner)."""
        with self._lock:
            thread = self._ensure_thread()
            return thread.call(fn, self._ipr(), *args)

    # ---- published ports -------------------------------------------------------------

    def publish(
        self, container_id: str, ip: str, bindings: Sequence[PortBinding]
    ) -> list[PortBinding]:
        """DNAT host ports to the container, all or none; host_port 0 is filled in."""
        _check_id(container_id)
        with self._lock:
            claimed = [(r.container_id, r.binding) for r in self._port_rules()]
            done: list[PortBinding] = []
            new: list[PortBinding] = []
            _check_ip(ip)
            for b in bindings:
                _check_binding(b)
                if (container_id, b) in claimed and b.host_port:
                    done.append(b)  # already published, unchanged: nothing to add
                    continue
                b = self._claim(container_id, b, claimed)
                claimed.append((container_id, b))
                done.append(b)
                new.append(b)
            if new:
                table = self.cfg.nft_table
                self._nft.run("\n".join(rules.port_rule(table, container_id, ip, b) for b in new))
            return done

    def unpublish(self, container_id: str) -> None:
        with self._lock:
            handles = [r.handle for r in self._port_rules() if r.container_id == container_id]
            if handles:
                self._nft.run(rules.delete_rules_script(self.cfg.nft_table, handles))

    def published(self) -> dict[str, list[PortBinding]]:
        found: dict[str, list[PortBinding]] = {}
        for r in self._port_rules():
            found.setdefault(r.container_id, []).append(r.binding)
        return found

    # ---- internals -------------------------------------------------------------------

    def _claim(
        self, container_id: str, b: PortBinding, claimed: list[tuple[str, PortBinding]]
    ) -> PortBinding:
        """Check a requested host port is free, or pick a free one; raise Conflict."""
        if b.host_port:
            for owner, other in claimed:
                if _overlap(b, other):
                    who = "this container" if owner == container_id else f"container {owner[:12]}"
                    raise Conflict(f"port {b.host_port}/{b.proto} is already published by {who}")
            if not _bindable(b):
                raise Conflict(
                    f"port {b.host_port}/{b.proto} is already in use on this node"
                    f"{' at ' + b.host_ip if b.host_ip else ''} by another process"
                )
            return b
        for _ in range(_PICK_ATTEMPTS):
            port = _free_port(b)
            candidate = replace(b, host_port=port)
            if not any(_overlap(candidate, other) for _, other in claimed):
                return candidate
        raise Conflict(f"no free host port found for {b.container_port}/{b.proto}")

    def _port_rules(self) -> list[rules.PortRule]:
        try:
            objects = self._nft.query(f"list chain ip {self.cfg.nft_table} {rules.PORTS_CHAIN}")
        except RuntimeFailure:
            return []  # no table yet (or torn down): nothing is published
        return rules.parse_port_rules(objects)

    def _attachment(self, container_id: str, ip: str) -> Attachment:
        return Attachment(
            netns_path=str(self._netns_path(container_id)),
            ip=ip,
            prefixlen=self.gateway.network.prefixlen,
            gateway=str(self.gateway.ip),
            mac=links.mac_for(ip),
            veth_host=veth_name(container_id),
        )

    def _netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id[:12]

    def _ensure_thread(self) -> netns.NetnsThread:
        if self._thread is not None and self._thread.broken:
            self._thread, self._host = None, None  # its socket dies with it; start afresh
        if self._thread is None:
            self._thread = netns.NetnsThread()
            # The host socket is opened on the thread while it stands in the host namespace.
            self._host = self._thread.call(links.open_host_socket)
        return self._thread

    def _ensure_reaper(self) -> links.LinkReaper:
        if self._reaper is None:
            self._reaper = links.LinkReaper()
        return self._reaper

    def settle(self) -> None:
        """Wait until the veths of detached containers are gone from the host."""
        if self._reaper is not None:
            self._reaper.wait()

    def _ipr(self) -> IPRoute:
        assert self._host is not None
        return self._host

    def _remove_bridge(self) -> None:
        ipr = self._ipr()
        found = ipr.link_lookup(ifname=self.cfg.bridge)
        if found:
            for port in links.ports_of(ipr, found[0]):
                links.delete_link(ipr, port)
            links.delete_link(ipr, self.cfg.bridge)
        self._bridge_index = 0


def _link_index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NotFound(f"link {name} does not exist")
    return int(found[0])


def _overlay_address(cidr: str, subnet: ipaddress.IPv4Network, where: str
                     ) -> ipaddress.IPv4Interface:
    try:
        address = ipaddress.IPv4Interface(cidr)
    except ValueError:
        raise InvalidArgument(f"{where}.address: {cidr!r} is not an IPv4 address") from None
    if "/" not in cidr:
        address = ipaddress.IPv4Interface(f"{address.ip}/{subnet.prefixlen}")
    if address.network != subnet:
        raise InvalidArgument(f"{where}.address: {cidr} is not in the network's subnet {subnet}")
    if address.ip in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(f"{where}.address: {cidr} is not a host address")
    return address


def _check_id(container_id: str) -> None:
    if not _ID.fullmatch(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}")


def _check_ip(ip: str) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise InvalidArgument(f"invalid container address {ip!r}") from None


def _check_binding(b: PortBinding) -> None:
    """Bindings may come from elsewhere than parse_publish: check before they reach nft."""
    if b.proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {b.proto!r}: must be tcp or udp")
    if not 1 <= b.container_port <= 65535 or not 0 <= b.host_port <= 65535:
        raise InvalidArgument(f"invalid port in {b}: must be 1-65535")
    if b.host_ip:
        _check_ip(b.host_ip)


def _overlap(a: PortBinding, b: PortBinding) -> bool:
    """Two bindings compete for the same packets: same port and protocol, addresses overlap."""
    return (
        a.proto == b.proto
        and a.host_port == b.host_port
        and (not a.host_ip or not b.host_ip or a.host_ip == b.host_ip)
    )


def _socket_for(b: PortBinding) -> socket.socket:
    kind = socket.SOCK_STREAM if b.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    if b.proto == "tcp":
        # Lets a port held only by TIME_WAIT leftovers pass; a listener still refuses it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def _bindable(b: PortBinding) -> bool:
    """Whether a host process holds the port (the DNAT rule would shadow it silently)."""
    with _socket_for(b) as s:
        try:
            s.bind((b.host_ip or "0.0.0.0", b.host_port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"{b.host_ip} is not an address of this node") from None
            raise
    return True


def _free_port(b: PortBinding) -> int:
    with _socket_for(b) as s:
        try:
            s.bind((b.host_ip or "0.0.0.0", 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"{b.host_ip} is not an address of this node") from None
            raise
        return int(s.getsockname()[1])


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as e:
        raise RuntimeFailure(f"cannot set {key.replace('/', '.')}={value}: {e}") from e

