"""Typed reading of stack-file values, each failure reported at its file, line and key path.

A :class:`Field` is one value with where it came from. The ``as_*`` readers return the typed
value, or ``None`` after reporting why they could not; callers then just skip that part, so
one pass finds every error. Policy: an explicit ``null`` means "not given"; numbers written as
strings (typically after interpolation, ``replicas: ${N}``) are accepted where a number is
expected, as Compose does.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyswarm.common.errors import InvalidArgument
from pyswarm.common.units import parse_size
from pyswarm.manager.stack.diagnostics import Mark, Report
from pyswarm.manager.stack.yaml12 import YList, YMap


@dataclass(frozen=True)
class Field:
    value: Any
    mark: Mark
    path: str

    def get(self, key: str) -> Field | None:
        """The child ``key`` of a mapping, or None when absent or null."""
        if not isinstance(self.value, YMap) or self.value.get(key) is None:
            return None
        return Field(self.value[key], self.value.mark_of(key), self.sub(key))

    def sub(self, key: str) -> str:
        """The dotted path of a child."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return isinstance(self.value, YMap) and key in self.value

    def items(self) -> Iterator[tuple[str, Field]]:
        if isinstance(self.value, YMap):
            for key, value in self.value.items():
                yield key, Field(value, self.value.mark_of(key), self.sub(key))

    def elements(self) -> Iterator[Field]:
        if isinstance(self.value, YList):
            for index, value in enumerate(self.value):
                yield Field(value, self.value.mark_of(index), f"{self.path}[{index}]")


def describe(value: Any) -> str:
    """A value the way an error message shows it."""
    if isinstance(value, YMap | dict):
        return "a mapping"
    if isinstance(value, YList | list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def fail(report: Report, f: Field, message: str) -> None:
    report.error(f.mark, f.path, message)


def check_keys(
    report: Report, f: Field, allowed: set[str], ignored: Mapping[str, str] | None = None
) -> None:
    """Reports keys of ``f`` that are unknown (errors) or meaningless in swarm mode (warnings).

    ``ignored`` maps a key to the advice shown with its warning ("" for none).
    """
    for key, child in f.items():
        if key in allowed or key.startswith("x-"):
            continue
        if ignored is not None and key in ignored:
            advice = ignored[key]
            report.warn(child.mark, child.path,
                        "ignored in swarm mode" + (f"; {advice}" if advice else ""))
            continue
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        fail(report, child, f"unknown key{hint}")


def as_map(report: Report, f: Field) -> YMap | None:
    if isinstance(f.value, YMap):
        return f.value
    fail(report, f, f"must be a mapping, got {describe(f.value)}")
    return None


def as_list(report: Report, f: Field) -> YList | None:
    if isinstance(f.value, YList):
        return f.value
    fail(report, f, f"must be a list, got {describe(f.value)}")
    return None


def as_str(report: Report, f: Field) -> str | None:
    """A string; a number is taken as written (``user: 1000``)."""
    if isinstance(f.value, str):
        return f.value
    if isinstance(f.value, int | float) and not isinstance(f.value, bool):
        return scalar_text(f.value)
    fail(report, f, f"must be a string, got {describe(f.value)}")
    return None


def scalar_text(value: Any) -> str:
    """A scalar as text: true/false for booleans, the written digits for ``0440``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = getattr(value, "text", None)
    return text if isinstance(text, str) else str(value)


INT64_MAX = 2**63 - 1  # every number ends up in an int64 or uint64 protobuf field


def as_int(report: Report, f: Field, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    value = f.value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if minimum <= value <= (INT64_MAX if maximum is None else maximum):
            return int(value)
    kind = "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}"
    if maximum is not None:
        kind = f"an integer from {minimum} to {maximum}"
    fail(report, f, f"must be {kind}, got {describe(f.value)}")
    return None


def as_float(report: Report, f: Field, *, minimum: float = 0.0, maximum: float | None = None,
             what: str = "a non-negative number") -> float | None:
    value = f.value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else float("inf")
        if number >= minimum and (maximum is None or number <= maximum):
            return number
    fail(report, f, f"must be {what}, got {describe(f.value)}")
    return None


def as_bool(report: Report, f: Field) -> bool | None:
    if isinstance(f.value, bool):
        return f.value
    if isinstance(f.value, str) and f.value.lower() in ("true", "false"):
        return f.value.lower() == "true"
    fail(report, f, f"must be true or false, got {describe(f.value)}")
    return None


def as_choice(report: Report, f: Field, choices: tuple[str, ...]) -> str | None:
    if isinstance(f.value, str) and f.value in choices:
        return f.value
    options = ", ".join(choices[:-1]) + f" or {choices[-1]}"
    fail(report, f, f"must be {options}, got {describe(f.value)}")
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
       "h": 3600 * 10**9}


def parse_duration(text: str) -> int | None:
    """Go's duration syntax (``1m30s``, ``500ms``, ``1.5h``, ``0``) → nanoseconds."""
    text = text.strip()
    if text == "0":
        return 0
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _NS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return int(total) if total < 2**64 else 2**64  # callers refuse what overflows int64


def as_duration(report: Report, f: Field) -> int | None:
    """A duration in nanoseconds; a bare number other than 0 lacks its unit and is refused."""
    value = f.value
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    ns = parse_duration(value) if isinstance(value, str) else None
    if ns is not None and ns > INT64_MAX:
        fail(report, f, f"is too long (at most about 292 years), got {describe(value)}")
        return None
    if ns is None:
        fail(report, f, f'must be a duration like "30s", "1m30s" or "500ms", got {describe(value)}')
    return ns


def as_size(report: Report, f: Field) -> int | None:
    """A size in bytes: a number, or Docker's ``64m`` / ``1.5G`` / ``512k`` forms."""
    value = f.value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return int(value)
    if isinstance(value, str):
        try:
            size = parse_size(value)
            if size <= INT64_MAX:
                return size
        except (InvalidArgument, OverflowError):
            pass
    fail(report, f, f"must be a size like \"64m\", \"1.5g\" or a number of bytes, "
                    f"got {describe(value)}")
    return None


def as_str_list(report: Report, f: Field, *, shell_split: bool = False) -> list[str] | None:
    """A list of strings; a single string is shell-split (commands) or taken as one item."""
    if isinstance(f.value, str):
        if not shell_split:
            return [f.value]
        try:
            return shlex.split(f.value)
        except ValueError as exc:
            fail(report, f, f"cannot split into words: {exc}")
            return None
    if not isinstance(f.value, YList):
        fail(report, f, f"must be a string or a list of strings, got {describe(f.value)}")
        return None
    items: list[str] = []
    for element in f.elements():
        if isinstance(element.value, YMap | YList) or element.value is None:
            fail(report, element, f"must be a string, got {describe(element.value)}")
            continue
        items.append(scalar_text(element.value))
    return items


def as_kv(report: Report, f: Field, *, sep: str = "=",
          fill: Mapping[str, str] | None = None) -> dict[str, str | None] | None:
    """``KEY: VALUE`` mapping or ``["KEY=VALUE"]`` list → dict; a key alone maps to None,
    unless ``fill`` (the environment) has it."""
    out: dict[str, str | None] = {}
    if isinstance(f.value, YMap):
        for key, child in f.items():
            if isinstance(child.value, YMap | YList):
                fail(report, child, f"must be a string, got {describe(child.value)}")
                continue
            out[key] = None if child.value is None else scalar_text(child.value)
    elif isinstance(f.value, YList):
        for element in f.elements():
            if not isinstance(element.value, str):
                fail(report, element, f'must be a "KEY{sep}VALUE" string, got '
                     f"{describe(element.value)}")
                continue
            key, found, value = element.value.partition(sep)
            if not key:
                fail(report, element, f'must be a "KEY{sep}VALUE" string, got '
                     f"{describe(element.value)}")
                continue
            out[key] = value if found else None
    else:
        fail(report, f, f"must be a mapping or a list, got {describe(f.value)}")
        return None
    if fill is not None:
        for key in out:
            if out[key] is None and key in fill:
                out[key] = fill[key]
    return out
