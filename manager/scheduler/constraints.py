"""Placement constraints: ``node.labels.zone == east`` parsed once, matched against nodes.

Swarm's rules: a constraint is ``<key> == <value>`` or ``<key> != <value>``; keys are
``node.id``, ``node.hostname``, ``node.role``, ``node.platform.os``, ``node.platform.arch``,
``node.labels.<label>`` and ``engine.labels.<label>``. Values compare case-insensitively.
A label the node does not have fails ``==`` and satisfies ``!=``. A task with several
constraints needs all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pyswarm.common.errors import InvalidArgument
from pyswarm.proto.objects_pb2 import Node, NodeRole

_EXPR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S(?:.*\S)?)\s*$")
_PLAIN_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os",
               "node.platform.arch")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")

# Architectures as nodes report them (uname) and as users write them (Go's names).
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i386": "386",
                 "i686": "386"}


@dataclass(frozen=True)
class Constraint:
    key: str        # normalised: "node.role", "node.labels.zone", ...
    equal: bool     # True for ==, False for !=
    value: str
    expr: str       # as written, for messages

    def __str__(self) -> str:
        return f"{self.key} {'==' if self.equal else '!='} {self.value}"


def parse_constraint(expr: str) -> Constraint:
    """Parse one constraint; InvalidArgument names the bad expression and what is wrong."""
    match = _EXPR.match(expr)
    if not match:
        raise InvalidArgument(
            f'invalid constraint "{expr}": expected <key> == <value> or <key> != <value>'
        )
    key, op, value = match.groups()
    if "==" in value or "!=" in value:
        raise InvalidArgument(f'invalid constraint "{expr}": more than one operator')
    lowered = key.lower()
    for prefix in _LABEL_PREFIXES:
        if lowered.startswith(prefix):
            label = key[len(prefix):]
            if not label:
                raise InvalidArgument(f'invalid constraint "{expr}": empty label name')
            # Label names keep their case; the prefix does not matter.
            return Constraint(prefix + label, op == "==", value, expr)
    if lowered not in _PLAIN_KEYS:
        raise InvalidArgument(
            f'invalid constraint "{expr}": unknown key "{key}" (expected one of '
            f'{", ".join(_PLAIN_KEYS)}, node.labels.<name>, engine.labels.<name>)'
        )
    return Constraint(lowered, op == "==", value, expr)


def parse_constraints(exprs: Iterable[str]) -> tuple[Constraint, ...]:
    return tuple(parse_constraint(e) for e in exprs)


def _node_value(key: str, node: Node) -> str | None:
    """What the node has for ``key``; None when it has no such label."""
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.description.hostname
    if key == "node.role":
        return "manager" if node.role == NodeRole.NODE_ROLE_MANAGER else "worker"
    if key == "node.platform.os":
        return node.description.os
    if key == "node.platform.arch":
        arch = node.description.architecture.lower()
        return _ARCH_ALIASES.get(arch, arch)
    if key.startswith("node.labels."):
        name = key[len("node.labels."):]
        return node.spec.labels[name] if name in node.spec.labels else None
    name = key[len("engine.labels."):]
    labels = node.description.engine_labels
    return labels[name] if name in labels else None


def satisfied(constraint: Constraint, node: Node) -> bool:
    have = _node_value(constraint.key, node)
    want = constraint.value
    if constraint.key == "node.platform.arch":
        want = _ARCH_ALIASES.get(want.lower(), want)
    equal = have is not None and have.casefold() == want.casefold()
    return equal if constraint.equal else not equal


def first_unsatisfied(constraints: Iterable[Constraint], node: Node) -> Constraint | None:
    for constraint in constraints:
        if not satisfied(constraint, node):
            return constraint
    return None


def matches(constraints: Iterable[Constraint], node: Node) -> bool:
    """True when the node satisfies every constraint."""
    return first_unsatisfied(constraints, node) is None
