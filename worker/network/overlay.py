"""Overlay networks on this node: one Linux bridge and one VXLAN device per network.

::

      container A (this node)                        container B (a peer node)
        eth1 10.214.1.3/24 mtu 1450                    eth1 10.214.1.4/24
          │ veth                                          │ veth
      ov<h>b<vni>  bridge, 10.214.1.2/24 (this node's     ov<h>b<vni>
          │        address on the network), mtu 1450      │
      ov<h>x<vni>  vxlan id <vni>, udp 4789, local =      ov<h>x<vni>
          │        this node's underlay address           │
          └──────────── UDP 4789 over the underlay ───────┘

Forwarding is flood-and-learn with head-end replication: the VXLAN device has one all-zero
FDB entry per peer, so broadcasts (ARP) and unknown unicast go to every peer, and the kernel
learns which peer holds each MAC from the packets it receives. It needs nothing but the peer
list, which changes far less often than tasks do; static per-MAC entries (and proxy ARP, as
Docker does) would save the first flood of each flow, an optimisation for later. When a peer
goes, its all-zero entry and every entry learned from it are deleted, so nothing is sent to
it any more (a learned entry would otherwise keep unicast flowing for its 300 s ageing time).
Learning would also let a removed node back in as soon as it sent a packet, so the node's
nftables table gets an ``overlay_input`` chain that drops VXLAN packets of each network's
VNI from any address that is not a peer: only the cluster's nodes can reach its overlays.
An ``overlay_forward`` chain keeps networks apart on the node (see ``filter_script``).

Names: ``ov`` + 5 hex digits of a hash of the engine's node bridge name + ``b``/``x`` + the
VNI in hex (at most 14 characters). Two engines in one network namespace (tests, a lab) have
different node bridges, so they never touch each other's overlays; everything carrying this
engine's prefix and absent from the state is stale and removed by ``apply``. The bridge's
alias (``ip link`` shows it) names the engine and the network id.

The node's own address on each network (``node_attachments``) is on the bridge: it gives the
host a route into the overlay, which the load balancer uses to reach tasks of other nodes.
Bridges get a fixed MAC from that address, as the node bridge does (a bridge otherwise takes
the lowest MAC of its ports and changes it as containers come and go).

``apply`` is idempotent and level-triggered: it compares the kernel with the state and fixes
every difference, so a failed step is retried by the next state. The state is checked whole
before anything is touched: a malformed one changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyswarm.common.errors import InvalidArgument, NotFound, RuntimeFailure
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.worker.network import firewall
from pyswarm.worker.network.links import delete_link, mac_for
from pyswarm.worker.network.nft import Nft

INPUT_CHAIN = "overlay_input"
FORWARD_CHAIN = "overlay_forward"
VXLAN_PORT = 4789  # IANA's; Docker Swarm's and Linux's default
MTU = 1450  # 1500 of the underlay less VXLAN's 50 bytes of outer headers
MAX_VNI = (1 << 24) - 1
ZERO_MAC = "00:00:00:00:00:00"

# Runs a function with the host's netlink socket on the node's netns thread (node.py).
NetlinkRunner = Callable[..., Any]


@dataclass(frozen=True)
class OverlaySpec:
    """One overlay network as this node needs it."""

    network_id: str
    name: str  # the network's name, for messages
    vni: int
    subnet: ipaddress.IPv4Network
    address: ipaddress.IPv4Interface | None  # this node's own address on it, if any


@dataclass(frozen=True)
class OverlayPlan:
    """Everything ``apply`` programs: the networks, the peers and the local tunnel address."""

    networks: tuple[OverlaySpec, ...]
    peers: frozenset[str]  # underlay IPv4 addresses of the other nodes
    local: str  # this node's underlay address; "" lets the kernel pick by route


def plan_from_state(state: cpb.NetworkState, local_addr: str = "") -> OverlayPlan:
    """Check a NetworkState and extract the overlay part; InvalidArgument names the field."""
    local = _ipv4(local_addr, "local address") if local_addr else ""
    peers: set[str] = set()
    for i, peer in enumerate(state.peers):
        if not peer.addr:
            continue  # registered, never in session yet: no tunnel endpoint to add
        addr = _ipv4(_host_part(peer.addr), f"peers[{i}].addr ({peer.node_id or '?'})")
        if addr != local:
            peers.add(addr)
    attachments: dict[str, ipaddress.IPv4Interface] = {}
    for i, att in enumerate(state.node_attachments):
        if att.addresses:
            attachments[att.network_id] = _interface(
                att.addresses[0], f"node_attachments[{i}].addresses[0]")
    specs: list[OverlaySpec] = []
    seen_vni: dict[int, str] = {}
    for i, net in enumerate(state.networks):
        where = f"networks[{i}] ({net.spec.name or net.id or '?'})"
        if not net.id:
            raise InvalidArgument(f"{where}.id: empty")
        if not 1 <= net.vni <= MAX_VNI:
            raise InvalidArgument(f"{where}.vni: {net.vni} is not in 1-{MAX_VNI}")
        if net.vni in seen_vni:
            raise InvalidArgument(f"{where}.vni: {net.vni} is also network {seen_vni[net.vni]}")
        seen_vni[net.vni] = net.id
        try:
            subnet = ipaddress.IPv4Network(net.subnet, strict=True)
        except ValueError as e:
            raise InvalidArgument(f"{where}.subnet: {net.subnet!r}: {e}") from None
        address = attachments.get(net.id)
        if address is not None and address.ip not in subnet:
            raise InvalidArgument(
                f"node_attachments for {where}: {address} is not in the subnet {subnet}")
        specs.append(OverlaySpec(net.id, net.spec.name or net.id, net.vni, subnet, address))
    return OverlayPlan(tuple(specs), frozenset(peers), local)


def link_prefix(node_bridge: str) -> str:
    """``ov`` + 5 hex digits: this engine's overlay links, unique per node bridge name."""
    return "ov" + hashlib.sha256(node_bridge.encode()).hexdigest()[:5]


class OverlayNetworks:
    """The overlays of one engine. Thread-safe; netlink work runs through ``run``."""

    def __init__(self, node_bridge: str, run: NetlinkRunner,
                 lock: threading.RLock | None = None, nft: Nft | None = None,
                 nft_table: str = "") -> None:
        self.node_bridge = node_bridge
        self.prefix = link_prefix(node_bridge)
        self._run = run
        self._nft = nft
        self._table = nft_table
        self._filter = ""  # the overlay_input script last applied
        # The node network's lock when given: one lock order for attach and apply.
        self._lock = lock or threading.RLock()
        # Replaced whole, never changed in place: readers need no lock.
        self._applied: dict[str, OverlaySpec] = {}
        self._firewalled: set[str] = set()
        # The last plan applied without an error, and the peers then programmed on each
        # VXLAN device (vni -> (link index, peers)): an unchanged plan costs nothing, and a
        # changed peer list costs its changes, not a dump of every FDB entry (a thousand
        # peers, at every node joining a large cluster).
        self._plan: OverlayPlan | None = None
        self._peers: dict[int, tuple[int, frozenset[str]]] = {}

    def bridge_name(self, vni: int) -> str:
        return f"{self.prefix}b{vni:x}"

    def vxlan_name(self, vni: int) -> str:
        return f"{self.prefix}x{vni:x}"

    # ---- queries -------------------------------------------------------------------------

    def networks(self) -> dict[str, OverlaySpec]:
        """The networks applied by the last ``apply`` (network id -> spec)."""
        return dict(self._applied)

    def bridge_for(self, network_id: str) -> tuple[str, OverlaySpec]:
        """The bridge of a network on this node, or NotFound."""
        spec = self.networks().get(network_id)
        if spec is None:
            raise NotFound(f"network {network_id} is not on this node (no overlay for it yet)")
        return self.bridge_name(spec.vni), spec

    # ---- changes -------------------------------------------------------------------------

    def apply(self, state: cpb.NetworkState, local_addr: str = "") -> None:
        """Make the kernel match the state: overlays and peers added, changed, removed."""
        plan = plan_from_state(state, local_addr)  # raises before anything changes
        with self._lock:
            if plan == self._plan:
                return
            self._plan = None
            # The peer filter first: a removed peer's packets are dropped before its FDB
            # entries go, or the VXLAN device would learn them back from its next packet.
            errors: list[str] = []
            try:
                self._sync_filter(plan)
            except RuntimeFailure as e:
                errors.append(f"peer filter: {e}")
            kernel_errors, present = self._run(_apply_kernel, self, plan)
            errors += kernel_errors
            self._applied = {s.network_id: s for s in plan.networks
                             if self.bridge_name(s.vni) in present}
            self._sync_firewall(present)
        if errors:
            self._peers.clear()  # the next apply checks every entry again
            raise RuntimeFailure("overlay networks: " + "; ".join(errors))
        self._plan = plan

    def teardown(self) -> None:
        """Remove every overlay link of this engine and its firewall rules."""
        with self._lock:
            removed = self._run(_remove_links, self.prefix, set())
            for name in removed | self._firewalled:
                if name.startswith(self.prefix + "b"):
                    firewall.remove(name)
            firewall.remove_prefixed(self.prefix + "b")  # a previous daemon's too
            self._firewalled.clear()
            self._applied = {}
            self._plan = None
            self._peers.clear()
            if self._nft is not None and self._filter:
                with contextlib.suppress(RuntimeFailure):  # the table may be gone already
                    self._nft.run(f"delete chain ip {self._table} {INPUT_CHAIN}\n"
                                  f"delete chain ip {self._table} {FORWARD_CHAIN}")
            self._filter = ""

    def _sync_filter(self, plan: OverlayPlan) -> None:
        """Drop VXLAN packets of our VNIs from addresses that are not peers."""
        if self._nft is None:
            return
        script = filter_script(self._table, self.prefix, plan, self.bridge_name)
        if script != self._filter:
            self._nft.run(script)
            self._filter = script

    def _sync_firewall(self, present: set[str]) -> None:
        """FORWARD accepts (firewall.py) for each overlay bridge, as for the node bridge."""
        bridges = {n for n in present if n.startswith(self.prefix + "b")}
        for name in sorted(bridges - self._firewalled):
            firewall.install(name)
        for name in sorted(self._firewalled - bridges):
            firewall.remove(name)
        self._firewalled = bridges


def filter_script(table: str, prefix: str, plan: OverlayPlan,
                  bridge_name: Callable[[int], str]) -> str:
    """The ``overlay_input`` and ``overlay_forward`` chains for a plan, as one nft
    transaction (each replaced whole).

    Input: the VNI is matched in the VXLAN header (24 bits, 96 bits into the UDP header), so
    two engines sharing a namespace each filter only their own networks' packets.

    Forward: an overlay is reached by its own members, not routed into from elsewhere (the
    node bridge, the underlay, another overlay): networks are isolated from each other, as
    in Docker. What may enter an overlay bridge by routing is the load balancer's traffic
    (DNAT'ed to a task's overlay address) and replies. Bridged traffic between a network's
    own ports crosses this hook too where br_netfilter is loaded, with the bridge as both
    input and output: accepted. Host processes (output, not forward) are not concerned.
    """
    t = f"ip {table}"
    ours = f'"{prefix}b*"'
    lines = [f"add table {t}"]
    for chain, hook in ((INPUT_CHAIN, "input"), (FORWARD_CHAIN, "forward")):
        lines += [f"add chain {t} {chain} {{ type filter hook {hook} priority -1; "
                  f"policy accept; }}", f"flush chain {t} {chain}"]
    peers = ", ".join(sorted(plan.peers, key=lambda ip: ipaddress.IPv4Address(ip)))
    for spec in plan.networks:
        match = f"udp dport {VXLAN_PORT} @th,96,24 {spec.vni}"
        lines.append(f"add rule {t} {INPUT_CHAIN} {match} ip saddr != {{ {peers} }} drop"
                     if peers else f"add rule {t} {INPUT_CHAIN} {match} drop")
    lines += [f"add rule {t} {FORWARD_CHAIN} oifname {ours} ct status dnat accept",
              f"add rule {t} {FORWARD_CHAIN} oifname {ours} ct state established,related "
              f"accept"]
    for spec in plan.networks:
        bridge = bridge_name(spec.vni)
        lines.append(f'add rule {t} {FORWARD_CHAIN} iifname "{bridge}" oifname "{bridge}" '
                     f"accept")
    lines.append(f"add rule {t} {FORWARD_CHAIN} oifname {ours} drop")
    return "\n".join(lines)


# ---- kernel work, on the netns thread ------------------------------------------------------


def _apply_kernel(
    ipr: IPRoute, nets: OverlayNetworks, plan: OverlayPlan
) -> tuple[list[str], set[str]]:
    """Program the plan; returns the errors and the names of our links that now exist."""
    errors: list[str] = []
    wanted: set[str] = set()
    for spec in plan.networks:
        bridge, vxlan = nets.bridge_name(spec.vni), nets.vxlan_name(spec.vni)
        wanted |= {bridge, vxlan}
        try:
            alias = f"pyswarm {nets.node_bridge} {spec.network_id}"
            index = _ensure_bridge(ipr, bridge, spec, alias)
            vx = _ensure_vxlan(ipr, vxlan, spec.vni, plan.local, index)
            known = nets._peers.pop(spec.vni, None)
            _sync_peers(ipr, vx, plan.peers, known[1] if known and known[0] == vx else None)
            nets._peers[spec.vni] = (vx, plan.peers)
        except (NetlinkError, OSError, RuntimeFailure) as e:
            errors.append(f"network {spec.name} (vni {spec.vni}): {e}")
    _remove_links(ipr, nets.prefix, wanted)
    return errors, set(_our_links(ipr, nets.prefix))


def _our_links(ipr: IPRoute, prefix: str) -> dict[str, Any]:
    return {
        str(link.get_attr("IFLA_IFNAME")): link
        for link in ipr.get_links()
        if str(link.get_attr("IFLA_IFNAME") or "").startswith(prefix)
    }


def _remove_links(ipr: IPRoute, prefix: str, keep: set[str]) -> set[str]:
    """Delete our links not in ``keep`` (VXLAN devices before bridges); their names."""
    stale = sorted(set(_our_links(ipr, prefix)) - keep, key=lambda n: n[len(prefix)] != "x")
    for name in stale:
        delete_link(ipr, name)
    return set(stale)


def _kind(link: Any) -> str:
    return str(link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")


def _ensure_bridge(ipr: IPRoute, name: str, spec: OverlaySpec, alias: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if found and _kind(ipr.link("get", index=found[0])[0]) != "bridge":
        delete_link(ipr, name)
        found = []
    mac = mac_for(str(spec.address.ip)) if spec.address else _vni_mac(spec.vni)
    if not found:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=MTU, address=mac, ifalias=alias)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        found = ipr.link_lookup(ifname=name)
    index = int(found[0])
    link = ipr.link("get", index=index)[0]
    if link.get_attr("IFLA_MTU") != MTU or link.get_attr("IFLA_ADDRESS") != mac:
        ipr.link("set", index=index, mtu=MTU, address=mac)
    want = {(str(spec.address.ip), spec.address.network.prefixlen)} if spec.address else set()
    have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(index=index, family=2)}
    for address, prefixlen in have - want:
        ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    for address, prefixlen in want - have:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    ipr.link("set", index=index, state="up")
    return index


def _ensure_vxlan(ipr: IPRoute, name: str, vni: int, local: str, bridge_index: int) -> int:
    found = ipr.link_lookup(ifname=name)
    if found:
        link = ipr.link("get", index=found[0])[0]
        data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        current = (
            _kind(link),
            data.get_attr("IFLA_VXLAN_ID") if data else None,
            data.get_attr("IFLA_VXLAN_PORT") if data else None,
            (data.get_attr("IFLA_VXLAN_LOCAL") or "") if data else None,
        )
        if current != ("vxlan", vni, VXLAN_PORT, local):
            delete_link(ipr, name)  # the tunnel's identity changed: make it anew
            found = []
    if not found:
        options: dict[str, Any] = dict(
            ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=VXLAN_PORT,
            vxlan_learning=1, mtu=MTU, master=bridge_index,
        )
        if local:
            options["vxlan_local"] = local
        try:
            ipr.link("add", **options)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise RuntimeFailure(
                    f"cannot create VXLAN {vni}: another device of this network namespace "
                    f"already uses VNI {vni} on UDP port {VXLAN_PORT}") from None
            raise
        found = ipr.link_lookup(ifname=name)
    index = int(found[0])
    link = ipr.link("get", index=index)[0]
    if link.get_attr("IFLA_MASTER") != bridge_index or link.get_attr("IFLA_MTU") != MTU:
        ipr.link("set", index=index, master=bridge_index, mtu=MTU)
    ipr.link("set", index=index, state="up")
    return index


def _sync_peers(ipr: IPRoute, vxlan_index: int, peers: frozenset[str],
                known: frozenset[str] | None = None) -> None:
    """One all-zero entry per peer; entries towards anything else (learned too) deleted.

    With `known` (the peers this device was last programmed with, by this process) and no
    peer removed, only the new peers are programmed: nodes joining a large cluster cost
    their own entries, not a dump of every entry. A removed peer takes the full check, so
    that the entries learned towards it go too (it must not stay reachable)."""
    if known is not None and known <= peers:
        for dst in sorted(peers - known):
            ipr.fdb("append", ifindex=vxlan_index, lladdr=ZERO_MAC, dst=dst)
        return
    flood: set[str] = set()
    for entry in ipr.fdb("dump", ifindex=vxlan_index):
        dst = entry.get_attr("NDA_DST")
        if dst is None or entry["ifindex"] != vxlan_index:
            continue  # the bridge's own entries for this port carry no tunnel address
        mac = entry.get_attr("NDA_LLADDR")
        if dst in peers and mac == ZERO_MAC:
            flood.add(dst)
        elif dst not in peers:
            _fdb_del(ipr, vxlan_index, mac, dst)
    for dst in sorted(peers - flood):
        ipr.fdb("append", ifindex=vxlan_index, lladdr=ZERO_MAC, dst=dst)


def _fdb_del(ipr: IPRoute, index: int, mac: str, dst: str) -> None:
    try:
        ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
    except NetlinkError as e:
        if e.code != errno.ENOENT:  # aged out meanwhile
            raise


def _vni_mac(vni: int) -> str:
    """A fixed, locally administered MAC for a bridge without an address of its own."""
    return "02:43:00:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big"))


def _host_part(addr: str) -> str:
    """Peers' addresses are IPs; tolerate ``IP:PORT`` (the port is not the tunnel's)."""
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidArgument(f"{what}: {text!r} is not an IPv4 address") from None


def _interface(text: str, what: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise InvalidArgument(f"{what}: {text!r} is not an IPv4 address with a prefix") from None
    if "/" not in text:
        raise InvalidArgument(f"{what}: {text!r} has no prefix length (CIDR expected)")
    return iface
