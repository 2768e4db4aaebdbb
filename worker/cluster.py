"""The node's place in a cluster: the manager it may host and the agent it runs.

`pyswarm init` makes this node the first manager of a new cluster (and, like Docker
Swarm, a worker too): the cluster's root CA and join tokens go to the store, the manager's
identity to `<root>/manager/cluster.json` and its TLS port to `<root>/manager/endpoint.json`;
a daemon that finds them at boot starts the manager, its TLS port and the agent again.

`pyswarm join --token T ADDR` makes it a node of another manager's cluster: the daemon gets
a certificate from that manager's NodeCA (membership.py), keeps it under
`<root>/certificates/` with the manager's address in `<root>/join.json`, and runs its agent
over mutual TLS; a restart resumes from those files. The node's id lives in `<root>/node_id`
(for a joined node, the id the manager chose).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from pyswarm.common import pki
from pyswarm.common.errors import Conflict, FailedPrecondition, InvalidArgument
from pyswarm.common.paths import EngineConfig
from pyswarm.manager.control import new_cluster_id
from pyswarm.manager.dispatcher.probe import IngressProbe
from pyswarm.manager.manager import ClusterIdentity, Manager
from pyswarm.manager.security import ca
from pyswarm.manager.security.endpoint import TLSEndpoint, format_addr, parse_listen_addr
from pyswarm.manager.security.guard import AuthInterceptor
from pyswarm.manager.store import WriteTx
from pyswarm.proto import ca_pb2
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker import membership
from pyswarm.worker.agent.agent import Agent, describe_node
from pyswarm.worker.agent.lb_sync import LBSync
from pyswarm.worker.agent.remotes import LOCAL, Remotes
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.logs import LogLine, LogReader
from pyswarm.worker.engine.service import LOG_POLL, ExitWatcher
from pyswarm.worker.membership import JoinState, NodeCerts
from pyswarm.worker.network.dns import configured_upstreams
from pyswarm.worker.network.lb import ServiceLB
from pyswarm.worker.network.overlay_sync import OverlaySync

RENEW_CHECK = 3600.0  # seconds between checks whether the node certificate is due
# `init` returns once this node is in the store (`node ls` shows it), waiting at most this
# long: on etcd the election comes first. Past it, init still succeeds.
REGISTER_WAIT = 15.0
NO_ADVERTISE = ("could not find this system's IP address (it has no default route): "
                "specify one with --advertise-addr")


def _log(message: str) -> None:
    print(f"pyswarm daemon: {message}", flush=True)


@dataclass(frozen=True)
class ManagerEndpoint:
    """Where this manager serves remote nodes, and the address it gives them."""

    listen_addr: str  # "IP:PORT"
    advertise_addr: str  # IP

    @classmethod
    def load(cls, state_dir: Path) -> ManagerEndpoint | None:
        try:
            data = json.loads((state_dir / "endpoint.json").read_text())
        except FileNotFoundError:
            return None
        return cls(data["listen_addr"], data["advertise_addr"])

    def nodes_addr(self) -> str:
        """ADDR:PORT where other nodes reach this manager."""
        host, port = parse_listen_addr(self.listen_addr)
        return format_addr(self.advertise_addr or host, port)

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / "endpoint.json.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(state_dir / "endpoint.json")


class ClusterHost:
    def __init__(self, cfg: EngineConfig, engine: Engine, watcher: ExitWatcher) -> None:
        self.cfg = cfg
        self.engine = engine
        self.watcher = watcher
        self.manager: Manager | None = None
        self.agent: Agent | None = None
        self.lb: ServiceLB | None = None
        self.overlay_sync: OverlaySync | None = None
        self.endpoint: TLSEndpoint | None = None
        self.manager_endpoint: ManagerEndpoint | None = None
        self.join_state: JoinState | None = None
        self._certs: NodeCerts | None = None
        self._agent_run: asyncio.Task[None] | None = None
        self._renewals: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def state_dir(self) -> Path:
        return self.cfg.root / "manager"

    def node_id(self) -> str:
        path = self.cfg.root / "node_id"
        if not path.exists():
            path.write_text(secrets.token_hex(13))
        return path.read_text().strip()

    def manager_addr(self) -> str:
        """ADDR:PORT that `pyswarm join` is given for this manager."""
        return self.manager_endpoint.nodes_addr() if self.manager_endpoint else ""

    # ---- boot ------------------------------------------------------------------------------

    async def boot(self) -> None:
        identity = ClusterIdentity.load(self.state_dir)
        if identity is not None:
            endpoint = ManagerEndpoint.load(self.state_dir) or ManagerEndpoint(
                f"0.0.0.0:{membership.DEFAULT_PORT}", membership.default_route_addr() or "")
            self.manager_endpoint = endpoint
            await self._start_manager(identity, self.manager_addr())
            assert self.manager is not None
            await self.manager.store.update(lambda tx: _ensure_cluster(tx, identity.cluster_id),
                                            retries=3)  # a cluster made before the CA existed
            self._certs = NodeCerts.load(self.cfg.root)
            if self._certs is None or self._certs.identity.cluster_id != identity.cluster_id:
                self._certs = self._sign_own(identity)
                self._certs.save(self.cfg.root)
            try:
                await self._serve_tls(parse_listen_addr(endpoint.listen_addr))
            except OSError as exc:
                _log(f"cannot listen on {endpoint.listen_addr} ({exc.strerror or exc}): remote "
                     f"nodes cannot reach this manager until the daemon restarts")
            self._start_agent(identity.node_id, self._manager_node_channel,
                              endpoint.advertise_addr, self._manager_remotes())
        else:
            state, certs = JoinState.load(self.cfg.root), NodeCerts.load(self.cfg.root)
            if state is None or certs is None:
                if state is not None or certs is not None:
                    _log("this node's join state is incomplete (join.json or certificates/ "
                         "missing): it is not part of a cluster; join it again")
                return
            self.join_state, self._certs = state, certs
            self._start_agent(certs.identity.node_id, self._manager_channel,
                              state.advertise_addr, self._worker_remotes(state))
        self._renewals = asyncio.create_task(self._renew_loop(), name="certificate renewal")

    # ---- init ------------------------------------------------------------------------------

    async def init_cluster(self, request: cpb.InitRequest) -> cpb.InitResponse:
        async with self._lock:
            self._check_not_member()
            url = request.store_url or "sqlite"
            if not (url in ("sqlite", "memory") or url.startswith(("sqlite://", "etcd://"))):
                raise InvalidArgument(
                    f'invalid --store "{url}": use sqlite (the default) or '
                    f"etcd://HOST:PORT[,HOST:PORT...]")
            try:
                listen = parse_listen_addr(request.listen_addr)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            if request.advertise_addr:
                advertise = membership.check_ip(request.advertise_addr, "--advertise-addr")
            else:
                advertise = membership.default_route_addr() or ""
                if not advertise:
                    raise InvalidArgument(NO_ADVERTISE)
            identity = ClusterIdentity(new_cluster_id(), self.node_id(), url)
            cluster = ca.new_cluster(identity.cluster_id)
            endpoint = ManagerEndpoint(format_addr(*listen), advertise)
            # (fails before anything is written)
            await self._start_manager(identity, endpoint.nodes_addr())
            manager = self.manager
            assert manager is not None

            async def store_the_cluster() -> None:
                await manager.store.update(lambda tx: ca.create_cluster(tx, cluster))

            await self._serve_as_manager(listen, endpoint,
                                         lambda: self._sign_own(identity, cluster),
                                         store_the_cluster)
            identity.save(self.state_dir)  # last: it is what marks this node a manager
            self._start_agent(identity.node_id, self._manager_node_channel, advertise,
                              self._manager_remotes())
            self._renewals = asyncio.create_task(self._renew_loop(), name="certificate renewal")
            await _registered(manager, identity.node_id, REGISTER_WAIT)
            return cpb.InitResponse(node_id=identity.node_id, cluster_id=identity.cluster_id)

    async def _serve_as_manager(self, listen: tuple[str, int], endpoint: ManagerEndpoint,
                                certs: Callable[[], NodeCerts],
                                then: Callable[[], Awaitable[None]] | None = None) -> None:
        """The started manager's TLS port, with its certificate, and its files kept (then
        `then`); on any failure the manager is stopped and none of its files is left."""
        try:
            self._certs = certs()
            try:
                await self._serve_tls(listen)
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot listen on {format_addr(*listen)}: {exc.strerror or exc}; "
                    f"choose another address with --listen-addr") from None
            self._certs.save(self.cfg.root)
            endpoint.save(self.state_dir)
            if then is not None:
                await then()
        except BaseException:
            await self._stop_manager()
            membership.remove_certs(self.cfg.root)
            (self.state_dir / "endpoint.json").unlink(missing_ok=True)
            raise
        self.manager_endpoint = endpoint

    def _sign_own(self, identity: ClusterIdentity,
                  cluster: opb.Cluster | None = None) -> NodeCerts:
        """The manager node's certificate, signed by the cluster's CA right here."""
        assert self.manager is not None
        cluster = cluster or ca.cluster_of(self.manager.store.view())
        root = pki.RootCA(cluster.root_ca.ca_cert, cluster.root_ca.ca_key)
        key = pki.new_key()
        cert = root.sign_node(pki.make_csr(key), identity.node_id, "manager", cluster.id)
        return NodeCerts(pki.key_pem(key), cert, root.cert_pem)

    async def _start_manager(self, identity: ClusterIdentity, addr: str) -> None:
        try:
            manager = await asyncio.wait_for(
                Manager.open(identity, self.state_dir, addr=addr), 30)
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise InvalidArgument(f"cannot open the store {identity.store_url}: {exc}") from None
        await manager.start()
        self.manager = manager

    async def _stop_manager(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
            self.endpoint = None
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        self._certs = None

    async def _serve_tls(self, listen: tuple[str, int]) -> None:
        from pyswarm.manager.servicers import (
            ControlServicer,
            DispatcherServicer,
            NodeCAServicer,
            add_dispatcher,
        )
        from pyswarm.proto import ca_pb2_grpc, cluster_pb2_grpc

        def add_servicers(server: grpc.aio.Server) -> None:
            cluster_pb2_grpc.add_ControlServicer_to_server(ControlServicer(self), server)
            add_dispatcher(DispatcherServicer(self), server)
            ca_pb2_grpc.add_NodeCAServicer_to_server(NodeCAServicer(self), server)
            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)

        endpoint = TLSEndpoint(listen, self.cfg.run_dir, self._credentials, add_servicers,
                               AuthInterceptor(lambda: self.manager))
        await endpoint.start()
        self.endpoint = endpoint
        if self.manager is not None:
            # Heartbeats' delay inside this manager, measured on their own path (probe.py).
            target = format_addr(_reachable(listen[0]), listen[1])
            certs = self._credentials
            self.manager.use_probe(IngressProbe(
                lambda: NodeCerts(*certs()).channel(target)))

    def _credentials(self) -> tuple[bytes, bytes, bytes]:
        assert self._certs is not None
        return self._certs.key, self._certs.cert, self._certs.ca

    # ---- join ------------------------------------------------------------------------------

    async def join(self, request: cpb.JoinRequest) -> cpb.JoinResponse:
        """Become a node of the cluster whose manager serves at `addr` (ca.proto's steps)."""
        async with self._lock:
            self._check_not_member()
            if not request.token:
                raise InvalidArgument('a join needs --token: print it on a manager with '
                                      '"pyswarm join-token worker"')
            token = pki.parse_token(request.token)
            host, port = membership.parse_manager_addr(request.addr)
            advertise = (membership.check_ip(request.advertise_addr, "--advertise-addr")
                         if request.advertise_addr else "")
            if request.listen_addr:
                try:
                    parse_listen_addr(request.listen_addr)
                except ValueError as exc:
                    raise InvalidArgument(str(exc)) from None
            ca_pem, local_addr = await asyncio.to_thread(
                membership.fetch_root_ca, host, port, token)
            certs, answer = await membership.request_certificate(
                host, port, ca_pem, request.token, describe_node().hostname)
            if answer.role == "manager":
                return await self._join_as_manager(request, answer, certs,
                                                   membership.target(host, port),
                                                   advertise or local_addr)
            state = JoinState(membership.target(host, port), advertise or local_addr,
                              request.listen_addr)
            try:  # join.json last: it is what marks this node as joined
                certs.save(self.cfg.root)
                (self.cfg.root / "node_id").write_text(answer.node_id)
                state.save(self.cfg.root)
            except OSError:
                membership.remove_certs(self.cfg.root)
                raise
            self.join_state, self._certs = state, certs
            self._start_agent(answer.node_id, self._manager_channel, state.advertise_addr,
                              self._worker_remotes(state))
            self._renewals = asyncio.create_task(self._renew_loop(), name="certificate renewal")
            _log(f"joined the swarm of {state.manager_addr} as {answer.role} {answer.node_id}, "
                 f"advertising {state.advertise_addr}")
            return cpb.JoinResponse(node_id=answer.node_id, role=answer.role)

    async def _join_as_manager(self, request: cpb.JoinRequest,
                               answer: ca_pb2.IssueNodeCertificateResponse, certs: NodeCerts,
                               via: str, advertise: str) -> cpb.JoinResponse:
        """A manager join: this node opens the store the managers share (the answer names
        it), serves the TLS port like the first manager, and campaigns for leadership."""
        if not answer.store_url.startswith("etcd://"):
            raise FailedPrecondition(f"the manager at {via} admitted this node as a manager "
                                     f"but named no shared store to open (an older pyswarm?)")
        try:
            listen = parse_listen_addr(request.listen_addr or
                                       f"0.0.0.0:{membership.DEFAULT_PORT}")
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        identity = ClusterIdentity(answer.cluster_id, answer.node_id, answer.store_url)
        endpoint = ManagerEndpoint(format_addr(*listen), advertise)
        (self.cfg.root / "node_id").write_text(answer.node_id)
        await self._start_manager(identity, endpoint.nodes_addr())
        await self._serve_as_manager(listen, endpoint, lambda: certs)
        identity.save(self.state_dir)  # last: it is what marks this node a manager
        remotes = self._manager_remotes()
        remotes.learned([via])
        self._start_agent(identity.node_id, self._manager_node_channel, advertise, remotes)
        self._renewals = asyncio.create_task(self._renew_loop(), name="certificate renewal")
        _log(f"joined the swarm of {via} as manager {answer.node_id} (store "
             f"{identity.store_url}), serving nodes at {endpoint.nodes_addr()}")
        return cpb.JoinResponse(node_id=answer.node_id, role=answer.role)

    def _check_not_member(self) -> None:
        if self.manager is not None:
            raise Conflict("this node is already part of a swarm: it is its manager")
        if self.agent is not None:
            raise Conflict("this node is already part of a swarm")

    # ---- the agent -------------------------------------------------------------------------

    def _manager_node_channel(self, target: str) -> grpc.aio.Channel:
        """A manager's own agent talks to its own manager over the daemon's root-only
        socket (LOCAL), and to the leader, when it is another manager, like a worker."""
        if target == LOCAL:
            return grpc.aio.insecure_channel(f"unix://{self.cfg.socket_path}",
                                             options=membership.SESSION_OPTIONS)
        return self._manager_channel(target)

    def _manager_channel(self, target: str) -> grpc.aio.Channel:
        """Mutual TLS with the node's current certificate (renewals apply on reconnect)."""
        assert self._certs is not None
        return self._certs.channel(target)

    def _manager_remotes(self) -> Remotes:
        return Remotes([], local=True, own=self.manager_addr())

    def _worker_remotes(self, state: JoinState) -> Remotes:
        def keep(managers: list[str]) -> None:  # for the next start: any of them will do
            if self.join_state is not None:
                self.join_state = replace(self.join_state, managers=tuple(managers))
                self.join_state.save(self.cfg.root)

        return Remotes(state.managers or (state.manager_addr,), on_learned=keep)

    def _start_agent(self, node_id: str, channel_factory: Callable[[str], grpc.aio.Channel],
                     addr: str, remotes: Remotes) -> None:
        """The agent, with its hooks: the load balancer follows the node's tasks and the
        cluster's NetworkState; the overlays and service DNS follow the NetworkState, with
        this node's advertise address as the VXLAN tunnels' source."""
        self.lb = ServiceLB(self.engine.network)
        self.overlay_sync = OverlaySync(self.engine.network, local_addr=addr,
                                        upstreams=configured_upstreams(self.cfg.dns_upstreams))
        overlay_sync = self.overlay_sync
        # The overlay bridges exist before anything is balanced into them.
        lb_sync = LBSync(self.lb, node_id, networks_ready=overlay_sync.settled)

        def on_network_state(state: cpb.NetworkState) -> None:
            overlay_sync.update(state)
            lb_sync.update_network(state)

        self.agent = Agent(self.engine, self.watcher, node_id, channel_factory, addr=addr,
                           remotes=remotes,
                           on_tasks_changed=lb_sync.update, before_report=lb_sync.settled,
                           on_network_state=on_network_state)
        self._agent_run = asyncio.create_task(self.agent.serve(), name="agent")

    # ---- certificate renewal ---------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            try:
                await self._renew_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next check
                _log(f"certificate renewal failed (retrying in {RENEW_CHECK:g} s): {exc}")
            await asyncio.sleep(RENEW_CHECK)

    async def _renew_if_due(self) -> None:
        certs = self._certs
        if certs is None or not certs.needs_renewal():
            return
        if self.manager is not None:
            identity = self.manager.identity
            fresh = self._sign_own(identity)
        else:
            assert self.join_state is not None
            fresh = await membership.renew_certificate(self.join_state.manager_addr, certs)
        await asyncio.to_thread(fresh.save, self.cfg.root)
        self._certs = fresh
        _log(f"renewed this node's certificate (valid until {fresh.identity.not_after:%Y-%m-%d}, "
             f"role {fresh.identity.role})")

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
        if self._renewals is not None:
            self._renewals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewals
        if self._agent_run is not None:
            self._agent_run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._agent_run
        if self.agent is not None:
            await self.agent.close()
        if self.overlay_sync is not None:
            self.overlay_sync.close()
        if self.lb is not None:
            self.lb.close()
        await self._stop_manager()


def _ensure_cluster(tx: WriteTx, cluster_id: str) -> None:
    if not tx.find("cluster", name=ca.CLUSTER_NAME):
        tx.create(ca.new_cluster(cluster_id))


def _reachable(host: str) -> str:
    """An address this machine reaches its own listener at ("0.0.0.0" is not one)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


async def _registered(manager: Manager, node_id: str, timeout: float) -> None:
    """Return once the node is in the manager's store (its agent's first session registers
    it), or after `timeout` seconds. As `docker swarm init`: a `node ls` or `node update`
    right after `init` finds this node (on etcd it did not, while the election ran)."""
    store = manager.store
    watch = store.watch({"node"})
    try:
        async with asyncio.timeout(timeout):
            while store.view().get("node", node_id) is None:
                await anext(watch)
    except (TimeoutError, StopAsyncIteration):
        pass
    finally:
        watch.close()
