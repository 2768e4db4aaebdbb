"""Where a node's next session goes: the managers it knows, and which one to try next.

A node joins through one manager, and each session's first message lists every live
manager, the leader's first (SessionMessage.managers); the node keeps that list (and, on a
joined node, saves it in join.json for its next start). A session goes to:
- the manager a follower named as the leader, when the last attempt was refused that way
  (UNAVAILABLE with the leader's address: manager/servicers.py);
- otherwise the manager the last session went to, as long as it works;
- after a failure, the next manager of the list, round the list: a dead manager costs one
  failed attempt, not a wait for it to come back.
A manager node's own agent has `LOCAL` first: its own manager over the daemon's Unix
socket, which serves it whenever it leads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

LOCAL = "local"


class Remotes:
    def __init__(self, addrs: Iterable[str], *, local: bool = False, own: str = "",
                 on_learned: Callable[[list[str]], None] | None = None) -> None:
        self._local = local
        self._own = own  # this manager's own address: reached as LOCAL instead
        self._on_learned = on_learned
        self._addrs = self._ordered(addrs)
        self._i = 0
        self._hint = ""

    def _ordered(self, addrs: Iterable[str]) -> list[str]:
        out = [LOCAL] if self._local else []
        for addr in addrs:
            if addr and addr != self._own and addr != LOCAL and addr not in out:
                out.append(addr)
        return out

    @property
    def addrs(self) -> list[str]:
        return list(self._addrs)

    def pick(self) -> str:
        """The manager the next session goes to."""
        if self._hint:
            return self._hint
        return self._addrs[self._i % len(self._addrs)] if self._addrs else ""

    def worked(self, addr: str) -> None:
        """A session to `addr` opened: stay with it."""
        if addr in self._addrs:
            self._i = self._addrs.index(addr)
        self._hint = ""

    def failed(self, addr: str) -> None:
        """A session to `addr` failed (or could not open): the next one tries another."""
        if addr == self._hint:  # the list resumes where it was
            self._hint = ""
        elif addr in self._addrs:
            self._i = self._addrs.index(addr) + 1

    def redirected(self, addr: str, leader: str) -> None:
        """`addr` is not the leader and said the leader is at `leader`."""
        self.failed(addr)
        if leader and leader != addr:
            self._hint = LOCAL if leader == self._own and self._local else leader

    def learned(self, managers: Iterable[str]) -> None:
        """A session's list of live managers (the leader's first)."""
        current = self.pick()
        addrs = self._ordered(managers)
        if not addrs or addrs == self._addrs:
            return
        self._addrs = addrs
        self._i = addrs.index(current) if current in addrs else 0
        if self._on_learned is not None:
            self._on_learned([a for a in addrs if a != LOCAL])
