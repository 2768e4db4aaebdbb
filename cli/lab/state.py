"""The lab's record, ``/var/lib/pyswarm-lab/<name>/lab.json``, and the lock around it.

The record says what `lab up` built and what was done to each node and etcd member since
(killed, stopped), which the kernel cannot tell: a daemon or member that is gone may have
been killed by `lab kill` or have crashed. Every command that changes a lab holds the lab
folder's flock, so two commands never tear one lab apart.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import layout

# What was last done to a node's daemon, or to an etcd member: running (started by the
# lab), killed (lab kill), stopped (lab stop).
RUNNING, KILLED, STOPPED = "running", "killed", "stopped"
SQLITE, ETCD = "sqlite", "etcd"  # where the cluster keeps its state (lab up --store)
_MEMBER = re.compile(r"etcd([1-9][0-9]*)")


@dataclass
class Node:
    index: int
    address: str
    role: str  # manager | worker | standalone (left out of the cluster, --standalone)
    pid: int = 0
    state: str = RUNNING
    # Its etcd member (a manager of a --store etcd lab): the member's pid and what was last
    # done to it, apart from the daemon (lab kill etcdK) or with it (lab kill nodeK).
    etcd_pid: int = 0
    etcd_state: str = STOPPED

    def layout(self, lab: str) -> layout.NodeLayout:
        return layout.NodeLayout(lab, self.index, self.address)


@dataclass(frozen=True)
class Target:
    """What a NODE argument names: node K itself, or (``etcd``) the etcd member on it."""

    node: Node
    etcd: bool = False


@dataclass
class Lab:
    name: str
    subnet: str
    bridge: str
    host_address: str
    images: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    complete: bool = False  # lab up got to its end
    firewall_rule: bool = False  # an iptables FORWARD accept for the bridge was added
    store: str = SQLITE  # etcd: an etcd member runs on every manager (records before: sqlite)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.layout(self.name).name == name:
                return node
        known = ", ".join(n.layout(self.name).name for n in self.nodes) or "none"
        members = ", ".join(n.layout(self.name).member for n in self.members())
        raise LookupError(f'no node "{name}" in lab {self.name} (its nodes: {known}'
                          + (f"; its etcd members: {members})" if members else ")"))

    def members(self) -> list[Node]:
        """The nodes that run an etcd member: the managers, in a --store etcd lab."""
        return [n for n in self.nodes if n.role == "manager"] if self.store == ETCD else []

    def target(self, name: str) -> Target:
        """A NODE argument: ``nodeK``, or ``etcdK`` for the etcd member on manager nodeK."""
        m = _MEMBER.fullmatch(name)
        if m is None:
            return Target(self.node(name))
        if self.store != ETCD:
            raise LookupError(f'no etcd member "{name}": lab {self.name} keeps the cluster '
                              f"state in sqlite on node1 (etcd members run in labs made "
                              f"with `pyswarm lab up --store etcd`)")
        members = [n.layout(self.name).member for n in self.members()]
        for node in self.members():
            if node.index == int(m.group(1)):
                return Target(node, etcd=True)
        which = next((f"node{m.group(1)} is a {n.role}" for n in self.nodes
                      if n.index == int(m.group(1))), f"there is no node{m.group(1)}")
        raise LookupError(f'no etcd member "{name}" in lab {self.name}: {which}, and the '
                          f"members run on the managers ({', '.join(members)})")

    def layouts(self) -> list[layout.NodeLayout]:
        return [n.layout(self.name) for n in self.nodes]

    def manager(self) -> Node:
        """The node that runs the cluster's (first) manager."""
        for node in self.nodes:
            if node.role == "manager":
                return node
        return self.nodes[0]

    def save(self) -> None:
        path = layout.state_file(self.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lab:
        """A record as saved; one from an older lab lacks the newer fields (defaults)."""
        nodes = [Node(**n) for n in data.get("nodes", [])]
        return cls(**{**data, "nodes": nodes})


def load(name: str) -> Lab | None:
    path = layout.state_file(name)
    try:
        return Lab.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}): remove the lab with "
                         f"`pyswarm lab down --name {name}`") from None


def existing() -> list[str]:
    """Names of the labs on this machine."""
    if not layout.STATE_BASE.is_dir():
        return []
    return sorted(p.parent.name for p in layout.STATE_BASE.glob("*/lab.json"))


@contextmanager
def locked(name: str, create: bool = False) -> Iterator[Path]:
    """Hold the lab folder's flock (made first when ``create``)."""
    folder = layout.lab_dir(name)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LookupError(f'no lab named "{name}" on this machine'
                          + _others_hint()) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)


def _others_hint() -> str:
    labs = existing()
    return f" (labs here: {', '.join(labs)}; choose with --name)" if labs else \
        " (start one with `pyswarm lab up --nodes 3`)"
