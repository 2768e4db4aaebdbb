"""RFC 3339 strings (as the protos carry them) → epoch seconds for the pure decision code."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str) -> float:
    """``"2024-05-01T12:00:00.5Z"`` → epoch seconds; ``""`` (never set) → 0.0.

    A value that does not parse also gives 0.0: the decision code treats it as "long ago"
    rather than failing a whole reconcile over one bad timestamp.
    """
    if not text:
        return 0.0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(seconds: float) -> str:
    """Epoch seconds → RFC 3339 UTC (for tests and for callers writing statuses)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
