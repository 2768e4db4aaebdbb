"""The service load balancer of one node: published ports of services (Swarm's "ingress" mode).

Every published port of a service is accepted on every address of the node, and each new
connection goes to one of the service's running replicas (backends), in turn. Two
implementations behind one API (``ServiceLB``):

- **nftables** (the default): DNAT with ``numgen inc`` in the node's own table, as
  kube-proxy's nftables mode does. No IPVS, no userspace hop, one transaction per change.
- **userspace** (``proxy.py``): an asyncio TCP proxy per published port, used when nftables
  cannot be programmed, or forced with ``PYSWARM_LB=userspace``.

The chains, in ``ip <cfg.nft_table>`` next to node.py's (which this module never flushes)::

    lb_prerouting (nat, dstnat)  fib daddr type local ─┐    from other machines/namespaces
    lb_output     (nat, -100)    fib daddr type local ─┤    and containers; from host processes
                                                       ▼
        map lb_ports  { tcp . 8080 : goto lbs_<key>, udp . 53 : goto lbs_<key2>, ... }
                       (only ports of services that have backends)
                                                       ▼
    lbs_<key>  one rule per published port of service <key>, commented "<sid> tcp 8080 80":
        tcp dport 8080 dnat to numgen inc mod 3 map @lbb_<key> : 80
        (zero backends:  tcp dport 8080 return   — the rule stays as the record)
    map lbb_<key> { 0 comment "<task id>" : 10.213.0.2, 1 comment "<task>" : 10.213.0.3, ... }

    lb_input (filter, -1)   ct status & dnat == 0  meta l4proto . th dport @lb_refused  reject
        set lb_refused { tcp . 8080, ... }   ports of services with zero backends: a TCP
        client gets a reset (connection refused) at once instead of hanging; UDP an ICMP
        port unreachable. (reject is not allowed in prerouting, hence the input hook.)

``<key>`` is a hash of the service id (nft 1.0.6 accepts only plain identifiers as names);
the id itself is in each rule's comment and the task ids in the backend map's element
comments, so ``services()`` reads everything back from the kernel after a daemon restart.

Addresses and NAT. Replies must come back through this node, so:

- from another machine or namespace: DNAT only, no masquerade. **The backend sees the
  client's real source address** (tested), and answers through its default route, the
  bridge gateway, where conntrack undoes the DNAT.
- from the host itself to 127.0.0.1: node.py's ``route_localnet=1`` on the bridge and its
  "loopback to container" masquerade make the backend see the gateway address.
- from a container on the bridge to the gateway or any node address (hairpin): node.py's
  "hairpin" masquerade; the backend sees the gateway.
- a container picked as its own backend: where ``br_netfilter`` is loaded with
  ``bridge-nf-call-iptables=1`` (as Docker leaves it), the DNAT happens in the *bridge's*
  prerouting and the packet is then bridged, not routed, back towards the port it came in by,
  which a bridge refuses unless that port has ``hairpin_mode`` on. The SYN vanishes before
  conntrack confirms it, so the client's retransmit is balanced anew: it works, one second
  late, and the container never reaches itself. So ``set_service`` turns ``hairpin_mode`` on
  for the bridge ports of its local backends (as Docker and kubelet's hairpin-veth do).

These rely on ``NodeNetwork.setup()`` having run (its postrouting and forward chains) and
cover backends on this node's bridge; backends elsewhere are reached by routing.

Policy:

- A published port belongs to one owner: a service, a container's ``-p``, or a host process.
  ``set_service`` raises Conflict, changing nothing, if another one holds it. To make the
  check work the other way round too (``NodeNetwork.publish`` tries to bind the port, and a
  host process would be shadowed silently by the DNAT), the nftables path keeps a socket
  bound on each published port ("port holding", as kube-proxy did for node ports); a new
  ``ServiceLB`` binds them again for the services it finds in the kernel.
- ``set_service`` is idempotent and atomic (one nft transaction including the base chains,
  so it also works right after a ``NodeNetwork.teardown``); a changed backend set applies to
  new connections only: established connections keep their conntrack mapping (for UDP
  flows, until their conntrack entry expires).
- A service with no ports has nothing to balance: ``set_service(id, [], ...)`` removes it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pyswarm.common.errors import Conflict, InvalidArgument, RuntimeFailure
from pyswarm.worker.network.node import NodeNetwork, veth_name

log = logging.getLogger(__name__)

PORTS_MAP = "lb_ports"
REFUSED_SET = "lb_refused"
SERVICE_CHAIN_PREFIX = "lbs_"
BACKEND_MAP_PREFIX = "lbb_"

_BASE_CHAINS = {
    "lb_prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "lb_output": "type nat hook output priority -100; policy accept;",
    # -1: before iptables' filter (0), as node.py's forward chain.
    "lb_input": "type filter hook input priority -1; policy accept;",
}
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,99}")  # comments hold at most 128 bytes
_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class ServicePort:
    proto: str  # "tcp" | "udp"
    published: int  # on every address of the node
    target: int  # on each backend


@dataclass(frozen=True)
class Backend:
    ip: str
    task_id: str


ServiceState = tuple[list[ServicePort], list[Backend]]


# ---- nft text (pure) ------------------------------------------------------------------


def service_key(service_id: str) -> str:
    """A name-safe, stable key for a service id."""
    return hashlib.sha256(service_id.encode()).hexdigest()[:16]


def base_script(table: str) -> str:
    """Create the LB's chains, map and set unless present; re-create the base chains' rules."""
    t = f"ip {table}"
    lines = [
        f"add table {t}",
        f"add map {t} {PORTS_MAP} {{ type inet_proto . inet_service : verdict; }}",
        f"add set {t} {REFUSED_SET} {{ type inet_proto . inet_service; }}",
    ]
    for chain, spec in _BASE_CHAINS.items():
        lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
    dispatch = f"fib daddr type local meta l4proto . th dport vmap @{PORTS_MAP}"
    refused = f"ct status & dnat == 0 meta l4proto . th dport @{REFUSED_SET}"
    lines += [
        f"add rule {t} lb_prerouting {dispatch}",
        f"add rule {t} lb_output {dispatch}",
        f"add rule {t} lb_input {refused} meta l4proto tcp reject with tcp reset",
        f"add rule {t} lb_input {refused} meta l4proto udp reject",
    ]
    return "\n".join(lines) + "\n"


def service_script(
    table: str,
    service_id: str,
    ports: Sequence[ServicePort],
    backends: Sequence[Backend],
    old: ServiceState | None,
) -> str:
    """Replace service ``service_id`` (whose kernel state is ``old``) by ports and backends."""
    t = f"ip {table}"
    key = service_key(service_id)
    chain, bmap = SERVICE_CHAIN_PREFIX + key, BACKEND_MAP_PREFIX + key
    lines = [
        f"add chain {t} {chain}",
        f"flush chain {t} {chain}",
        f"add map {t} {bmap} {{ typeof numgen inc mod 2 : ip daddr; }}",
        f"flush map {t} {bmap}",
        *_forget_elements(t, old),
    ]
    if backends:
        elements = ", ".join(
            f"{i} comment {_quote(b.task_id)} : {b.ip}" for i, b in enumerate(backends)
        )
        lines.append(f"add element {t} {bmap} {{ {elements} }}")
    n = len(backends)
    for p in ports:
        match = f"{p.proto} dport {p.published}"
        action = f"dnat to numgen inc mod {n} map @{bmap} : {p.target}" if n else "return"
        comment = _quote(f"{service_id} {p.proto} {p.published} {p.target}")
        lines.append(f"add rule {t} {chain} {match} {action} comment {comment}")
    keys = ", ".join(f"{p.proto} . {p.published}" for p in ports)
    if n:
        verdicts = ", ".join(f"{p.proto} . {p.published} : goto {chain}" for p in ports)
        lines.append(f"add element {t} {PORTS_MAP} {{ {verdicts} }}")
    else:
        lines.append(f"add element {t} {REFUSED_SET} {{ {keys} }}")
    return "\n".join(lines) + "\n"


def remove_script(table: str, service_id: str, old: ServiceState) -> str:
    """Delete a service's elements, chain and backend map (the elements go first)."""
    t = f"ip {table}"
    key = service_key(service_id)
    return "\n".join([
        *_forget_elements(t, old),
        f"flush chain {t} {SERVICE_CHAIN_PREFIX}{key}",
        f"delete chain {t} {SERVICE_CHAIN_PREFIX}{key}",
        f"delete map {t} {BACKEND_MAP_PREFIX}{key}",
    ]) + "\n"


def _forget_elements(t: str, old: ServiceState | None) -> list[str]:
    """Delete the dispatch (or refusal) elements a service's old state implies."""
    if old is None or not old[0]:
        return []
    keys = ", ".join(f"{p.proto} . {p.published}" for p in old[0])
    where = PORTS_MAP if old[1] else REFUSED_SET
    return [f"delete element {t} {where} {{ {keys} }}"]


def parse_services(objects: Iterable[dict[str, Any]]) -> dict[str, ServiceState]:
    """Services as found in ``nft -j list table`` objects; what is not ours is ignored."""
    ports: dict[str, tuple[str, list[ServicePort]]] = {}  # key -> (service id, ports)
    backends: dict[str, list[tuple[int, Backend]]] = {}
    for obj in objects:
        if (rule := obj.get("rule")) and str(rule.get("chain", "")).startswith(
            SERVICE_CHAIN_PREFIX
        ):
            parsed = _parse_comment(str(rule.get("comment", "")))
            if parsed is not None:
                key = str(rule["chain"])[len(SERVICE_CHAIN_PREFIX):]
                sid, port = parsed
                if key == service_key(sid):
                    ports.setdefault(key, (sid, []))[1].append(port)
        elif (m := obj.get("map")) and str(m.get("name", "")).startswith(BACKEND_MAP_PREFIX):
            key = str(m["name"])[len(BACKEND_MAP_PREFIX):]
            backends[key] = [_parse_backend(e) for e in m.get("elem", [])]
    found: dict[str, ServiceState] = {}
    for key, (sid, service_ports) in ports.items():
        members = [b for _, b in sorted(backends.get(key, []), key=lambda ib: ib[0])]
        found[sid] = (service_ports, members)
    return found


def _parse_comment(comment: str) -> tuple[str, ServicePort] | None:
    parts = comment.split()
    if len(parts) != 4 or parts[1] not in _PROTOCOLS or not (parts[2] + parts[3]).isdigit():
        return None
    return parts[0], ServicePort(parts[1], int(parts[2]), int(parts[3]))


def _parse_backend(element: Any) -> tuple[int, Backend]:
    # [{"elem": {"val": 0, "comment": "task"}}, "10.213.0.2"]
    key, ip = element
    inner = key.get("elem", {}) if isinstance(key, dict) else {"val": key}
    return int(inner["val"]), Backend(ip=str(ip), task_id=str(inner.get("comment", "")))


def _quote(text: str) -> str:
    return '"' + text.replace('"', "") + '"'


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
    ips: set[str] = set()
    for b in backends:
        if not _ID.fullmatch(b.task_id):
            raise InvalidArgument(f"invalid task id {b.task_id!r}")
        try:
            ipaddress.IPv4Address(b.ip)
        except ValueError:
            raise InvalidArgument(f"invalid backend address {b.ip!r}") from None
        if b.ip in ips:
            raise InvalidArgument(f"backend address {b.ip} is listed twice")
        ips.add(b.ip)


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

    def state(self) -> dict[str, ServiceState]:
        try:
            objects = self.network._nft.query(f"list table ip {self.table}")
        except RuntimeFailure:
            return {}  # no table (yet, or torn down): no services
        return parse_services(objects)

    def apply(self, service_id: str, ports: Sequence[ServicePort],
              backends: Sequence[Backend], old: ServiceState | None) -> None:
        enable_hairpin(self.network, backends)
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


def enable_hairpin(network: NodeNetwork, backends: Sequence[Backend]) -> None:
    """Let the bridge send a frame back by the port it came in by, for local backends."""
    local = {ip: cid for cid, ip in network.ipam.leases().items()}
    for b in backends:
        if (cid := local.get(b.ip)) is None:
            continue  # not a container of this node
        path = Path("/sys/class/net") / veth_name(cid) / "brport" / "hairpin_mode"
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
        except OSError as e:
            # A backend being detached: not worth failing the whole service for.
            log.warning("cannot turn hairpin mode on for %s: %s", b.ip, e)



class ServiceLB:
    """Published ports of services on this node, spread over their backends.

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

    def clear(self) -> None:
        """Remove every service's ports (the LB's empty base chains stay)."""
        with self._lock:
            for service_id, old in self._impl.state().items():
                self._impl.remove(service_id, old)

    def close(self) -> None:
        """Let go of what this process holds (on the agent's shutdown).

        nftables: the held ports; the kernel rules stay and keep balancing, and a restarted
        daemon's ``ServiceLB`` finds them. Userspace: the proxies stop listening.
        """
        with self._lock:
            self._impl.close()
