"""A manager: the store and the components that run on it.

    store ─▶ orchestrator (services → NEW tasks)
          ─▶ allocator    (subnets, VIPs, ports; NEW tasks → addresses → PENDING)
          ─▶ scheduler    (pending tasks → nodes)
          ─▶ dispatcher   (tasks → worker sessions; heartbeats; task status → store)
    control API ─▶ store

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

from pyswarm.manager.config import ManagerConfig
from pyswarm.manager.dispatcher.dispatcher import Dispatcher
from pyswarm.manager.loops.allocator import AllocatorLoop
from pyswarm.manager.loops.orchestrator import Orchestrator
from pyswarm.manager.loops.scheduler import Scheduler
from pyswarm.manager.store import Store, open_backend


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
    def __init__(self, identity: ClusterIdentity, store: Store, cfg: ManagerConfig) -> None:
        self.identity = identity
        self.store = store
        self.cfg = cfg
        self.dispatcher = Dispatcher(store, cfg, {identity.node_id})
        self.orchestrator = Orchestrator(store)
        self.allocator = AllocatorLoop(store)
        self.scheduler = Scheduler(store)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, identity: ClusterIdentity, state_dir: Path,
                   cfg: ManagerConfig | None = None) -> Manager:
        backend = open_backend(identity.store_url, state_dir)
        store = await Store.open(backend)
        return cls(identity, store, cfg or ManagerConfig())

    async def start(self) -> None:
        await self.dispatcher.start()
        for name, loop in (("orchestrator", self.orchestrator.run),
                           ("allocator", self.allocator.run),
                           ("scheduler", self.scheduler.run)):
            self._tasks.append(asyncio.create_task(_supervise(name, loop), name=name))

    async def stop(self) -> None:
        await self.dispatcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()


async def _supervise(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a manager loop; if it crashes (a bug), say so and start it again: a loop that is
    down leaves the cluster unreconciled, which is worse than a loop that retries."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            print(f"pyswarm manager: the {name} loop crashed, restarting it: {exc!r}",
                  flush=True)
            traceback.print_exc()
            await asyncio.sleep(1.0)
