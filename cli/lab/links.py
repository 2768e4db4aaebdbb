"""The lab's wiring, done with iproute2: the bridge, a namespace and a veth per node.

iproute2 rather than pyroute2: these are a handful of one-off changes made by a CLI command,
exactly what ``ip`` is for, and a user can replay or inspect each of them by hand
(``ip -n pslab-NAME-node1 addr``). Every function is idempotent in the direction it goes
(removing what is absent, or creating what exists, is not an error where that is safe).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Sequence

from .layout import NodeLayout


class LinkError(RuntimeError):
    pass


def ip(*args: str, netns: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise LinkError(f"{' '.join(cmd)}: {out.stderr.strip() or f'exit {out.returncode}'}")
    return out


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return name in (line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line)


def host_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, network) of every IPv4 address and route in the host namespace."""
    found: list[tuple[str, ipaddress.IPv4Network]] = []
    for entry in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for a in entry.get("addr_info", []):
            net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
            found.append((entry["ifname"], net))  # type: ignore[arg-type]
    for route in json.loads(ip("-j", "-4", "route", "show").stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            found.append((route.get("dev", "?"), net))  # type: ignore[arg-type]
    return found


def add_bridge(name: str, address: str, prefix: int) -> None:
    ip("link", "add", "name", name, "type", "bridge")
    ip("addr", "add", f"{address}/{prefix}", "dev", name)
    ip("link", "set", name, "up")


def add_node(node: NodeLayout, bridge: str, prefix: int, gateway: str) -> None:
    """The node's namespace, its eth0 at its address, lo up, default route via the host."""
    ip("netns", "add", node.netns)
    ip("link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
    ip("link", "set", node.veth, "master", bridge, "up")
    ip("addr", "add", f"{node.address}/{prefix}", "dev", "eth0", netns=node.netns)
    ip("link", "set", "lo", "up", netns=node.netns)
    ip("link", "set", "eth0", "up", netns=node.netns)
    ip("route", "add", "default", "via", gateway, netns=node.netns)


def remove_node(node: NodeLayout) -> None:
    if link_exists(node.veth):
        ip("link", "del", node.veth, check=False)
    if netns_exists(node.netns):
        ip("netns", "del", node.netns)
    # A namespace file left by a `netns del` that lost a race with its last process.
    node.netns_path.unlink(missing_ok=True)


def remove_bridge(name: str) -> None:
    if link_exists(name):
        ip("link", "del", name)


def set_partitioned(node: NodeLayout, partitioned: bool) -> None:
    """Cut (or restore) the node's cable: its veth's host end down (up). The node itself,
    its daemon and containers, keep running and see their link go down like a pulled plug."""
    ip("link", "set", node.veth, "down" if partitioned else "up")
    if not partitioned:  # healed once frames pass again, not merely once asked
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = ip("-j", "link", "show", "dev", node.veth, check=False)
            info = json.loads(out.stdout or "[]") if out.returncode == 0 else []
            if info and info[0].get("operstate") == "UP":
                return
            time.sleep(0.02)


def is_partitioned(node: NodeLayout) -> bool:
    out = ip("-j", "link", "show", "dev", node.veth, check=False)
    if out.returncode != 0:
        return False
    info = json.loads(out.stdout or "[]")
    return bool(info) and "UP" not in info[0].get("flags", [])


# ---- bridged traffic and a host firewall that drops forwarding -----------------------
# Where Docker runs, iptables' FORWARD policy is DROP and br_netfilter hands bridged frames
# to it, so the nodes could not reach each other through the bridge: add an accept rule for
# the lab bridge (and remove it with the lab). Nothing is added where forwarding is allowed.


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def _forward_rule(bridge: str) -> Sequence[str]:
    return ("FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")


def allow_forwarding(bridge: str) -> bool:
    """Add the accept rule if the FORWARD policy drops; True when one was added."""
    if shutil.which("iptables") is None:
        return False
    policy = _iptables("-S", "FORWARD")
    if policy.returncode != 0 or "-P FORWARD ACCEPT" in policy.stdout:
        return False
    out = _iptables("-I", *_forward_rule(bridge))
    if out.returncode != 0:
        raise LinkError(f"cannot let the lab bridge forward (iptables): {out.stderr.strip()}")
    return True


def remove_forwarding(bridge: str) -> None:
    """Remove the bridge's accept rules, if any (a listing first: touch nothing otherwise)."""
    if shutil.which("iptables") is None:
        return
    if f"-i {bridge} " not in _iptables("-S", "FORWARD").stdout:
        return
    while _iptables("-D", *_forward_rule(bridge)).returncode == 0:
        pass
