"""What is done to a running lab: list it, run commands in a node, and inject faults.

A node's state is read from the kernel where it can be (is its daemon alive, is its cable
cut), and from the lab's record for what the kernel cannot tell (a dead daemon was killed
by `lab kill`, stopped by `lab stop`, or died by itself: "exited"). An etcd member's
(``etcdK``, on manager nodeK of a --store etcd lab) is read the same way: it can be
killed, stopped and started alone, and goes with its node when the node does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import etcd, layout, links, nodes, procs, state
from .layout import NodeLayout


@dataclass(frozen=True)
class NodeView:
    """A row of `lab ls`: a node, or (role ``etcd``) the etcd member on a manager node."""

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


def _state(n: NodeLayout, pid: int, recorded: str) -> str:
    if pid:
        return "partitioned" if links.is_partitioned(n) else "running"
    return recorded if recorded in (state.KILLED, state.STOPPED) else "exited"


def view(lab: state.Lab, node: state.Node) -> NodeView:
    n = node.layout(lab.name)
    pid = nodes.daemon_pid(n)
    return NodeView(n.name, n.address, node.role, pid, _state(n, pid, node.state), n.netns,
                    n.env())


def member_view(lab: state.Lab, node: state.Node) -> NodeView:
    n = node.layout(lab.name)
    pid = etcd.member_pid(n, node.etcd_pid)
    return NodeView(n.member, n.address, "etcd", pid, _state(n, pid, node.etcd_state),
                    n.netns, {"ETCDCTL_ENDPOINTS": etcd.client_url(n)})


def listing(lab: state.Lab) -> list[NodeView]:
    """The nodes, then the etcd members (a lab with --store etcd)."""
    return ([view(lab, node) for node in lab.nodes]
            + [member_view(lab, node) for node in lab.members()])


def env_lines(n: NodeLayout) -> list[str]:
    """Shell lines that point the host's CLI at node ``n`` (eval "$(pyswarm lab env)")."""
    return [f"export {k}={shlex.quote(v)}" for k, v in n.env().items()]


# ---- faults: a target is a node (the whole machine) or one etcd member ------------------


def kill(lab: state.Lab, target: state.Target, say: Callable[[str], None] = print) -> None:
    node = target.node
    n = node.layout(lab.name)
    if target.etcd:
        was = etcd.kill(n, node.etcd_pid)
        node.etcd_pid, node.etcd_state = 0, state.KILLED
        lab.save()
        say(f"{n.member}: killed (the etcd member on {n.name})" if was else
            f"{n.member}: was not running; marked killed")
        return
    count = nodes.kill(n, nodes.daemon_pid(n) or node.pid)
    # A crashed machine keeps no cgroups: the container groups go (the node's parent stays).
    procs.remove_cgroups(n.cgroup_parent, keep_top=True)
    node.pid, node.state = 0, state.KILLED
    member = node in lab.members()
    if member:  # it ran in the node's namespace: killed with everything else there
        node.etcd_pid, node.etcd_state = 0, state.KILLED
    lab.save()
    also = f", its etcd member {n.member} among them" if member else ""
    say(f"{n.name}: killed ({count} processes{also})" if count else
        f"{n.name}: nothing was running; marked killed")


def stop(lab: state.Lab, target: state.Target, grace: float,
         say: Callable[[str], None] = print) -> None:
    node = target.node
    n = node.layout(lab.name)
    if target.etcd:
        was = etcd.stop(n, node.etcd_pid, grace)
        node.etcd_pid, node.etcd_state = 0, state.STOPPED
        lab.save()
        say(f"{n.member}: stopped" if was else f"{n.member}: was not running; marked stopped")
        return
    member = node in lab.members()
    services = [pid] if member and (pid := etcd.member_pid(n, node.etcd_pid)) else []
    nodes.stop(n, nodes.daemon_pid(n), grace, services)
    node.pid, node.state = 0, state.STOPPED
    if member:
        node.etcd_pid, node.etcd_state = 0, state.STOPPED
    lab.save()
    say(f"{n.name}: stopped" + (f" (daemon, then its etcd member {n.member})" if member else ""))


def start(lab: state.Lab, target: state.Target, say: Callable[[str], None] = print) -> None:
    """Start a node as a machine boots (its etcd member first, then its daemon), or only
    its etcd member."""
    node = target.node
    n = node.layout(lab.name)
    if not n.netns_path.exists():
        raise RuntimeError(f"{n.name} has no network namespace ({n.netns}): the lab is "
                           f"damaged; `pyswarm lab down --name {lab.name}` and up again")
    member_pid = etcd.member_pid(n, node.etcd_pid) if node in lab.members() else 0
    if target.etcd:
        if member_pid:
            raise RuntimeError(f"{n.member} is already running (pid {member_pid})")
        _start_member(lab, node, say)
        return
    if pid := nodes.daemon_pid(n):
        hint = (f"; its etcd member is not: `pyswarm lab start {n.member}`"
                if node in lab.members() and not member_pid else "")
        raise RuntimeError(f"{n.name} is already running (daemon pid {pid}){hint}")
    if node in lab.members() and not member_pid:
        _start_member(lab, node, say)
    node.pid = nodes.start_daemon(n)
    node.state = state.RUNNING
    lab.save()
    say(f"{n.name}: daemon running (pid {node.pid})")


def _start_member(lab: state.Lab, node: state.Node, say: Callable[[str], None]) -> None:
    """Start the node's etcd member again (from its data dir) and wait until it is healthy,
    when it can be: a member is healthy only while a majority of the members run."""
    n = node.layout(lab.name)
    members = [m.layout(lab.name) for m in lab.members()]
    node.etcd_pid = etcd.start(n, members)
    node.etcd_state = state.RUNNING
    lab.save()
    running = sum(1 for m in lab.members() if etcd.member_pid(m.layout(lab.name), m.etcd_pid))
    need = etcd.quorum(len(members))
    if links.is_partitioned(n):
        say(f"{n.member}: running (pid {node.etcd_pid}); {n.name} is partitioned, so it "
            f"cannot be healthy until `pyswarm lab heal {n.name}`")
    elif running < need:
        say(f"{n.member}: running (pid {node.etcd_pid}); not healthy until a majority runs "
            f"({running} of {len(members)} members run, {need} needed): "
            f"`pyswarm lab start` another")
    else:
        etcd.wait_healthy([n], {n.name: node.etcd_pid})
        say(f"{n.member}: running (pid {node.etcd_pid}), healthy")


def partition(lab: state.Lab, target: state.Target, cut: bool,
              say: Callable[[str], None] = print) -> None:
    n = target.node.layout(lab.name)
    if target.etcd:
        raise layout.LayoutError(
            f"{n.member} shares {n.name}'s network: `pyswarm lab "
            f"{'partition' if cut else 'heal'} {n.name}` cuts (restores) both; for the "
            f"member alone use `pyswarm lab kill|stop {n.member}`")
    if links.is_partitioned(n) == cut:
        say(f"{n.name}: already {'partitioned' if cut else 'connected'}")
        return
    links.set_partitioned(n, cut)
    also = f" and its etcd member {n.member}" if target.node in lab.members() else ""
    say(f"{n.name}{also}: " + ("partitioned (its link is down)" if cut else
                               "healed (its link is up)"))
