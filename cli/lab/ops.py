"""What is done to a running lab: list it, run commands in a node, and inject faults.

A node's state is read from the kernel where it can be (is its daemon alive, is its cable
cut), and from the lab's record for what the kernel cannot tell (a dead daemon was killed
by `lab kill`, stopped by `lab stop`, or died by itself: "exited").
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import links, nodes, procs, state
from .layout import NodeLayout


@dataclass(frozen=True)
class NodeView:
    name: str
    address: str
    role: str
    pid: int
    state: str  # running | partitioned | killed | stopped | exited
    netns: str
    env: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.name, "address": self.address, "role": self.role,
                "pid": self.pid, "state": self.state, "netns": self.netns, "env": self.env}


def view(lab: state.Lab, node: state.Node) -> NodeView:
    n = node.layout(lab.name)
    pid = nodes.daemon_pid(n)
    if pid:
        current = "partitioned" if links.is_partitioned(n) else "running"
    else:
        current = node.state if node.state in (state.KILLED, state.STOPPED) else "exited"
    return NodeView(n.name, n.address, node.role, pid, current, n.netns, n.env())


def listing(lab: state.Lab) -> list[NodeView]:
    return [view(lab, node) for node in lab.nodes]


def env_lines(n: NodeLayout) -> list[str]:
    """Shell lines that point the host's CLI at node ``n`` (eval "$(pyswarm lab env)")."""
    return [f"export {k}={shlex.quote(v)}" for k, v in n.env().items()]


def kill(lab: state.Lab, node: state.Node, say: Callable[[str], None] = print) -> None:
    n = node.layout(lab.name)
    count = nodes.kill(n, nodes.daemon_pid(n) or node.pid)
    # A crashed machine keeps no cgroups: the container groups go (the node's parent stays).
    procs.remove_cgroups(n.cgroup_parent, keep_top=True)
    node.pid, node.state = 0, state.KILLED
    lab.save()
    say(f"{n.name}: killed ({count} processes)" if count else
        f"{n.name}: nothing was running; marked killed")


def stop(lab: state.Lab, node: state.Node, grace: float,
         say: Callable[[str], None] = print) -> None:
    n = node.layout(lab.name)
    nodes.stop(n, nodes.daemon_pid(n), grace)
    node.pid, node.state = 0, state.STOPPED
    lab.save()
    say(f"{n.name}: stopped")


def start(lab: state.Lab, node: state.Node, say: Callable[[str], None] = print) -> None:
    n = node.layout(lab.name)
    if pid := nodes.daemon_pid(n):
        raise RuntimeError(f"{n.name} is already running (daemon pid {pid})")
    if not n.netns_path.exists():
        raise RuntimeError(f"{n.name} has no network namespace ({n.netns}): the lab is "
                           f"damaged; `pyswarm lab down --name {lab.name}` and up again")
    node.pid = nodes.start_daemon(n)
    node.state = state.RUNNING
    lab.save()
    say(f"{n.name}: daemon running (pid {node.pid})")


def partition(lab: state.Lab, node: state.Node, cut: bool,
              say: Callable[[str], None] = print) -> None:
    n = node.layout(lab.name)
    if links.is_partitioned(n) == cut:
        say(f"{n.name}: already {'partitioned' if cut else 'connected'}")
        return
    links.set_partitioned(n, cut)
    say(f"{n.name}: {'partitioned (its link is down)' if cut else 'healed (its link is up)'}")
