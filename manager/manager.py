"""A manager: the store and the components that run on it.

    store ─▶ orchestrator (services → NEW tasks)
          ─▶ allocator    (subnets, VIPs, ports; NEW tasks → addresses → PENDING)
          ─▶ scheduler    (pending tasks → nodes)
          ─▶ dispatcher   (tasks → worker sessions; heartbeats; task status → store)
    control API ─▶ store

Every manager serves the control API; only the leader runs the four components above
(leadership.py: always the one manager on sqlite, the elected one on etcd).

The cluster's identity (cluster id, this node's id, where the store lives) is kept in
`<root>/manager/cluster.json`; a daemon that finds it starts the manager again at boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pyswarm.common.errors import Unavailable
from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher.dispatcher import Dispatcher
from pyswarm.manager.dispatcher.probe import IngressProbe
from pyswarm.manager.leadership import Terms
from pyswarm.manager.loops.allocator import AllocatorLoop
from pyswarm.manager.loops.orchestrator import Orchestrator
from pyswarm.manager.loops.scheduler import Scheduler
from pyswarm.manager.store import Store, open_backend
from pyswarm.manager.store.errors import NotLeader


@dataclass(frozen=True)
class ClusterIdentity:
    cluster_id: str
    node_id: str
    store_url: str

    @classmethod
    def load(cls, state_dir: Path) -> ClusterIdentity | None:
        try:
            data = json.loads((state_dir / "cluster.json").read_text())
        except FileNotFoundError:
            return None
        return cls(data["cluster_id"], data["node_id"], data.get("store_url", "sqlite"))

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(self.__dict__))
        os.replace(tmp, state_dir / "cluster.json")


class Manager:
    """One manager. It always serves the API from its store; while it leads (always, on
    sqlite; after winning the election, on etcd: leadership.py) it also runs the
    orchestrator, allocator, scheduler and dispatcher, fresh for each term."""

    def __init__(self, identity: ClusterIdentity, store: Store, cfg: ManagerConfig,
                 addr: str = "") -> None:
        self.identity = identity
        self.store = store
        self.cfg = cfg
        self.addr = addr  # ADDR:PORT where nodes reach this manager ("" until it serves)
        self.dispatcher: Dispatcher | None = None  # while leading
        self.probe: IngressProbe | None = None
        self.terms = Terms(self)
        self._loops: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, identity: ClusterIdentity, state_dir: Path,
                   cfg: ManagerConfig | None = None, addr: str = "") -> Manager:
        backend = open_backend(identity.store_url, state_dir)
        store = await Store.open(backend)
        return cls(identity, store, cfg or ManagerConfig(), addr)

    @property
    def is_leader(self) -> bool:
        return self.dispatcher is not None

    def use_probe(self, probe: IngressProbe) -> None:
        """Measure heartbeats' delay inside this manager (dispatcher/probe.py)."""
        self.probe = probe
        probe.start()
        if self.dispatcher is not None:
            self.dispatcher.probe = probe

    async def start(self) -> None:
        await self.terms.start()

    async def take_office(self, deposed: Callable[[], None]) -> None:
        """Start the leader's components on the store as it is now. `deposed` is called
        when one of them finds that this manager's term has ended (a NotLeader write)."""
        dispatcher = Dispatcher(self.store, self.cfg, {self.identity.node_id},
                                managers=self.terms.manager_addrs, deposed=deposed)
        dispatcher.probe = self.probe
        # on a shared store this may be a takeover: the nodes are looking for the leader
        await dispatcher.start(self.cfg.takeover_grace if self.store.shared else None)
        self.dispatcher = dispatcher
        for name, loop in (("orchestrator", Orchestrator(self.store).run),
                           ("allocator", AllocatorLoop(self.store).run),
                           ("scheduler", Scheduler(self.store).run)):
            self._loops.append(asyncio.create_task(_supervise(name, loop, deposed), name=name))

    async def leave_office(self) -> None:
        """Stop the leader's components: their sessions end, their passes are cancelled."""
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            await dispatcher.stop()

    async def stop(self) -> None:
        await self.terms.stop()
        await self.leave_office()
        if self.probe is not None:
            await self.probe.stop()
        await self.store.close()


async def _supervise(name: str, loop: Callable[[], Awaitable[None]],
                     deposed: Callable[[], None]) -> None:
    """Run a manager loop; if it crashes (a bug), say so and start it again: a loop that is
    down leaves the cluster unreconciled, which is worse than a loop that retries. A loop
    whose write found this manager's term over ends the term (NotLeader)."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except NotLeader:
            deposed()
            return
        except Unavailable as exc:  # etcd lost for a moment: the next pass starts over
            print(f"pyswarm manager: the {name} loop stopped: {exc}; restarting it",
                  flush=True)
            await asyncio.sleep(0.5)
            continue
        except Exception as exc:  # noqa: BLE001
            print(f"pyswarm manager: the {name} loop crashed, restarting it: {exc!r}",
                  flush=True)
            traceback.print_exc()
            await asyncio.sleep(1.0)
