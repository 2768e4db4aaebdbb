"""Test hosts for network tests: a "client" namespace wired to the host by a veth pair."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=10)


@contextlib.contextmanager
def client_namespace(name: str, veth: str, host_side: str, client_side: str) -> Iterator[str]:
    """A namespace `name` whose eth0 (client_side/30) faces the host's `veth` (host_side);
    yields its netns path and removes both afterwards."""
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "link", "del", veth, check=False)
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"{host_side}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        for cmd in (["addr", "add", f"{client_side}/30", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
            sh("ip", "-n", name, *cmd)
        yield f"/run/netns/{name}"
    finally:
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", name, check=False)
