"""The node's place in a cluster: the manager it may host and the agent it runs.

`pyswarm init` makes this node the first manager of a new cluster (and, like Docker
Swarm, a worker too): the manager's identity is written to `<root>/manager/cluster.json`
and a daemon that finds it at boot starts the manager and the agent again. The node's id
lives in `<root>/node_id` and never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from pyswarm.common.errors import Conflict, InvalidArgument
from pyswarm.common.paths import EngineConfig
from pyswarm.manager.control import new_cluster_id
from pyswarm.manager.manager import ClusterIdentity, Manager
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.agent import Agent
from pyswarm.worker.agent.lb_sync import LBSync
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.logs import LogLine, LogReader
from pyswarm.worker.engine.service import LOG_POLL, ExitWatcher
from pyswarm.worker.network.lb import ServiceLB


class ClusterHost:
    def __init__(self, cfg: EngineConfig, engine: Engine, watcher: ExitWatcher) -> None:
        self.cfg = cfg
        self.engine = engine
        self.watcher = watcher
        self.manager: Manager | None = None
        self.agent: Agent | None = None
        self.lb: ServiceLB | None = None
        self._agent_run: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def state_dir(self) -> Path:
        return self.cfg.root / "manager"

    def node_id(self) -> str:
        path = self.cfg.root / "node_id"
        if not path.exists():
            path.write_text(secrets.token_hex(13))
        return path.read_text().strip()

    @property
    def join_file(self) -> Path:
        return self.cfg.root / "join.json"

    async def boot(self) -> None:
        identity = ClusterIdentity.load(self.state_dir)
        if identity is not None:
            await self._start_manager(identity)
            self._start_agent(identity.node_id)
        elif self.join_file.exists():
            addr = json.loads(self.join_file.read_text())["addr"]
            self._start_agent(self.node_id(), addr)

    async def join(self, request: cpb.JoinRequest) -> cpb.JoinResponse:
        """Become a worker of the manager at `addr` (for now a Unix socket on this machine)."""
        async with self._lock:
            if self.manager is not None or self.agent is not None:
                raise Conflict("this node is already part of a cluster")
            addr = request.addr
            if not addr.startswith("unix://") or not Path(addr[len("unix://"):]).is_socket():
                raise InvalidArgument(
                    f'cannot join "{addr}": give the manager daemon\'s socket as '
                    f"unix:///PATH (remote joins over TCP come with the multi-node work)")
            if Path(addr[len("unix://"):]).resolve() == self.cfg.socket_path.resolve():
                raise InvalidArgument("a node cannot join itself: use pyswarm init")
            tmp = self.join_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"addr": addr}))
            tmp.replace(self.join_file)
            self._start_agent(self.node_id(), addr)
            return cpb.JoinResponse(node_id=self.node_id())

    async def init_cluster(self, request: cpb.InitRequest) -> cpb.InitResponse:
        async with self._lock:
            if self.manager is not None:
                raise Conflict("this node is already part of a cluster: it is its manager")
            url = request.store_url or "sqlite"
            if not (url in ("sqlite", "memory") or url.startswith(("sqlite://", "etcd://"))):
                raise InvalidArgument(
                    f'invalid --store "{url}": use sqlite (the default) or '
                    f"etcd://HOST:PORT[,HOST:PORT...]")
            identity = ClusterIdentity(new_cluster_id(), self.node_id(), url)
            await self._start_manager(identity)  # fails before anything is written
            identity.save(self.state_dir)
            self._start_agent(identity.node_id)
            return cpb.InitResponse(node_id=identity.node_id, cluster_id=identity.cluster_id)

    async def _start_manager(self, identity: ClusterIdentity) -> None:
        try:
            manager = await asyncio.wait_for(Manager.open(identity, self.state_dir), 30)
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise InvalidArgument(f"cannot open the store {identity.store_url}: {exc}") from None
        await manager.start()
        self.manager = manager

    def _start_agent(self, node_id: str, manager_addr: str = "") -> None:
        target = manager_addr or f"unix://{self.cfg.socket_path}"
        self.lb = ServiceLB(self.engine.network)
        sync = LBSync(self.lb)
        self.agent = Agent(self.engine, self.watcher, node_id,
                           lambda: grpc.aio.insecure_channel(target), addr="",
                           on_tasks_changed=sync.update, before_report=sync.settled)
        self._agent_run = asyncio.create_task(self.agent.run(), name="agent")

    async def log_stream(self, task: opb.Task, follow: bool, tail: int) -> AsyncIterator[LogLine]:
        """A task's output, from this node's engine (tasks of other nodes: later)."""
        cid = task.status.container.container_id
        if not cid:
            return
        if task.node_id != self.node_id():
            # Relaying logs from other nodes (SwarmKit's log broker) is not built yet: say so
            # rather than show a silently partial log.
            yield LogLine("stderr", f"pyswarm: this task runs on node {task.node_id}; its "
                          f"logs are kept there (not yet relayed to the manager)\n".encode(),
                          "")
            return
        reader = LogReader(self.engine.bundle(cid))
        try:
            for line in await asyncio.to_thread(reader.initial, tail):
                yield line
            while follow:
                await asyncio.sleep(LOG_POLL)
                for line in reader.poll():
                    yield line
                with contextlib.suppress(Exception):
                    if self.engine.resolve(cid).state != "running":
                        for line in reader.poll():
                            yield line
                        return
        finally:
            reader.close()

    async def close(self) -> None:
        if self._agent_run is not None:
            self._agent_run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._agent_run
        if self.agent is not None:
            await self.agent.close()
        if self.lb is not None:
            self.lb.close()
        if self.manager is not None:
            await self.manager.stop()
