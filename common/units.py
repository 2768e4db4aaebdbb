"""Parsing the units users type: sizes (``64m``, ``1.5g``), CPU counts (``0.5``), signals.

Docker's rules: a size is a number with an optional unit b, k, m, g (case-insensitive, an
optional trailing ``b``/``ib``), powers of 1024. Every error names the bad value.
"""

from __future__ import annotations

import re
import signal

from pyswarm.common.errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, *, what: str = "size") -> int:
    """``"64m"`` → 67108864. Raises InvalidArgument naming ``what`` and the value."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidArgument(
            f'invalid {what} "{text}": expected a number with an optional unit b, k, m or g '
            f'(for example 64m)'
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_cpus(text: str) -> float:
    """``"0.5"`` → 0.5; must be a positive decimal number."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(
            f'invalid --cpus "{text}": expected a decimal number such as 0.5'
        ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidArgument(f'invalid --cpus "{text}": must be a number greater than 0')
    return value


def parse_signal(text: str) -> int:
    """``"SIGTERM"``, ``"TERM"`` or ``"15"`` → 15."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        if not name.startswith("SIG"):
            name = "SIG" + name
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise InvalidArgument(f'invalid signal "{text}"')


def format_size(n: float) -> str:
    """Human size the way docker prints it: ``4.19MB`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"
