"""``depends_on``: checked, and honoured as the order in which services are created.

Policy: a dependency must be a service of the same stack, and the dependencies may not form a
cycle. Services come out dependencies first; otherwise in the order the file lists them.
Conditions (``service_healthy``...) are checked for spelling but only ordering is honoured.
"""

from __future__ import annotations

from pyswarm.manager.stack.diagnostics import Report
from pyswarm.manager.stack.values import Field, as_choice, as_str, check_keys, describe, fail
from pyswarm.manager.stack.yaml12 import YList, YMap

_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


def read_depends_on(report: Report, f: Field, services: list[str]) -> list[str]:
    """The names a service depends on (in its own order); unknown ones are reported."""
    names: list[tuple[str, Field]] = []
    if isinstance(f.value, YList):
        for element in f.elements():
            name = as_str(report, element)
            if name is not None:
                names.append((name, element))
    elif isinstance(f.value, YMap):
        for name, child in f.items():
            names.append((name, child))
            if child.value is None:
                continue
            if not isinstance(child.value, YMap):
                fail(report, child, f"must be a mapping, got {describe(child.value)}")
                continue
            check_keys(report, child, {"condition", "restart", "required"})
            if (condition := child.get("condition")) is not None:
                as_choice(report, condition, _CONDITIONS)
    else:
        fail(report, f, f"must be a list or a mapping, got {describe(f.value)}")
    out = []
    for name, where in names:
        if name not in services:
            fail(report, where, f'depends on "{name}", which is not a service of this stack')
        elif name not in out:
            out.append(name)
    return out


def creation_order(
    report: Report, deps: dict[str, list[str]], where: dict[str, Field]
) -> list[str]:
    """Services dependencies-first (stable in file order); a cycle is reported once."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            first = where[cycle[0]]
            fail(report, first, "dependency cycle: " + " -> ".join(cycle))
            return
        state[name] = 1
        for dep in deps.get(name, []):
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in deps:
        visit(name, [])
    return order
