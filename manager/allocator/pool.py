"""A pool of numbered slots (addresses of a subnet, /24s of a range, ports, VNIs), each held
by at most one owner.

Policy: hand out serially, the next free slot after the last one handed out (libnetwork's
serial allocation), so a slot just freed is reused as late as possible: an address that a
stopping container or a peer's stale forwarding entry still uses is not given straight to
someone else. Owners are kept per slot, so releasing is idempotent and never frees a slot
that was meanwhile handed to another owner.

An owner's slots are kept as the slot itself while it holds one (a task's address on a
network: the common case), as a set from its second: a set per task and network was 2.8 MB
of a manager with 10,000 tasks on two overlays (bench/scale.py, tracemalloc).
"""

from __future__ import annotations

import sys


class Pool:
    def __init__(self, size: int, reserved: frozenset[int] = frozenset()) -> None:
        self.size = size
        self.reserved = reserved
        self._owner: dict[int, str] = {}
        self._by_owner: dict[str, int | set[int]] = {}  # (the module says why int)
        self._next = 0

    def __len__(self) -> int:
        """Slots in use (reserved ones not counted)."""
        return len(self._owner)

    @property
    def free(self) -> int:
        return self.size - len(self.reserved) - len(self._owner)

    def owner(self, slot: int) -> str | None:
        return self._owner.get(slot)

    def held(self, owner: str) -> set[int]:
        slots = self._by_owner.get(owner, ())
        return {slots} if isinstance(slots, int) else set(slots)

    def claim(self, slot: int, owner: str) -> bool:
        """Mark `slot` as `owner`'s; False if it is out of range, reserved or someone else's."""
        if not 0 <= slot < self.size or slot in self.reserved:
            return False
        current = self._owner.get(slot)
        if current is not None:
            return current == owner
        owner = sys.intern(owner)
        self._owner[slot] = owner
        slots = self._by_owner.setdefault(owner, slot)
        if isinstance(slots, set):
            slots.add(slot)
        elif slots != slot:
            self._by_owner[owner] = {slots, slot}
        return True

    def take(self, owner: str) -> int | None:
        """The next free slot, now `owner`'s; None when the pool is full."""
        if self.free <= 0:
            return None
        slot = self._next
        for _ in range(self.size):
            if slot not in self._owner and slot not in self.reserved:
                self.claim(slot, owner)
                self._next = (slot + 1) % self.size
                return slot
            slot = (slot + 1) % self.size
        return None

    def release(self, slot: int, owner: str) -> None:
        if self._owner.get(slot) != owner:
            return
        del self._owner[slot]
        slots = self._by_owner[owner]
        if isinstance(slots, int):
            del self._by_owner[owner]
            return
        slots.discard(slot)
        if not slots:
            del self._by_owner[owner]

    def release_owner(self, owner: str) -> None:
        for slot in self.held(owner):
            self._owner.pop(slot, None)
        self._by_owner.pop(owner, None)
