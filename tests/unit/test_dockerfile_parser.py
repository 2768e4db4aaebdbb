"""Dockerfile parsing: instructions, line numbers, words and substitution, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from pyswarm.common.errors import InvalidArgument
from pyswarm.worker.images import dockerfile as df

SAMPLE = """# syntax=docker/dockerfile:1
# escape=\\
# a comment
FROM busybox AS base

ARG VERSION=1.0
ENV A=1 B="two words" \\
    # a comment inside a continuation
    C=3
RUN echo one \\

    && echo two
COPY --chown=1:2 a b /dst/
CMD ["sh", "-c", "echo hi"]
HEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost
"""


def test_instructions_and_lines() -> None:
    got = [(i.line, i.cmd, i.args, i.flags) for i in df.parse(SAMPLE)]
    assert got == [
        (4, "FROM", "busybox AS base", ()),
        (6, "ARG", "VERSION=1.0", ()),
        (7, "ENV", 'A=1 B="two words"     C=3', ()),
        (10, "RUN", "echo one     && echo two", ()),
        (13, "COPY", "a b /dst/", (("chown", "1:2"),)),
        (14, "CMD", '["sh", "-c", "echo hi"]', ()),
        (15, "HEALTHCHECK", "CMD wget -q localhost", (("interval", "5s"), ("retries", "3"))),
    ]


def test_escape_directive() -> None:
    got = df.parse("# escape=`\nFROM scratch\nRUN a `\n b\n")
    assert got[1].args == "a  b"


@pytest.mark.parametrize(("text", "line", "msg"), [
    ("FROM a\nBOGUS x\n", 2, "unknown instruction: BOGUS"),
    ("\n\nFROM\n", 3, "FROM requires at least one argument"),
    ("FROM a b\n", 1, "one or three arguments"),
    ("FROM a\nCOPY onlyone\n", 2, "at least two arguments"),
    ("FROM a\nCOPY --from=x a b\n", 2, "multi-stage"),
    ("FROM a\nCOPY --nope=1 a b\n", 2, "unknown flag: --nope"),
    ("FROM a\n\n\nHEALTHCHECK --interval=5 CMD x\n", 4, "invalid duration"),
    ("FROM a\nHEALTHCHECK --retries=0 CMD x\n", 2, "retries"),
    ("FROM a\nHEALTHCHECK wget\n", 2, "NONE or CMD"),
    ("FROM a\nENV A\n", 2, "two arguments"),
    ("FROM a\nLABEL a\n", 2, "key=value"),
    ("FROM a\nARG 1x\n", 2, "invalid name"),
    ("FROM a\nONBUILD RUN x\n", 2, "not supported"),
    ("FROM a\nSHELL sh -c\n", 2, "JSON form"),
    ("FROM a\nUSER a b\n", 2, "exactly one"),
    ("FROM a\nRUN --mount=type=cache x\n", 2, "unknown flag: --mount"),
])
def test_errors_carry_line(text: str, line: int, msg: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^Dockerfile:{line}: .*{msg}"):
        df.parse(text)


@pytest.mark.parametrize(("src", "want"), [
    ("a b  c", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ("'$X' \"$X\" $X ${X}", ["$X", "x1", "x1", "x1"]),
    ("${NOPE:-dflt} ${X:-dflt} ${X:+alt} ${NOPE:+alt}", ["dflt", "x1", "alt"]),
    ("${EMPTY-d} ${EMPTY:-d} ${NOPE-d}", ["d", "d"]),
    (r"\$X a\ b", ["$X", "a b"]),
    ("pre$X/post ${X}_y", ["prex1/post", "x1_y"]),
    ("$ alone", ["$", "alone"]),
])
def test_words(src: str, want: list[str]) -> None:
    assert df.words(src, {"X": "x1", "EMPTY": ""}, 1) == want


@pytest.mark.parametrize("src", ["'open", '"open', "${X", "${1}", "${X?err}"])
def test_word_errors(src: str) -> None:
    with pytest.raises(InvalidArgument, match="^Dockerfile:7: "):
        df.words(src, {}, 7)


def test_key_values_forms() -> None:
    [legacy] = df.parse("ENV PATH /usr/bin:$HOME/bin\n")
    assert df.key_values(legacy, {"HOME": "/root"}) == [("PATH", "/usr/bin:/root/bin")]
    [modern] = df.parse('LABEL a=1 "b c"="d e" f=\n')
    assert df.key_values(modern, {}) == [("a", "1"), ("b c", "d e"), ("f", "")]


def test_durations() -> None:
    assert df.parse_duration("1m30s", 1, "x") == 90 * 10**9
    assert df.parse_duration("500ms", 1, "x") == 5 * 10**8
    assert df.parse_duration("1.5h", 1, "x") == 5400 * 10**9


_LINES = hs.sampled_from([
    "FROM busybox", "FROM", "RUN echo hi", "RUN [\"a\"", "COPY a b", "COPY --chown=x a",
    "ENV A=1", "ENV A", "ENV =x", "ARG X=${Y:-z}", "LABEL \"a", "HEALTHCHECK --timeout=3s CMD x",
    "HEALTHCHECK --timeout= CMD", "# comment", "", "\\", "  \\", "WORKDIR /x", "EXPOSE 80/tcp",
    "USER", "CMD", "ONBUILD x", "--x", "FROM a AS", "SHELL [1]", "# escape=`", "COPY ['a']",
])


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.one_of(_LINES, hs.text(max_size=40)), max_size=12))
def test_fuzz_only_invalid_argument(lines: list[str]) -> None:
    try:
        for inst in df.parse("\n".join(lines)):
            assert inst.line >= 1
            df.words(inst.args, {"Y": "1"}, inst.line)
    except InvalidArgument as e:
        assert str(e).startswith("Dockerfile:")


def test_apply_changes_for_commit() -> None:
    base = {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/srv"}
    out = df.apply_changes(base, ['ENV A=1 PATH=$PATH:/x', "CMD echo hi", "EXPOSE 80",
                                  "LABEL k=v", "WORKDIR app", "USER nobody",
                                  'ENTRYPOINT ["/init"]'])
    assert out["Env"] == ["A=1", "PATH=/bin:/x"]
    assert out["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert out["Entrypoint"] == ["/init"]
    assert out["ExposedPorts"] == {"80/tcp": {}}
    assert out["Labels"] == {"k": "v"}
    assert out["WorkingDir"] == "/srv/app"
    assert out["User"] == "nobody"
    assert base["Env"] == ["PATH=/bin"]  # the input is not modified
    with pytest.raises(InvalidArgument, match="not a valid change"):
        df.apply_changes({}, ["RUN rm -rf /"])
