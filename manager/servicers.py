"""gRPC servicers for the Control, Dispatcher and NodeCA APIs: translate, call one function,
return.

Control and Dispatcher are served by every node daemon on its Unix socket; until the node is
a manager they answer FAILED_PRECONDITION, so a client learns what to do ("pyswarm init").
A manager also serves all three on its TLS port, where security/guard.py checks each call's
certificate first.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from pyswarm.common.errors import FailedPrecondition, InvalidArgument
from pyswarm.common.rpc import LEADER_KEY, abort, user_errors
from pyswarm.manager import control
from pyswarm.manager.dispatcher.dispatcher import Dispatcher
from pyswarm.manager.dispatcher.netpush import Serialized, serialize_session
from pyswarm.manager.manager import Manager
from pyswarm.manager.security import authz, ca
from pyswarm.manager.store.errors import NotLeader
from pyswarm.proto import ca_pb2, ca_pb2_grpc
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from pyswarm.proto import objects_pb2 as opb

NOT_A_MANAGER = ("this node is not a swarm manager. Use \"pyswarm init\" to make this node "
                 "the manager of a new cluster")


class ManagerHost(Protocol):
    """What the daemon offers the servicers: its manager (if any) and the cluster actions
    that involve the whole node (init)."""

    manager: Manager | None

    async def init_cluster(self, request: cpb.InitRequest) -> cpb.InitResponse: ...

    async def join(self, request: cpb.JoinRequest) -> cpb.JoinResponse: ...

    def manager_addr(self) -> str:
        """ADDR:PORT other nodes join this manager at."""
        ...

    def log_stream(self, task: opb.Task, follow: bool, tail: int) -> AsyncIterator[Any]: ...


WORKER_NODE = ("this node is not a swarm manager. Worker nodes can't be used to view or "
               "modify cluster state: run this command on a manager node")


class NotManager(FailedPrecondition):
    pass


def _manager(host: ManagerHost) -> Manager:
    if host.manager is None:
        member = getattr(host, "join_state", None) is not None
        raise NotManager(WORKER_NODE if member else NOT_A_MANAGER)
    return host.manager


async def _read(host: ManagerHost, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(_manager(host).store.view(), *args)


async def _write(host: ManagerHost, fn: Callable[..., Any], *args: Any) -> Any:
    return await _manager(host).store.update(lambda tx: fn(tx, *args))


class ControlServicer(cpb_grpc.ControlServicer):
    def __init__(self, host: ManagerHost) -> None:
        self.host = host

    @user_errors
    async def Init(self, request: cpb.InitRequest, context: Any) -> cpb.InitResponse:
        return await self.host.init_cluster(request)

    @user_errors
    async def Join(self, request: cpb.JoinRequest, context: Any) -> cpb.JoinResponse:
        return await self.host.join(request)

    @user_errors
    async def JoinTokens(self, request: cpb.JoinTokensRequest,
                         context: Any) -> cpb.JoinTokensResponse:
        m = _manager(self.host)
        if request.rotate:
            cluster = await m.store.update(lambda tx: ca.rotate_token(tx, request.rotate))
        else:
            cluster = ca.cluster_of(m.store.view())
        return cpb.JoinTokensResponse(worker=cluster.join_tokens.worker,
                                      manager=cluster.join_tokens.manager,
                                      manager_addr=self.host.manager_addr())

    @user_errors
    async def Info(self, request: cpb.InfoRequest, context: Any) -> cpb.InfoResponse:
        m = self.host.manager
        if m is None:
            return cpb.InfoResponse(is_manager=False)
        nodes = m.store.view().all("node")
        return cpb.InfoResponse(
            is_manager=True, node_id=m.identity.node_id, cluster_id=m.identity.cluster_id,
            store=m.identity.store_url, nodes=len(nodes),
            managers=sum(1 for n in nodes if n.role == opb.NODE_ROLE_MANAGER),
            metrics=m.store.metrics.snapshot())

    @user_errors
    async def ListNodes(self, request: cpb.ListNodesRequest, context: Any) -> cpb.ListNodesResponse:
        m = _manager(self.host)
        nodes = sorted(m.store.view().all("node"), key=lambda n: n.description.hostname)
        out = []
        for node in nodes:
            node = control.copy(node)
            if node.role == opb.NODE_ROLE_MANAGER:
                status = m.terms.status_of(node.id)
                node.manager_status.leader = status.leader
                node.manager_status.reachability = status.reachability
                node.manager_status.addr = status.addr
            out.append(node)
        return cpb.ListNodesResponse(nodes=out)

    @user_errors
    async def GetNode(self, request: cpb.GetRequest, context: Any) -> opb.Node:
        return await _read(self.host, control.lookup, "node", request.id)

    @user_errors
    async def UpdateNode(self, request: cpb.UpdateNodeRequest, context: Any) -> opb.Node:
        m = _manager(self.host)
        return await _write(self.host, control.update_node, request.id, request.version,
                            request.spec, control.Roles(m.identity.node_id,
                                                        ca.is_multi_manager(
                                                            m.identity.store_url)))

    @user_errors
    async def RemoveNode(self, request: cpb.RemoveRequest, context: Any) -> cpb.RemoveResponse:
        m = _manager(self.host)
        node_id = await _write(self.host, control.remove_node, request.id, request.force,
                               m.identity.node_id)
        return cpb.RemoveResponse(id=node_id)

    @user_errors
    async def CreateService(self, request: cpb.CreateServiceRequest, context: Any) -> opb.Service:
        return await _write(self.host, control.create_service, request.spec)

    @user_errors
    async def UpdateService(self, request: cpb.UpdateServiceRequest, context: Any) -> opb.Service:
        return await _write(self.host, control.update_service, request.id, request.version,
                            request.spec)

    @user_errors
    async def GetService(self, request: cpb.GetRequest, context: Any) -> opb.Service:
        return await _read(self.host, control.lookup, "service", request.id)

    @user_errors
    async def ListServices(self, request: cpb.ListServicesRequest,
                           context: Any) -> cpb.ListServicesResponse:
        return cpb.ListServicesResponse(
            services=await _read(self.host, control.summaries, request.stack))

    @user_errors
    async def RemoveService(self, request: cpb.RemoveRequest, context: Any) -> cpb.RemoveResponse:
        return cpb.RemoveResponse(id=await _write(self.host, control.remove_service, request.id))

    @user_errors
    async def ListTasks(self, request: cpb.ListTasksRequest, context: Any) -> cpb.ListTasksResponse:
        return cpb.ListTasksResponse(tasks=await _read(self.host, control.list_tasks, request))

    @user_errors
    async def DeployStack(self, request: cpb.DeployStackRequest,
                          context: Any) -> cpb.DeployStackResponse:
        result = await _write(self.host, control.deploy_stack, request)
        return cpb.DeployStackResponse(created=result.created, updated=result.updated,
                                       unchanged=result.unchanged, removed=result.removed)

    @user_errors
    async def ListStacks(self, request: cpb.ListStacksRequest,
                         context: Any) -> cpb.ListStacksResponse:
        return cpb.ListStacksResponse(stacks=await _read(self.host, control.list_stacks))

    @user_errors
    async def RemoveStack(self, request: cpb.RemoveStackRequest,
                          context: Any) -> cpb.RemoveStackResponse:
        return cpb.RemoveStackResponse(
            removed=await _write(self.host, control.remove_stack, request.name))

    @user_errors
    async def ServiceLogs(self, request: cpb.ServiceLogsRequest,
                          context: Any) -> AsyncIterator[cpb.ServiceLogEntry]:
        m = _manager(self.host)
        view = m.store.view()
        task = view.get("task", request.service)
        if task is not None:
            tasks = [task]
        else:
            service = control.lookup(view, "service", request.service)
            tasks = [t for t in view.find("task", service_id=service.id)
                     if t.status.container.container_id]
        queue: asyncio.Queue[cpb.ServiceLogEntry | None] = asyncio.Queue()

        async def pump(task: opb.Task) -> None:
            name = f"{task.service_name}.{task.slot or task.node_id}"
            try:
                async for line in self.host.log_stream(task, request.follow, request.tail):
                    queue.put_nowait(cpb.ServiceLogEntry(
                        task_id=task.id, task_name=name, node_id=task.node_id,
                        stream=line.stream, data=line.data, time=line.time))
            finally:
                queue.put_nowait(None)

        pumps = [asyncio.create_task(pump(t)) for t in tasks]
        try:
            open_streams = len(pumps)
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for p in pumps:
                p.cancel()


def add_dispatcher(servicer: DispatcherServicer, server: grpc.aio.Server) -> None:
    """The generated add_DispatcherServicer_to_server, but for Session's serializer, which
    passes network states serialized already (netpush.Serialized) through."""
    generic = cpb_grpc.DispatcherServicer
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session, request_deserializer=cpb.SessionUp.FromString,
            response_serializer=serialize_session),
        "UpdateTaskStatus": grpc.unary_unary_rpc_method_handler(
            servicer.UpdateTaskStatus,
            request_deserializer=cpb.UpdateTaskStatusRequest.FromString,
            response_serializer=cpb.UpdateTaskStatusResponse.SerializeToString),
    }
    missing = {n for n in dir(generic) if n[:1].isupper()} - set(handlers)
    assert not missing, f"Dispatcher methods not registered: {missing}"
    name = cpb.DESCRIPTOR.services_by_name["Dispatcher"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


async def opening(requests: AsyncIterator[cpb.SessionUp]) -> cpb.SessionRequest:
    """The SessionRequest a session's stream opens with (InvalidArgument if it does not)."""
    first = await anext(requests, None)
    if first is None or not first.HasField("open"):
        raise InvalidArgument("a session opens with its SessionRequest (SessionUp.open), "
                              "then sends heartbeats")
    return first.open


def _dispatcher(host: ManagerHost) -> Dispatcher:
    """The leader's dispatcher; on a follower, NotLeader naming the leader."""
    m = _manager(host)
    if m.dispatcher is None:
        leader = m.terms.leader_addr()
        raise NotLeader("this manager is not the leader"
                        + (f"; the leader is at {leader}" if leader else
                           "; the managers are electing one, retry in a few seconds"))
    return m.dispatcher


def _redirects(method: Callable[..., Any]) -> Callable[..., Any]:
    """A follower refuses dispatcher calls with UNAVAILABLE, and the leader's address in
    the trailing metadata: the node's agent goes there (worker/agent/remotes.py)."""

    async def refuse(host: ManagerHost, context: Any, exc: NotLeader) -> None:
        m = host.manager
        leader = m.terms.leader_addr() if m is not None else ""
        # an empty value: an election is on (the node retries soon, not after a backoff)
        await abort(context, exc, grpc.StatusCode.UNAVAILABLE, (LEADER_KEY, leader))

    if inspect.isasyncgenfunction(method):
        async def streaming(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except NotLeader as exc:
                await refuse(self.host, context, exc)

        streaming.__name__ = method.__name__
        return streaming

    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except NotLeader as exc:
            await refuse(self.host, context, exc)

    unary.__name__ = method.__name__
    return unary


class DispatcherServicer(cpb_grpc.DispatcherServicer):
    def __init__(self, host: ManagerHost) -> None:
        self.host = host

    @user_errors
    @_redirects
    async def Session(self, requests: AsyncIterator[cpb.SessionUp],
                      context: Any) -> AsyncIterator[cpb.SessionMessage | Serialized]:
        requests = aiter(requests)  # read on by the session: its heartbeats
        request = await opening(requests)
        async for message in _dispatcher(self.host).session(request, requests):
            yield message

    @user_errors
    @_redirects
    async def UpdateTaskStatus(self, request: cpb.UpdateTaskStatusRequest,
                               context: Any) -> cpb.UpdateTaskStatusResponse:
        return await _dispatcher(self.host).update_task_status(request)


class NodeCAServicer(ca_pb2_grpc.NodeCAServicer):
    """Certificates for nodes: new ones against a join token, renewals against the node's
    own certificate (ca.proto)."""

    def __init__(self, host: ManagerHost) -> None:
        self.host = host

    @user_errors
    async def GetRootCACertificate(self, request: ca_pb2.GetRootCACertificateRequest,
                                   context: Any) -> ca_pb2.GetRootCACertificateResponse:
        cluster = ca.cluster_of(_manager(self.host).store.view())
        return ca_pb2.GetRootCACertificateResponse(certificate=cluster.root_ca.ca_cert)

    @user_errors
    async def IssueNodeCertificate(self, request: ca_pb2.IssueNodeCertificateRequest,
                                   context: Any) -> ca_pb2.IssueNodeCertificateResponse:
        m = _manager(self.host)
        if request.token:
            node, cert = await m.store.update(lambda tx: ca.admit(
                tx, request.token, request.csr, request.hostname, m.identity.store_url))
            print(f"pyswarm manager: node {node.id} ({request.hostname or '?'}) joined as a "
                  f"{ca.ROLE_NAMES[node.role]}", flush=True)
        else:
            caller = authz.caller_of(dict(context.auth_context()))
            if caller is None:
                raise ca.PermissionDenied("a new node needs a join token; a renewal needs the "
                                          "node's own certificate")
            node, cert = ca.renew(m.store.view(), caller.node_id, request.csr)
        view = m.store.view()
        return ca_pb2.IssueNodeCertificateResponse(
            node_id=node.id, role=ca.ROLE_NAMES[node.role], certificate=cert,
            root_ca=ca.cluster_of(view).root_ca.ca_cert, cluster_id=m.identity.cluster_id,
            store_url=m.identity.store_url if node.role == opb.NODE_ROLE_MANAGER else "")
