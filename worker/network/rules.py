"""The node's nftables ruleset, as text; and reading published ports back from it.

Pure functions: they build nft scripts and parse ``nft -j`` objects; ``node.py`` applies them.

One table (``ip <cfg.nft_table>``) owns every rule of one engine:

- ``ports`` (regular chain): one DNAT rule per published port, commented
  ``"<container id> <proto> <host ip|*> <host port> <container port>"``. The comment is the
  record: ``published()`` is read back from the kernel, so it survives a daemon restart, and a
  container's rules are deleted by handle.
- ``prerouting`` / ``output`` (nat, dstnat): jump to ``ports`` for packets addressed to this
  node (``fib daddr type local``): from outside and from containers (prerouting), and from
  the host's own processes to 127.0.0.1, the gateway or any node address (output).
- ``postrouting`` (nat, srcnat): masquerade
  1. containers' traffic leaving by anything but the bridge (egress NAT);
  2. loopback-sourced traffic DNAT'ed onto the bridge: a container cannot answer 127.0.0.1,
     so it must see the gateway as the source;
  3. hairpin: a container reaching a published port of the node that lands on a container
     of the same bridge; without it the answer would go straight back over the bridge,
     from an address the client never sent to.
- ``forward`` (filter, just before iptables' filter): accept what enters or leaves by the
  bridge. (A drop policy elsewhere, e.g. Docker's FORWARD, still applies: see firewall.py.)

``setup`` re-creates every chain but ``ports`` each time, so it is idempotent and published
ports outlive a daemon restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyswarm.worker.network.ports import PortBinding

PORTS_CHAIN = "ports"

_BASE_CHAINS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    # 1.0.6 knows the name dstnat only for prerouting: -100 is its value.
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    # -1: just before iptables' filter (0)
    "forward": "type filter hook forward priority -1; policy accept;",
}


def base_script(table: str, bridge: str, subnet: str) -> str:
    t = f"ip {table}"
    br = _quote(bridge)
    lines = [f"add table {t}", f"add chain {t} {PORTS_CHAIN}"]
    for chain, spec in _BASE_CHAINS.items():
        lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
    lines += [
        f"add rule {t} prerouting fib daddr type local jump {PORTS_CHAIN}",
        f"add rule {t} output fib daddr type local jump {PORTS_CHAIN}",
        f"add rule {t} postrouting ip saddr {subnet} oifname != {br} masquerade"
        ' comment "egress"',
        f"add rule {t} postrouting oifname {br} ip saddr 127.0.0.0/8 masquerade"
        ' comment "loopback to container"',
        f"add rule {t} postrouting oifname {br} ip saddr {subnet} ct status dnat masquerade"
        ' comment "hairpin"',
        f"add rule {t} forward iifname {br} accept",
        f"add rule {t} forward oifname {br} accept",
    ]
    return "\n".join(lines) + "\n"


def delete_table_script(table: str) -> str:
    # ``add`` first makes the delete succeed whether or not the table exists.
    return f"add table ip {table}\ndelete table ip {table}\n"


def port_rule(table: str, container_id: str, ip: str, b: PortBinding) -> str:
    match = f"ip daddr {b.host_ip} " if b.host_ip else ""
    return (
        f"add rule ip {table} {PORTS_CHAIN} {match}{b.proto} dport {b.host_port}"
        f" dnat to {ip}:{b.container_port} comment {_quote(comment_of(container_id, b))}"
    )


def delete_rules_script(table: str, handles: Iterable[int]) -> str:
    return "".join(f"delete rule ip {table} {PORTS_CHAIN} handle {h}\n" for h in handles)


def comment_of(container_id: str, b: PortBinding) -> str:
    return f"{container_id} {b.proto} {b.host_ip or '*'} {b.host_port} {b.container_port}"


@dataclass(frozen=True)
class PortRule:
    """A published port as found in the kernel."""

    handle: int
    container_id: str
    binding: PortBinding


def parse_port_rules(objects: Iterable[dict[str, Any]]) -> list[PortRule]:
    """Our rules of the ``ports`` chain, from ``nft -j -a list chain``; others are ignored."""
    found = []
    for obj in objects:
        rule = obj.get("rule")
        if not rule or rule.get("chain") != PORTS_CHAIN:
            continue
        parsed = _parse_comment(str(rule.get("comment", "")))
        if parsed is not None:
            found.append(PortRule(int(rule["handle"]), *parsed))
    return found


def _parse_comment(comment: str) -> tuple[str, PortBinding] | None:
    parts = comment.split()
    if len(parts) != 5 or not parts[3].isdigit() or not parts[4].isdigit():
        return None
    container_id, proto, host_ip, host_port, container_port = parts
    return container_id, PortBinding(
        container_port=int(container_port),
        host_port=int(host_port),
        proto=proto,
        host_ip="" if host_ip == "*" else host_ip,
    )


def _quote(text: str) -> str:
    return '"' + text.replace('"', "") + '"'
