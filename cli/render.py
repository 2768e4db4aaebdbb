"""Output the docker way: aligned tables for people, ``--format json`` for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: Any = None) -> None:
    """Columns separated by three spaces, the last one unpadded (docker's tabwriter look)."""
    out = out or sys.stdout
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        out.write("   ".join(cells).rstrip() + "\n")


def json_lines(items: Iterable[dict[str, Any]], out: Any = None) -> None:
    """One JSON object per line, as ``docker ps --format json`` prints."""
    out = out or sys.stdout
    for item in items:
        out.write(json.dumps(item, sort_keys=True) + "\n")


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """Docker's HumanDuration: 'Less than a second', '3 seconds', 'About a minute', ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    days = hours // 24
    if days < 14:
        return f"{days} days"
    return f"{days // 7} weeks"


def ago(text: str) -> str:
    when = parse_time(text)
    if when is None:
        return ""
    return human_duration((datetime.now(UTC) - when).total_seconds()) + " ago"


def since(text: str) -> str:
    when = parse_time(text)
    return human_duration((datetime.now(UTC) - when).total_seconds()) if when else ""


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
