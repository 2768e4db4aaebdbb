"""Which manager leads, and the roster of managers.

On sqlite (or memory) a cluster has one manager: it leads from its start to its stop. On
etcd every manager campaigns (store/backends/etcd_election.py) and the winner takes office:
it starts the orchestrator, allocator, scheduler and dispatcher on its store, which is
already current (every manager's memory view follows etcd's watch), and the store fences
their writes with the term. The term ends when the lease can no longer be vouched for (the
leader died, stalled or lost etcd) or a fenced write found it over; the manager then stops
those components, so its worker sessions end and the nodes move to the new leader
(worker/agent/remotes.py), and campaigns again.

Every manager also registers itself in etcd with a lease of its own. The roster (who leads,
who is registered) is read again every ROSTER_PERIOD: `node ls` shows it as each manager's
status, and sessions hand the managers' addresses to the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyswarm.manager.manager import Manager

ELECTION = "manager"
# Seconds a leader's lease lives without a keep-alive (one every LEASE_TTL/4). A killed
# leader's key is gone 1.5-2.5 s after its last keep-alive (etcd checks expiries every
# 0.5 s), and the candidates watch it: a new leader within 3 s. 2 s is also etcd's own
# minimum with its default timings (1.5 election timeouts, rounded up).
LEASE_TTL = 2
ROSTER_PERIOD = 1.0  # seconds between reads of who leads and who is registered
RETRY = 0.5  # seconds before campaigning again after etcd failed a campaign


def _log(message: str) -> None:
    print(f"pyswarm manager: {message}", flush=True)


@dataclass(frozen=True)
class ManagerStatus:
    leader: bool
    reachability: str  # "reachable" | "unreachable"
    addr: str


def _member(value: bytes | None) -> tuple[str, str] | None:
    try:
        data = json.loads(value or b"")
        return str(data["node_id"]), str(data["addr"])
    except (ValueError, KeyError, TypeError):
        return None


class Terms:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.leader_id = ""
        self.members: dict[str, str] = {}  # node id -> ADDR:PORT of every live manager
        self._tasks: list[asyncio.Task[None]] = []
        self._deposed = asyncio.Event()

    # ---- what others read ---------------------------------------------------------------

    def leader_addr(self) -> str:
        return self.members.get(self.leader_id, "")

    def manager_addrs(self) -> list[str]:
        """Every live manager's address, the leader's first (what sessions give nodes)."""
        addrs = [a for n, a in sorted(self.members.items()) if a and n != self.leader_id]
        lead = self.leader_addr()
        return [lead, *addrs] if lead else addrs

    def status_of(self, node_id: str) -> ManagerStatus:
        addr = self.members.get(node_id, "")
        return ManagerStatus(node_id == self.leader_id,
                             "reachable" if node_id in self.members else "unreachable", addr)

    # ---- lifecycle ----------------------------------------------------------------------

    def _value(self) -> bytes:
        m = self.manager
        return json.dumps({"node_id": m.identity.node_id, "addr": m.addr}).encode()

    async def start(self) -> None:
        m = self.manager
        if not m.store.shared:
            self.leader_id = m.identity.node_id
            self.members = {m.identity.node_id: m.addr}
            await m.take_office(lambda: None)
            return
        backend: Any = m.store.backend
        self._tasks = [
            asyncio.create_task(self._serve_terms(backend), name="leadership"),
            asyncio.create_task(backend.register(m.identity.node_id, self._value(), LEASE_TTL),
                                name="roster registration"),
            asyncio.create_task(self._follow_roster(backend), name="roster"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _serve_terms(self, backend: Any) -> None:
        while True:  # a manager never stops campaigning
            try:
                await self._lead(await backend.campaign(ELECTION, self._value(),
                                                        ttl=LEASE_TTL))
            except Exception as exc:  # noqa: BLE001 - etcd unreachable, or a term's error
                _log(f"cannot campaign or lead ({_why(exc)}); campaigning again")
                await asyncio.sleep(RETRY)

    async def _lead(self, leadership: Any) -> None:
        """Lead until the term ends."""
        m = self.manager
        self._deposed.clear()
        m.store.fence = leadership.fence
        self.leader_id = m.identity.node_id
        self.members[m.identity.node_id] = m.addr
        _log(f"this manager leads (term at etcd revision {leadership.fence.revision})")
        try:
            await m.take_office(self._deposed.set)
            await _first(leadership.lost.wait(), self._deposed.wait())
            why = ("its lease could not be kept alive" if leadership.lost.is_set()
                   else "a write found its term over")
            _log(f"this manager no longer leads: {why}")
        finally:
            m.store.fence = None
            if self.leader_id == m.identity.node_id:
                self.leader_id = ""
            await asyncio.shield(self._end_term(leadership))

    async def _end_term(self, leadership: Any) -> None:
        try:
            await self.manager.leave_office()
        finally:  # whatever happened, the key goes: another manager can lead
            await leadership.resign()

    async def _follow_roster(self, backend: Any) -> None:
        while True:
            try:
                leading, members = await backend.roster(ELECTION)
            except Exception as exc:  # noqa: BLE001 - keep the last roster; try again
                _log(f"cannot read the roster of managers ({_why(exc)})")
            else:
                self.members = {}
                for value in members.values():
                    if (member := _member(value)) is not None:
                        self.members[member[0]] = member[1]
                lead = _member(leading)
                if (lead[0] if lead else "") != self.leader_id:
                    _log(f"the leader is now {lead[1] if lead else 'none (an election)'}")
                self.leader_id = lead[0] if lead else ""
                if lead and lead[1]:
                    self.members.setdefault(lead[0], lead[1])
            await asyncio.sleep(ROSTER_PERIOD)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _why(exc: BaseException) -> str:
    details: Callable[[], str] | None = getattr(exc, "details", None)
    return (details() if details else str(exc)) or type(exc).__name__
