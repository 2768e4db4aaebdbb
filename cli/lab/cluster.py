"""Forming the lab's cluster with the same commands a user types on real machines.

node1 runs ``pyswarm init --advertise-addr A1 --listen-addr A1:2377`` (with ``--store
etcd://A1:2379,...`` in a --store etcd lab); its join tokens come from ``pyswarm join-token
-q worker|manager``; every other node runs ``pyswarm join --token T --advertise-addr AK
A1:2377`` with the token of its role (nodes 2..M the manager token), all over the lab
network, inside each node: a partitioned node loses its manager as a machine would (mutual
TLS over TCP, no shortcut through the manager's Unix socket).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from . import nodes
from .layout import NodeLayout

MANAGER_PORT = 2377


class JoinError(RuntimeError):
    pass


def _pyswarm(node: NodeLayout, *args: str) -> str:
    out = nodes.pyswarm(node, *args)
    if out.returncode != 0:
        raise JoinError(f"{node.name}: pyswarm {' '.join(args)} failed: "
                        f"{(out.stderr or out.stdout).strip()}")
    return out.stdout


def init(manager: NodeLayout, store: str = "") -> None:
    """``store``: the --store URL (etcd://A1:2379,... in a --store etcd lab), or the
    default (sqlite on the manager)."""
    _pyswarm(manager, "init", *(["--store", store] if store else []),
             "--advertise-addr", manager.address,
             "--listen-addr", f"{manager.address}:{MANAGER_PORT}")


def join_token(manager: NodeLayout, role: str) -> str:
    return _pyswarm(manager, "join-token", "-q", role).strip()


def join(node: NodeLayout, manager: NodeLayout, token: str) -> None:
    _pyswarm(node, "join", "--token", token, "--advertise-addr", node.address,
             f"{manager.address}:{MANAGER_PORT}")


def node_list(manager: NodeLayout) -> list[dict[str, object]]:
    out = nodes.pyswarm(manager, "node", "ls", "--format", "json", timeout=30)
    if out.returncode != 0:
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wait_ready(manager: NodeLayout, names: list[str], timeout: float = 60.0,
               progress: Callable[[str], None] = print) -> None:
    """Wait until every named node is READY in the manager's `node ls`."""
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        ready = {str(n["hostname"]) for n in node_list(manager) if n.get("status") == "ready"}
        if set(names) <= ready:
            return
        time.sleep(0.3)
    missing = sorted(set(names) - ready)
    raise JoinError(f"nodes not ready after {timeout:.0f}s: {', '.join(missing)} "
                    f"(see their daemon.log)")
