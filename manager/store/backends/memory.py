"""A backend in a dict: for tests, and for a store that need not outlive its process."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import VersionConflict
from .base import ChangeBatch, Fence, Op, Record


def check_op(op: Op, current: int, revision: int = 0) -> None:
    """Raise VersionConflict unless the object is at the op's expected version (0 = absent).

    Shared by the memory and sqlite backends so both word conflicts alike."""
    if current == op.expected_version:
        return
    if op.expected_version == 0:
        what = "already exists"
    elif current == 0:
        what = "no longer exists"
    else:
        what = f"is at version {current}, not {op.expected_version}"
    raise VersionConflict(
        f"{op.kind} {op.id} {what}", kind=op.kind, id=op.id, revision=revision
    )


class MemoryBackend:
    max_ops: int | None = None

    def __init__(self) -> None:
        self._revision = 0
        self._objects: dict[str, dict[str, Record]] = {}

    async def load(self) -> tuple[int, dict[str, dict[str, Record]]]:
        return self._revision, {kind: dict(objs) for kind, objs in self._objects.items()}

    async def commit(self, ops: list[Op], fence: Fence | None = None) -> int:
        for op in ops:
            current = self._objects.get(op.kind, {}).get(op.id)
            check_op(op, current.version if current else 0, self._revision)
        self._revision += 1
        for op in ops:
            objs = self._objects.setdefault(op.kind, {})
            if op.data is None:
                objs.pop(op.id, None)
            else:
                objs[op.id] = Record(op.data, self._revision)
        return self._revision

    def watch(self) -> AsyncIterator[ChangeBatch] | None:
        return None

    async def request_progress(self) -> None:
        return None

    async def close(self) -> None:
        return None
