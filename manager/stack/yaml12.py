"""A YAML reader for stack files: YAML 1.2 core scalars, and a line mark on every value.

Policy:
- Scalars follow the YAML 1.2 core schema, as Compose's Go reader does: only true/false (in
  their three spellings) are booleans, so ``yes``/``no``/``on``/``off`` stay strings; ``22:22``
  is a string, not a sexagesimal number; ``0o12`` is octal, while ``012`` is the decimal 12
  (kept as a :class:`ZeroPaddedInt` so that a file ``mode: 0440`` can still be read the way
  Docker's documentation writes it); null, ``~`` and an empty value are null.
- Anchors, aliases and merge keys (``<<``) work; keys written in a mapping win over merged
  ones, and earlier merge sources win over later ones.
- A key written twice in one mapping is an error naming both lines.
- Every mapping remembers the line of each key, every sequence the line of each item, so that
  later errors can name them. Keys are always strings (the text as written).
- Alias expansion is capped, so a "billion laughs" file is an error, not an outage.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

from pyswarm.manager.stack.diagnostics import Mark, Report

MAX_VALUES = 200_000  # values after alias expansion; far beyond any real stack

_TAG = "tag:yaml.org,2002:"


class YMap(dict[str, Any]):
    """A mapping with the mark of itself and of each key."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[str, Mark] = {}

    def put(self, key: str, value: Any, mark: Mark) -> None:
        self[key] = value
        self.key_marks[key] = mark

    def mark_of(self, key: str) -> Mark:
        return self.key_marks.get(key, self.mark)


class YList(list[Any]):
    """A sequence with the mark of itself and of each item."""

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []

    def add(self, value: Any, mark: Mark) -> None:
        self.append(value)
        self.item_marks.append(mark)

    def mark_of(self, index: int) -> Mark:
        return self.item_marks[index] if 0 <= index < len(self.item_marks) else self.mark


class ZeroPaddedInt(int):
    """A decimal integer written with leading zeros (``0440``); ``text`` is as written."""

    text: str

    def __new__(cls, text: str) -> ZeroPaddedInt:
        value = super().__new__(cls, int(text, 10))
        value.text = text
        return value


class _Resolver12(BaseResolver):
    """The YAML 1.2 core schema's implicit tags."""


_Resolver12.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver12.add_implicit_resolver(
    _TAG + "int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Resolver12.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver12.add_implicit_resolver(
    _TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Resolver12.add_implicit_resolver(_TAG + "merge", re.compile(r"^<<$"), ["<"])


class _Composer12(Reader, Scanner, Parser, Composer, _Resolver12):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver12.__init__(self)


class _Builder:
    """Turns composed nodes into YMap/YList/scalars, recording marks and finding errors."""

    def __init__(self, file: str, report: Report) -> None:
        self.file = file
        self.report = report
        self.count = 0
        self.active: set[int] = set()  # nodes being built: an alias back into one is a loop

    def mark(self, node: Node) -> Mark:
        return Mark(self.file, node.start_mark.line + 1)

    def fail(self, node: Node, message: str) -> None:
        self.report.error(self.mark(node), "", message)

    def build(self, node: Node) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooLarge
        if id(node) in self.active:
            self.fail(node, "an alias refers to the value that contains it")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node)
            if isinstance(node, SequenceNode):
                seq = YList(self.mark(node))
                for item in node.value:
                    seq.add(self.build(item), self.mark(item))
                return seq
            return self.scalar(node)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: MappingNode) -> YMap:
        out = YMap(self.mark(node))
        merged: list[YMap] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merged.extend(self.merge_sources(value_node))
                continue
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, "a mapping key must be a plain value, not a list or mapping")
                continue
            key = str(key_node.value)
            if key in out:
                first = out.key_marks[key].line
                self.fail(key_node, f'duplicate key "{key}" (first defined on line {first})')
                continue
            out.put(key, self.build(value_node), self.mark(key_node))
        for source in merged:
            for key, value in source.items():
                if key not in out:
                    out.put(key, value, source.mark_of(key))
        return out

    def merge_sources(self, node: Node) -> list[YMap]:
        value = self.build(node)
        sources = value if isinstance(value, YList) else [value]
        if not all(isinstance(s, YMap) for s in sources):
            self.fail(node, "a merge key (<<) takes a mapping or a list of mappings")
            return []
        return list(sources)

    def scalar(self, node: Node) -> Any:
        text = str(node.value)
        tag = node.tag
        try:
            if tag == _TAG + "str":
                return text
            if tag == _TAG + "null":
                return None
            if tag == _TAG + "bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            if tag == _TAG + "int":
                return _int(text)
            if tag == _TAG + "float":
                return float(text.replace(".inf", "inf").replace(".Inf", "inf")
                             .replace(".INF", "inf").lower().replace(".nan", "nan"))
        except ValueError:
            self.fail(node, f'"{text}" is not a valid {tag.removeprefix(_TAG)}')
            return None
        if tag == _TAG + "merge":
            return text
        self.fail(node, f"unsupported tag {tag}")
        return None


def _int(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0") and sign == 1 and text[0] != "+":
        return ZeroPaddedInt(digits)
    return sign * int(digits, 10)


class _TooLarge(Exception):
    pass


def parse_yaml(text: str, file: str, report: Report) -> Any:
    """Read one YAML document; problems go to ``report`` (the result is then unreliable)."""
    try:
        node = _Composer12(text).get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        report.error(Mark(file, line), "", f"invalid YAML: {problem}")
        return None
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 0
        report.error(Mark(file, line), "", f"invalid YAML: {getattr(exc, 'reason', exc)}")
        return None
    except RecursionError:
        report.error(Mark(file, 0), "", "invalid YAML: nested too deeply")
        return None
    if node is None:
        return None
    builder = _Builder(file, report)
    try:
        return builder.build(node)
    except _TooLarge:
        report.error(Mark(file, 0), "", f"over {MAX_VALUES} values after expanding aliases")
    except RecursionError:
        report.error(Mark(file, 0), "", "invalid YAML: nested too deeply")
    return None


# ---- writing -----------------------------------------------------------------------------


class _DumpResolver(Resolver):
    """Quotes a string when either YAML 1.1 or 1.2 would read it as something else."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        old = super().resolve(kind, value, implicit)
        if kind is ScalarNode and implicit[0]:
            new = _RESOLVER12.resolve(kind, value, implicit)
            if new != _TAG + "str":
                return new
        return old


_RESOLVER12 = _Resolver12()


class _Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter,
              _DumpResolver):
    def __init__(self, stream: Any, **kwargs: Any) -> None:
        yaml.emitter.Emitter.__init__(self, stream, width=kwargs.get("width"),
                                      allow_unicode=True)
        yaml.serializer.Serializer.__init__(self)
        yaml.representer.SafeRepresenter.__init__(self, sort_keys=False)
        _DumpResolver.__init__(self)


def _represent_padded(dumper: yaml.representer.SafeRepresenter, data: ZeroPaddedInt) -> Node:
    return dumper.represent_scalar(_TAG + "int", data.text)


_Dumper.add_representer(YMap, yaml.representer.SafeRepresenter.represent_dict)
_Dumper.add_representer(YList, yaml.representer.SafeRepresenter.represent_list)
_Dumper.add_representer(ZeroPaddedInt, _represent_padded)


def dump_yaml(value: Any) -> str:
    """Write ``value`` as block YAML that :func:`parse_yaml` reads back to the same values."""
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=False, width=10_000)
