"""Container names: validated the way Docker validates them, generated the way it does."""

from __future__ import annotations

import re
import secrets

from pyswarm.common.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

_LEFT = (
    "brave calm clever eager fervent focused gallant happy jolly keen loving modest nifty "
    "quirky relaxed serene sharp stoic tender vibrant wise zealous bold crisp"
).split()
_RIGHT = (
    "babbage bohr curie darwin dijkstra einstein euler fermi galileo hopper kepler knuth "
    "lamport liskov lovelace mccarthy newton noether pascal ritchie shannon thompson turing"
).split()


def validate_name(name: str) -> str:
    name = name.removeprefix("/")
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f'invalid container name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, '
            f"at least two characters"
        )
    return name


def generate_name(taken: set[str]) -> str:
    """adjective_scientist, like Docker; a numeric suffix once the pairs run out."""
    for _ in range(100):
        name = f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
        if name not in taken:
            return name
    return f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}{secrets.randbelow(10_000)}"
