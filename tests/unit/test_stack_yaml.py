"""The YAML reader: YAML 1.2 core scalars, marks, anchors, merge keys, duplicate keys."""

from __future__ import annotations

import textwrap

import pytest

from pyswarm.manager.stack.diagnostics import Report
from pyswarm.manager.stack.yaml12 import YMap, ZeroPaddedInt, dump_yaml, parse_yaml


def parse(text: str) -> tuple[object, Report]:
    report = Report()
    return parse_yaml(textwrap.dedent(text), "s.yml", report), report


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:22", "22:22"),          # not sexagesimal 1342
        ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("Y", "Y"),
        ("true", True), ("True", True), ("TRUE", True), ("false", False), ("FALSE", False),
        ("tRUE", "tRUE"),
        ("012", 12),                 # decimal in YAML 1.2, not octal 10
        ("0o12", 10), ("0x1f", 31), ("-3", -3), ("+7", 7),
        ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5),
        ("~", None), ("null", None), ("Null", None), ("", None),
        ("1_000", "1_000"),          # YAML 1.1 digit separators are gone
        ("0b101", "0b101"),
        ("'012'", "012"), ('"true"', "true"),
    ],
)
def test_scalars_follow_yaml_1_2_core(text: str, expected: object) -> None:
    value, report = parse(f"v: {text}\n")
    assert not report.errors
    assert isinstance(value, YMap)
    assert value["v"] == expected and type(value["v"]) is type(expected) or (
        isinstance(value["v"], ZeroPaddedInt) and value["v"] == expected
    )


def test_zero_padded_int_keeps_its_text() -> None:
    value, _ = parse("mode: 0440\n")
    assert isinstance(value, YMap)
    assert value["mode"] == 440 and value["mode"].text == "0440"


def test_marks_record_the_line_of_each_key_and_item() -> None:
    value, _ = parse("""
        a: 1
        b:
          - x
          - y
        """)
    assert isinstance(value, YMap)
    # the text starts with a blank line
    assert value.mark_of("a").line == 2 and value.mark_of("b").line == 3
    assert value["b"].mark_of(1).line == 5


def test_anchors_aliases_and_merge_keys() -> None:
    value, report = parse("""
        base: &base {image: busybox, user: "1"}
        more: &more {user: "2", hostname: h}
        one:
          <<: *base
          user: "3"
        two:
          <<: [*more, *base]
        three: *base
        """)
    assert not report.errors
    assert isinstance(value, YMap)
    assert value["one"] == {"image": "busybox", "user": "3"}
    assert value["two"] == {"user": "2", "hostname": "h", "image": "busybox"}  # earlier wins
    assert value["three"] == {"image": "busybox", "user": "1"}


def test_duplicate_key_is_an_error_naming_both_lines() -> None:
    _, report = parse("a: 1\nb: 2\na: 3\n")
    assert [str(e) for e in report.errors] == [
        's.yml:3: duplicate key "a" (first defined on line 1)'
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: [1, 2\n", "s.yml:2: invalid YAML"),
        ("a: &x [*x]\n", "refers to the value that contains it"),
        ("a: *nope\n", "invalid YAML: found undefined alias"),
        ("a: !!int abc\n", '"abc" is not a valid int'),
        ("a: !custom x\n", "unsupported tag !custom"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("<<: 3\n", "merge key"),
        ("? [a]\n: 1\n", "a mapping key must be a plain value"),
    ],
)
def test_malformed_yaml_is_reported(text: str, fragment: str) -> None:
    _, report = parse(text)
    assert any(fragment in str(e) for e in report.errors), report.errors


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    _, report = parse("\n".join(lines) + "\n")
    assert any("values after expanding aliases" in str(e) for e in report.errors)


def test_dump_quotes_what_either_yaml_version_would_misread() -> None:
    values = ["22:22", "yes", "on", "012", "0o12", "1e3", "true", "~", "", "plain"]
    text = dump_yaml({"v": values, "n": ZeroPaddedInt("0440")})
    report = Report()
    again = parse_yaml(text, "s.yml", report)
    assert isinstance(again, YMap)
    assert again["v"] == values and again["n"].text == "0440"
