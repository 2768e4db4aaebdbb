"""Variable interpolation: every form, errors with file:line:key, .env and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyswarm.manager.stack import load_stack
from pyswarm.manager.stack.interpolate import InterpolationError, Interpolator

from .test_stack_support import errors_of, load, write

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "value"), ("${SET}", "value"), ("a${SET}b", "avalueb"), ("$SET.x", "value.x"),
        ("$$SET", "$SET"), ("$${SET}", "${SET}"), ("cost: $$5", "cost: $5"),
        ("${UNSET:-dflt}", "dflt"), ("${EMPTY:-dflt}", "dflt"), ("${SET:-dflt}", "value"),
        ("${UNSET-dflt}", "dflt"), ("${EMPTY-dflt}", ""),
        ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""), ("${UNSET:-${SET}}", "value"), ("${UNSET}", ""),
        ("${SET:?boom}", "value"), ("${EMPTY?boom}", ""),
    ],
)
def test_forms(template: str, expected: str) -> None:
    assert Interpolator(ENV)(template) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${UNSET:?set it}", "required variable UNSET is missing a value: set it"),
        ("${EMPTY:?}", "required variable EMPTY is missing a value"),
        ("${UNSET?need}", "required variable UNSET is missing a value: need"),
        ("$5", 'invalid interpolation format "$5": you may need to escape any $ with another $'),
        ("${SET", 'invalid interpolation format "${SET"'),
        ("${}", "invalid interpolation format"),
        ("${SET!x}", "invalid interpolation format"),
    ],
)
def test_failures(template: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message.replace("$", r"\$")
                       .replace("{", r"\{").replace("(", r"\(")):
        Interpolator(ENV)(template)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_in_a_stack_with_warning_for_unset(tmp_path: Path) -> None:
    stack = load(tmp_path, """
        services:
          web:
            image: "busybox:${TAG:-latest}"
            command: ["echo", "$$HOME", "${GREETING}"]
            deploy:
              replicas: ${REPLICAS}
        """, env={"REPLICAS": "2"})
    spec = stack.services[0]
    assert spec.task.container.image == "busybox:latest"
    assert list(spec.task.container.args) == ["echo", "$HOME", ""]
    assert spec.replicated.replicas == 2
    assert stack.warnings == ["stack.yml:4: services.web.command[2]: The GREETING variable is "
                              "not set. Defaulting to a blank string."]


def test_required_variable_error_names_file_line_key(tmp_path: Path) -> None:
    assert errors_of(tmp_path, """
        services:
          web:
            image: "busybox:${TAG:?pick a tag}"
        """) == ["stack.yml:3: services.web.image: required variable TAG is missing a value: "
                 "pick a tag"]


def test_keys_and_extension_fields_are_not_interpolated(tmp_path: Path) -> None:
    stack = load(tmp_path, """
        x-notes: "${NOPE:?never evaluated}"
        services:
          web:
            x-also: $5
            image: busybox
            labels: {"$KEEP": "v"}
        """)
    assert dict(stack.services[0].task.container.labels)["$KEEP"] == "v"


def test_dotenv_beside_first_file_and_process_env_wins(tmp_path: Path) -> None:
    write(tmp_path, "proj/.env", "TAG=from-dotenv\nOTHER=dotenv # comment\nQUOTED='a b'\n")
    write(tmp_path, "proj/stack.yml", """
        services:
          web:
            image: "busybox:${TAG}"
            environment: ["O=${OTHER}", "Q=${QUOTED}", PASS]
        """)
    stack = load_stack([Path("proj/stack.yml")], "app", {"TAG": "from-process", "PASS": "p"})
    spec = stack.services[0]
    assert spec.task.container.image == "busybox:from-process"
    assert list(spec.task.container.env) == ["O=dotenv", "Q=a b", "PASS=p"]


def test_bad_dotenv_line(tmp_path: Path) -> None:
    write(tmp_path, ".env", "GOOD=1\nnot a line\n")
    assert errors_of(tmp_path, "services:\n  web: {image: a}\n") == [
        f'{tmp_path}/.env:2: invalid variable name "not a line"']
