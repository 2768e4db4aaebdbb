"""The lab's record, ``/var/lib/pyswarm-lab/<name>/lab.json``, and the lock around it.

The record says what `lab up` built and what was done to each node since (killed, stopped),
which the kernel cannot tell: a daemon that is gone may have been killed by `lab kill` or
have crashed. Every command that changes a lab holds the lab folder's flock, so two
commands never tear one lab apart.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import layout

# What was last done to a node's daemon: running (started by the lab), killed (lab kill),
# stopped (lab stop).
RUNNING, KILLED, STOPPED = "running", "killed", "stopped"


@dataclass
class Node:
    index: int
    address: str
    role: str  # manager | worker | standalone (left out of the cluster, --standalone)
    pid: int = 0
    state: str = RUNNING

    def layout(self, lab: str) -> layout.NodeLayout:
        return layout.NodeLayout(lab, self.index, self.address)


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

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.layout(self.name).name == name:
                return node
        known = ", ".join(n.layout(self.name).name for n in self.nodes) or "none"
        raise LookupError(f'no node "{name}" in lab {self.name} (its nodes: {known})')

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
