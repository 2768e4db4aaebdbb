"""Reading ``.env`` and ``env_file`` files: one ``KEY=VALUE`` a line.

Policy (Compose's): blank lines and lines starting with ``#`` are skipped; an ``export``
prefix is allowed; a value wrapped in matching single or double quotes is unwrapped (double
quotes also understand \\n, \\t, \\" and \\\\); otherwise an unquoted `` #`` starts a comment.
A line with a key alone takes the value from the environment, or is dropped when unset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class EnvFileError(Exception):
    """A line is malformed; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_env_file(text: str, env: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not _KEY.match(key):
            raise EnvFileError(number, f'invalid variable name "{key}"')
        if not sep:
            if key in env:
                values[key] = env[key]
            continue
        values[key] = _value(value.strip(), number)
    return values


def _value(text: str, number: int) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        if text[0] == "'":
            return inner
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), inner)
    if text[:1] in "'\"":
        raise EnvFileError(number, f"unterminated quoted value: {text}")
    comment = re.search(r"\s#", text)
    return text[: comment.start()].rstrip() if comment else text
