"""Shared helpers for the stack loader tests: write files into a folder and load them."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from pyswarm.manager.stack import Stack, StackInvalid, load_stack


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(folder: Path, text: str, env: Mapping[str, str] | None = None,
         name: str = "app") -> Stack:
    """Loads ``text`` as ``stack.yml`` (the working folder must be ``folder``)."""
    write(folder, "stack.yml", text)
    return load_stack([Path("stack.yml")], name, env or {})


def errors_of(folder: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(StackInvalid) as info:
        load(folder, text, env)
    return [str(e) for e in info.value.errors]
