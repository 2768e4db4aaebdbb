"""A lab node as a machine: commands run inside it, its daemon started, killed or stopped.

"Inside" a node means in its network namespace with its PYSWARM_* environment, and nothing
else: ``nsenter --net`` enters only the network namespace. ``ip netns exec`` would also
unshare the mount namespace and remount /sys, hiding the cgroup hierarchies mounted under
it from the daemon (its containers would get no cgroups).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from . import procs
from .layout import NodeLayout

STOP_GRACE = 10.0  # seconds a container gets between SIGTERM and SIGKILL, as docker stop


def node_env(node: NodeLayout, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for k in [k for k in env if k.startswith("PYSWARM_")]:
        del env[k]  # the caller's own engine settings must not leak into the node
    env.update(node.env())
    # `pyswarm` inside the node is this installation's, even from a venv that is not on
    # PATH or under sudo's secure_path.
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath).split(os.pathsep)
    if os.path.exists(os.path.join(bindir, "pyswarm")) and bindir not in path:
        env["PATH"] = os.pathsep.join([bindir, *path])
    return env


def inside(node: NodeLayout, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={node.netns_path}", "--", *argv]


def run(node: NodeLayout, argv: Sequence[str], timeout: float | None = 120,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the node and wait for it."""
    return subprocess.run(inside(node, argv), env=node_env(node), capture_output=capture,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def pyswarm(node: NodeLayout, *args: str, timeout: float | None = 120,
            ) -> subprocess.CompletedProcess[str]:
    """The pyswarm CLI of this installation, run inside the node."""
    return run(node, [sys.executable, "-m", "pyswarm.cli.main", *args], timeout=timeout)


def exec_inside(node: NodeLayout, argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` inside the node (its exit code is the caller's)."""
    cmd = inside(node, argv)
    os.execvpe(cmd[0], cmd, node_env(node))


def daemon_pid(node: NodeLayout) -> int:
    """The node's live daemon's pid from its pid file, or 0."""
    try:
        pid = int(node.pid_file.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0
    return pid if pid and procs.alive(pid) and pid in procs.in_netns(node.netns_path) else 0


class DaemonError(RuntimeError):
    pass


def start_daemon(node: NodeLayout) -> int:
    """Start the node's daemon (``pyswarm daemon -d`` inside the node); its pid."""
    node.root.mkdir(parents=True, exist_ok=True)
    out = pyswarm(node, "daemon", "-d", timeout=90)
    pid = daemon_pid(node)
    if out.returncode != 0 or not pid:
        log = node.root / "daemon.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise DaemonError(f"{node.name}: the daemon did not start: "
                          f"{(out.stderr or out.stdout).strip()}\n{tail}".rstrip())
    return pid


def kill(node: NodeLayout, pid: int) -> int:
    """A crash: SIGKILL the daemon and every process of the node; how many there were."""
    return procs.kill_node(node, pid)


def stop(node: NodeLayout, pid: int, grace: float = STOP_GRACE,
         services: Sequence[int] = ()) -> None:
    """A clean shutdown of the machine, in systemd's order: the daemon is stopped first
    (SIGTERM, so it leaves the cluster's session cleanly), then the services it used
    (``services``: the node's etcd member), then every container gets SIGTERM and, after
    ``grace`` seconds, SIGKILL; then whatever is left."""
    for group in ([pid] if pid else [], list(services)):
        group = [p for p in group if procs.alive(p)]
        procs.signal_all(group, signal.SIGTERM)
        if left := procs.wait_gone(group, grace):
            procs.signal_all(left, signal.SIGKILL)
            procs.wait_gone(left, 5)
    containers = procs.in_cgroups(node.cgroup_parent) - procs.protected()
    procs.signal_all(containers, signal.SIGTERM)
    left = procs.wait_gone(containers, grace)
    procs.signal_all(left, signal.SIGKILL)
    procs.wait_gone(left, 5)
    # The shims record their containers' exits and end by themselves; what still runs in
    # the node's namespace now (a stray shim, a lab exec shell) goes the same way.
    rest = procs.node_processes(node)
    procs.signal_all(rest, signal.SIGTERM)
    procs.signal_all(procs.wait_gone(rest, 2), signal.SIGKILL)
    procs.kill_node(node)
