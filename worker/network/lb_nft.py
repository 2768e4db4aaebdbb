"""The load balancer's model and its nftables form: pure text builders and the parser back.

``lb.py`` applies these scripts; nothing here touches the kernel. The chains, in
``ip <cfg.nft_table>`` next to node.py's (which this module never flushes)::

    lb_prerouting (nat, dstnat)  fib daddr type local ─┐    from other machines/namespaces
    lb_output     (nat, -100)    fib daddr type local ─┤    and containers; from host processes
                                                       ▼
        map lb_ports  { tcp . 8080 : goto lbs_<key>, udp . 53 : goto lbs_<key2>, ... }
                       (only ports of services that have backends)
                                                       ▼
    lbs_<key>  one rule per published port of service <key>, commented "<sid> tcp 8080 80":
        tcp dport 8080 dnat to numgen inc mod 3 map @lbb_<key> : 80
        (zero backends:  tcp dport 8080 return   — the rule stays as the record)
    map lbb_<key> { 0 comment "<task id>" : 10.213.0.2, 1 comment "<task>" : 10.255.0.7, ... }
        backends of every node: a task of this node by its node-bridge address, a task of
        another node by its address on the ingress overlay

    lb_prerouting        ip daddr vmap @lb_vips      (virtual IPs, any port, tcp and udp)
        map lb_vips { 10.215.0.7 : goto lbv_<vkey>, ... }   (only VIPs that have tasks)
    lbv_<vkey>  meta l4proto { tcp, udp } dnat to numgen inc mod 2 map @lbvb_<vkey>
                commented "vip <sid> <network id> <vip>"  (zero tasks: ``return``)
    map lbvb_<vkey> { 0 comment "<task id>" : 10.214.3.5, ... }   the tasks' overlay addresses

    lb_input   (filter, -1)  ct status & dnat == 0  meta l4proto . th dport @lb_refused  reject
    lb_forward (filter, -1)  ct status & dnat == 0  ip daddr @lb_vips_refused          reject
        ports / VIPs of services with zero serving tasks: a TCP client gets a reset
        (connection refused) at once instead of hanging, UDP an ICMP port unreachable.
        (reject is not allowed in nat chains, hence the filter hooks.)

    lb_postrouting (nat, 99: just before node.py's srcnat chain)
        ct status dnat  snat to ip daddr map @lb_snat
        map lb_snat { 10.255.0.0/24 : 10.255.0.2, 10.214.3.0/24 : 10.214.3.9, ... }
        overlay subnet -> this node's own address on it. What was DNATed to a task reached
        through an overlay leaves with this node's address on that overlay, so the answer
        comes back here (where conntrack undoes both translations). A backend on this
        node's bridge is not in any overlay subnet: it keeps seeing the client's address.

``<key>`` / ``<vkey>`` are hashes of the service id / the VIP (nft 1.0.6 accepts only plain
identifiers as names); the ids are in each rule's comment and the task ids in the backend
maps' element comments, so everything is read back from the kernel after a daemon restart.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

PORTS_MAP = "lb_ports"
REFUSED_SET = "lb_refused"
VIPS_MAP = "lb_vips"
VIPS_REFUSED_SET = "lb_vips_refused"
SNAT_MAP = "lb_snat"
SERVICE_CHAIN_PREFIX = "lbs_"
BACKEND_MAP_PREFIX = "lbb_"
VIP_CHAIN_PREFIX = "lbv_"
VIP_BACKEND_MAP_PREFIX = "lbvb_"
PROTOCOLS = ("tcp", "udp")

_BASE_CHAINS = {
    "lb_prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "lb_output": "type nat hook output priority -100; policy accept;",
    # -1: before iptables' filter (0), as node.py's forward chain.
    "lb_input": "type filter hook input priority -1; policy accept;",
    "lb_forward": "type filter hook forward priority -1; policy accept;",
    # 99: before node.py's masquerades (srcnat = 100): the first NAT binding made wins.
    "lb_postrouting": "type nat hook postrouting priority 99; policy accept;",
}


@dataclass(frozen=True)
class ServicePort:
    proto: str  # "tcp" | "udp"
    published: int  # on every address of the node
    target: int  # on each backend


@dataclass(frozen=True)
class Backend:
    ip: str
    task_id: str


@dataclass(frozen=True)
class VirtualIP:
    """A service's virtual IP on one overlay network.

    ``ports``: the TCP ports the userspace proxy listens on at the VIP. nftables balances
    every port and protocol and does not record them, so they take no part in equality.
    """

    addr: str
    service_id: str
    network_id: str
    ports: tuple[int, ...] = field(default=(), compare=False)


ServiceState = tuple[list[ServicePort], list[Backend]]
VipState = tuple[VirtualIP, list[Backend]]


def off_loop(call: Callable[[], T]) -> T:
    """Run ``call`` in a thread of its own and wait for it.

    pyroute2's synchronous sockets run an event loop of their own, which fails in a thread
    whose asyncio loop is running (the agent's): the load balancer may be called from there.
    The new thread stands in the caller's network namespace.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def service_key(service_id: str) -> str:
    """A name-safe, stable key for a service id."""
    return hashlib.sha256(service_id.encode()).hexdigest()[:16]


def vip_key(addr: str) -> str:
    return hashlib.sha256(f"vip {addr}".encode()).hexdigest()[:16]


def vip_comment(vip: VirtualIP) -> str:
    return f"vip {vip.service_id} {vip.network_id} {vip.addr}"


# ---- scripts ------------------------------------------------------------------------


def base_script(table: str) -> str:
    """Create the LB's chains, maps and sets unless present; re-create the base chains' rules."""
    t = f"ip {table}"
    lines = [
        f"add table {t}",
        f"add map {t} {PORTS_MAP} {{ type inet_proto . inet_service : verdict; }}",
        f"add set {t} {REFUSED_SET} {{ type inet_proto . inet_service; }}",
        f"add map {t} {VIPS_MAP} {{ type ipv4_addr : verdict; }}",
        f"add set {t} {VIPS_REFUSED_SET} {{ type ipv4_addr; }}",
        f"add map {t} {SNAT_MAP} {{ type ipv4_addr : ipv4_addr; flags interval; }}",
    ]
    for chain, spec in _BASE_CHAINS.items():
        lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
    dispatch = f"fib daddr type local meta l4proto . th dport vmap @{PORTS_MAP}"
    refused = f"ct status & dnat == 0 meta l4proto . th dport @{REFUSED_SET}"
    refused_vip = f"ct status & dnat == 0 ip daddr @{VIPS_REFUSED_SET}"
    lines += [
        f"add rule {t} lb_prerouting {dispatch}",
        f"add rule {t} lb_prerouting ip daddr vmap @{VIPS_MAP}",
        f"add rule {t} lb_output {dispatch}",
        f"add rule {t} lb_input {refused} meta l4proto tcp reject with tcp reset",
        f"add rule {t} lb_input {refused} meta l4proto udp reject",
        f"add rule {t} lb_forward {refused_vip} meta l4proto tcp reject with tcp reset",
        f"add rule {t} lb_forward {refused_vip} meta l4proto udp reject",
        f"add rule {t} lb_postrouting ct status dnat snat to ip daddr map @{SNAT_MAP}",
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
    lines = [*_fresh_chain_and_map(t, chain, bmap, backends), *_forget_elements(t, old)]
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
        *_drop_chain_and_map(t, SERVICE_CHAIN_PREFIX + key, BACKEND_MAP_PREFIX + key),
    ]) + "\n"


def vip_script(table: str, vip: VirtualIP, backends: Sequence[Backend],
               old: VipState | None) -> str:
    """Replace the VIP ``vip.addr`` (whose kernel state is ``old``) by ``backends``."""
    t = f"ip {table}"
    key = vip_key(vip.addr)
    chain, bmap = VIP_CHAIN_PREFIX + key, VIP_BACKEND_MAP_PREFIX + key
    lines = [*_fresh_chain_and_map(t, chain, bmap, backends), *_forget_vip(t, old)]
    n = len(backends)
    action = f"dnat to numgen inc mod {n} map @{bmap}" if n else "return"
    lines.append(f"add rule {t} {chain} meta l4proto {{ tcp, udp }} {action}"
                 f" comment {_quote(vip_comment(vip))}")
    if n:
        lines.append(f"add element {t} {VIPS_MAP} {{ {vip.addr} : goto {chain} }}")
    else:
        lines.append(f"add element {t} {VIPS_REFUSED_SET} {{ {vip.addr} }}")
    return "\n".join(lines) + "\n"


def remove_vip_script(table: str, old: VipState) -> str:
    t = f"ip {table}"
    key = vip_key(old[0].addr)
    return "\n".join([
        *_forget_vip(t, old),
        *_drop_chain_and_map(t, VIP_CHAIN_PREFIX + key, VIP_BACKEND_MAP_PREFIX + key),
    ]) + "\n"


def overlays_script(table: str, overlays: Mapping[str, str]) -> str:
    """Replace the overlay subnet -> this node's address map (one transaction)."""
    t = f"ip {table}"
    lines = [f"flush map {t} {SNAT_MAP}"]
    if overlays:
        elements = ", ".join(f"{subnet} : {addr}" for subnet, addr in sorted(overlays.items()))
        lines.append(f"add element {t} {SNAT_MAP} {{ {elements} }}")
    return "\n".join(lines) + "\n"


def _fresh_chain_and_map(t: str, chain: str, bmap: str,
                         backends: Sequence[Backend]) -> list[str]:
    lines = [
        f"add chain {t} {chain}",
        f"flush chain {t} {chain}",
        f"add map {t} {bmap} {{ typeof numgen inc mod 2 : ip daddr; }}",
        f"flush map {t} {bmap}",
    ]
    if backends:
        elements = ", ".join(
            f"{i} comment {_quote(b.task_id)} : {b.ip}" for i, b in enumerate(backends)
        )
        lines.append(f"add element {t} {bmap} {{ {elements} }}")
    return lines


def _drop_chain_and_map(t: str, chain: str, bmap: str) -> list[str]:
    return [f"flush chain {t} {chain}", f"delete chain {t} {chain}", f"delete map {t} {bmap}"]


def _forget_elements(t: str, old: ServiceState | None) -> list[str]:
    """Delete the dispatch (or refusal) elements a service's old state implies."""
    if old is None or not old[0]:
        return []
    keys = ", ".join(f"{p.proto} . {p.published}" for p in old[0])
    where = PORTS_MAP if old[1] else REFUSED_SET
    return [f"delete element {t} {where} {{ {keys} }}"]


def _forget_vip(t: str, old: VipState | None) -> list[str]:
    if old is None:
        return []
    where = VIPS_MAP if old[1] else VIPS_REFUSED_SET
    return [f"delete element {t} {where} {{ {old[0].addr} }}"]


# ---- reading back -------------------------------------------------------------------


def parse_services(objects: Iterable[dict[str, Any]]) -> dict[str, ServiceState]:
    """Services as found in ``nft -j list table`` objects; what is not ours is ignored."""
    ports: dict[str, tuple[str, list[ServicePort]]] = {}  # key -> (service id, ports)
    backends = _backend_maps(objects, BACKEND_MAP_PREFIX)
    for rule in _rules(objects, SERVICE_CHAIN_PREFIX):
        parsed = _parse_comment(str(rule.get("comment", "")))
        if parsed is not None:
            key = str(rule["chain"])[len(SERVICE_CHAIN_PREFIX):]
            sid, port = parsed
            if key == service_key(sid):
                ports.setdefault(key, (sid, []))[1].append(port)
    return {sid: (service_ports, backends.get(key, []))
            for key, (sid, service_ports) in ports.items()}


def parse_vips(objects: Iterable[dict[str, Any]]) -> dict[str, VipState]:
    """VIPs as found in ``nft -j list table`` objects, by address."""
    objects = list(objects)
    backends = _backend_maps(objects, VIP_BACKEND_MAP_PREFIX)
    found: dict[str, VipState] = {}
    for rule in _rules(objects, VIP_CHAIN_PREFIX):
        parts = str(rule.get("comment", "")).split()
        if len(parts) != 4 or parts[0] != "vip":
            continue
        vip = VirtualIP(addr=parts[3], service_id=parts[1], network_id=parts[2])
        key = str(rule["chain"])[len(VIP_CHAIN_PREFIX):]
        if key == vip_key(vip.addr):
            found[vip.addr] = (vip, backends.get(key, []))
    return found


def parse_overlays(objects: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The SNAT map: overlay subnet -> this node's address on it."""
    for obj in objects:
        m = obj.get("map")
        if m and m.get("name") == SNAT_MAP:
            return dict(_overlay_element(e) for e in m.get("elem", []))
    return {}


def _overlay_element(element: Any) -> tuple[str, str]:
    # [{"prefix": {"addr": "10.255.0.0", "len": 24}}, "10.255.0.2"]; a /32: ["10.1.2.3", ...]
    key, addr = element
    if isinstance(key, dict) and "prefix" in key:
        subnet = f"{key['prefix']['addr']}/{key['prefix']['len']}"
    elif isinstance(key, dict) and "range" in key:
        low, high = key["range"]
        subnet = str(next(ipaddress.summarize_address_range(
            ipaddress.IPv4Address(low), ipaddress.IPv4Address(high))))
    else:
        subnet = f"{key}/32"
    return subnet, str(addr)


def _rules(objects: Iterable[dict[str, Any]], prefix: str) -> Iterable[dict[str, Any]]:
    for obj in objects:
        rule = obj.get("rule")
        if rule and str(rule.get("chain", "")).startswith(prefix):
            yield rule


def _backend_maps(objects: Iterable[dict[str, Any]], prefix: str) -> dict[str, list[Backend]]:
    found: dict[str, list[Backend]] = {}
    for obj in objects:
        m = obj.get("map")
        if m and str(m.get("name", "")).startswith(prefix):
            members = sorted((_parse_backend(e) for e in m.get("elem", [])), key=lambda ib: ib[0])
            found[str(m["name"])[len(prefix):]] = [b for _, b in members]
    return found


def _parse_comment(comment: str) -> tuple[str, ServicePort] | None:
    parts = comment.split()
    if len(parts) != 4 or parts[1] not in PROTOCOLS or not (parts[2] + parts[3]).isdigit():
        return None
    return parts[0], ServicePort(parts[1], int(parts[2]), int(parts[3]))


def _parse_backend(element: Any) -> tuple[int, Backend]:
    # [{"elem": {"val": 0, "comment": "task"}}, "10.213.0.2"]
    key, ip = element
    inner = key.get("elem", {}) if isinstance(key, dict) else {"val": key}
    return int(inner["val"]), Backend(ip=str(ip), task_id=str(inner.get("comment", "")))


def _quote(text: str) -> str:
    return '"' + text.replace('"', "") + '"'
