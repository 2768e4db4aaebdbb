"""Placement constraints: the parsing table, errors, and matching against nodes."""

from __future__ import annotations

import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.manager.scheduler.constraints import Constraint, matches, parse_constraint
from tests.unit.cluster_builders import make_node


@pytest.mark.parametrize("expr, key, equal, value", [
    ("node.role == manager", "node.role", True, "manager"),
    ("node.labels.zone != east", "node.labels.zone", False, "east"),
    ("node.hostname==h", "node.hostname", True, "h"),
    ("  node.id == abc  ", "node.id", True, "abc"),
    ("node.platform.os == linux", "node.platform.os", True, "linux"),
    ("node.platform.arch != arm64", "node.platform.arch", False, "arm64"),
    ("engine.labels.x == y", "engine.labels.x", True, "y"),
    ("NODE.ROLE == worker", "node.role", True, "worker"),
    ("Node.Labels.Zone == a b", "node.labels.Zone", True, "a b"),
])
def test_parse(expr, key, equal, value):
    assert parse_constraint(expr) == Constraint(key, equal, value, expr)


@pytest.mark.parametrize("expr, problem", [
    ("node.role", "expected <key> == <value>"),
    ("node.role = manager", "expected <key> == <value>"),
    ("node.role ==", "expected <key> == <value>"),
    ("== manager", "expected <key> == <value>"),
    ("node.colour == red", 'unknown key "node.colour"'),
    ("node.labels. == x", "empty label name"),
    ("node.role == a == b", "more than one operator"),
    ("", "expected <key> == <value>"),
])
def test_parse_errors_name_the_expression(expr, problem):
    with pytest.raises(InvalidArgument) as err:
        parse_constraint(expr)
    assert f'"{expr}"' in str(err.value)
    assert problem in str(err.value)


NODE = make_node("id-1", labels={"zone": "East"}, role="manager", hostname="box",
                 arch="x86_64", engine_labels={"disk": "ssd"})


@pytest.mark.parametrize("exprs, ok", [
    ([], True),
    (["node.id == id-1"], True),
    (["node.id != id-1"], False),
    (["node.hostname == BOX"], True),            # values compare case-insensitively
    (["node.role == manager"], True),
    (["node.role == worker"], False),
    (["node.labels.zone == east"], True),
    (["node.labels.rack == r1"], False),         # missing label fails ==
    (["node.labels.rack != r1"], True),          # ... and satisfies !=
    (["node.platform.os == linux"], True),
    (["node.platform.arch == amd64"], True),     # x86_64 is amd64
    (["node.platform.arch == x86_64"], True),
    (["engine.labels.disk == ssd"], True),
    (["node.role == manager", "node.labels.zone == west"], False),  # all must hold
])
def test_matches(exprs, ok):
    assert matches([parse_constraint(e) for e in exprs], NODE) is ok
