"""Variable interpolation in stack-file values, with Compose's syntax and meaning.

    $$            a literal $
    $VAR ${VAR}   the variable's value; unset → "" and a warning (Docker's behaviour)
    ${VAR:-word}  word when VAR is unset or empty      ${VAR-word}  word when VAR is unset
    ${VAR:?msg}   error when VAR is unset or empty     ${VAR?msg}   error when VAR is unset
    ${VAR:+word}  word when VAR is set and non-empty   ${VAR+word}  word when VAR is set

``word`` may itself hold interpolations (``${A:-${B}}``); it is only evaluated when used.
Any other ``$`` is an error, as in Compose ("escape any $ with another $").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(Exception):
    """The template is malformed, or a required variable is missing; str() says which."""


class Interpolator:
    """Interpolates strings against one environment; remembers the unset variables used."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.unset: list[str] = []

    def __call__(self, text: str) -> str:
        if "$" not in text:
            return text
        return self._expand(text, text)

    def _expand(self, text: str, whole: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            dollar = text.find("$", i)
            if dollar < 0:
                out.append(text[i:])
                break
            out.append(text[i:dollar])
            nxt = text[dollar + 1 : dollar + 2]
            if nxt == "$":
                out.append("$")
                i = dollar + 2
            elif nxt == "{":
                end = _closing_brace(text, dollar + 2)
                if end < 0:
                    raise _invalid(whole)
                out.append(self._braced(text[dollar + 2 : end], whole))
                i = end + 1
            else:
                match = _NAME.match(text, dollar + 1)
                if not match:
                    raise _invalid(whole)
                out.append(self._value(match.group()))
                i = match.end()
        return "".join(out)

    def _braced(self, body: str, whole: str) -> str:
        match = _NAME.match(body)
        if not match:
            raise _invalid(whole)
        name, rest = match.group(), body[match.end() :]
        if not rest:
            return self._value(name)
        op = next((o for o in _OPS if rest.startswith(o)), None)
        if op is None:
            raise _invalid(whole)
        word = rest[len(op) :]
        value = self.env.get(name)
        present = value is not None and (value != "" or ":" not in op)
        if op.endswith("-"):
            return value if present and value is not None else self._expand(word, whole)
        if op.endswith("+"):
            return self._expand(word, whole) if present else ""
        if present and value is not None:
            return value
        message = self._expand(word, whole)
        detail = f": {message}" if message else ""
        raise InterpolationError(f"required variable {name} is missing a value{detail}")

    def _value(self, name: str) -> str:
        value = self.env.get(name)
        if value is None:
            if name not in self.unset:
                self.unset.append(name)
            return ""
        return value


def _closing_brace(text: str, start: int) -> int:
    """The index of the } closing a ${ whose body starts at ``start`` (nesting allowed)."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _invalid(whole: str) -> InterpolationError:
    return InterpolationError(
        f'invalid interpolation format "{whole}": you may need to escape any $ with another $'
    )


def escape(text: str) -> str:
    """The inverse of interpolation for a literal string: every $ doubled."""
    return text.replace("$", "$$")
