"""Whole-tree passes over a parsed stack file: interpolation, and the walk that skips
extension fields.

Policy: interpolation applies to every string value, never to keys, and not inside ``x-``
extension fields at the top level or in a service (they are ignored, and usually only serve
as anchor sources, which YAML has already copied to where they are used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyswarm.manager.stack.diagnostics import Mark, Report
from pyswarm.manager.stack.interpolate import InterpolationError, Interpolator
from pyswarm.manager.stack.yaml12 import YList, YMap


def is_extension(path: tuple[str, ...]) -> bool:
    """Whether ``path`` (keys from the top) is an ``x-`` field at the top or in a service."""
    if len(path) == 1:
        return path[0].startswith("x-")
    return len(path) == 3 and path[0] == "services" and path[2].startswith("x-")


def map_strings(
    value: Any, mark: Mark, fn: Callable[[str, Mark, tuple[str, ...]], str],
    path: tuple[str, ...] = (), *, keep_extensions: bool = True,
) -> Any:
    """A copy of ``value`` with ``fn`` applied to every string outside extension fields."""
    if isinstance(value, YMap):
        out = YMap(value.mark)
        for key, child in value.items():
            sub = path + (key,)
            if is_extension(sub):
                if keep_extensions:
                    out.put(key, child, value.mark_of(key))
                continue
            out.put(key, map_strings(child, value.mark_of(key), fn, sub,
                                     keep_extensions=keep_extensions), value.mark_of(key))
        return out
    if isinstance(value, YList):
        seq = YList(value.mark)
        for index, child in enumerate(value):
            seq.add(map_strings(child, value.mark_of(index), fn, path + (f"[{index}]",),
                                keep_extensions=keep_extensions), value.mark_of(index))
        return seq
    if isinstance(value, str):
        return fn(value, mark, path)
    return value


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[", "[")


def interpolate_tree(tree: YMap, interpolator: Interpolator, report: Report) -> YMap:
    """Interpolates every string; errors and unset-variable warnings name file and line."""

    def one(text: str, mark: Mark, path: tuple[str, ...]) -> str:
        before = len(interpolator.unset)
        try:
            result = interpolator(text)
        except InterpolationError as exc:
            report.error(mark, dotted(path), str(exc))
            return text
        for name in interpolator.unset[before:]:
            report.warn(mark, dotted(path),
                        f"The {name} variable is not set. Defaulting to a blank string.")
        return result

    out = map_strings(tree, tree.mark, one)
    assert isinstance(out, YMap)
    return out
