"""The watch stream: the events of each commit, then a `Commit` marker.

Policy: publishing never waits. Each watcher has an unbounded queue, so a slow watcher
costs memory, not writer latency; a watcher that stops reading must `close()` its watch.
A watcher filtered by kind gets a `Commit` only for commits that touched one of its kinds.
A commit is queued as one item (its events and the Commit) and handed out one by one by
the reader: a 10,000-task commit is one queue operation, not 10,001.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import Message


@dataclass(frozen=True)
class Event:
    """One object written by a commit. For a delete, `obj` is the object as it was."""

    action: Literal["create", "update", "delete"]
    kind: str
    obj: Message
    old: Message | None


@dataclass(frozen=True)
class Commit:
    """Ends the events of one committed transaction; `revision` is its store revision."""

    revision: int


class Watch:
    def __init__(self, kinds: set[str] | None, on_close: Callable[[Watch], None]):
        self.kinds = frozenset(kinds) if kinds is not None else None
        self._queue: asyncio.Queue[list[Event | Commit] | None] = asyncio.Queue()
        self._ready: deque[Event | Commit] = deque()  # the commit being read
        self._queued = 0  # items in _queue's lists
        self._on_close = on_close
        self._closed = False

    def publish(self, events: Iterable[Event], revision: int) -> None:
        if self._closed:
            return
        kinds = self.kinds
        batch: list[Event | Commit] = [e for e in events if kinds is None or e.kind in kinds]
        if batch:
            batch.append(Commit(revision))
            self._queued += len(batch)
            self._queue.put_nowait(batch)

    def pending(self) -> int:
        """How many items wait to be read (a watcher falling behind shows here)."""
        return self._queued + len(self._ready)

    def close(self) -> None:
        """Stop the stream; an iteration in progress ends after what is already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
            self._on_close(self)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event | Commit:
        if not self._ready:
            batch = await self._queue.get()
            if batch is None:
                self._queue.put_nowait(None)  # later calls end too
                raise StopAsyncIteration
            self._queued -= len(batch)
            self._ready.extend(batch)
        return self._ready.popleft()
