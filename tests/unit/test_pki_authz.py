"""Who may call what on the manager's TLS port, and the ClientHello name that routes a
connection there: pure functions, fed what gRPC and a real TLS client hand them."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from pyswarm.common import pki
from pyswarm.manager.security import authz, guard, sni
from pyswarm.manager.security.ca import PermissionDenied
from pyswarm.proto import cluster_pb2 as cpb

CONTROL = "/pyswarm.cluster.v1.Control/"
DISPATCHER = "/pyswarm.cluster.v1.Dispatcher/"
NODECA = "/pyswarm.ca.v1.NodeCA/"
WORKER = authz.Caller("w1", "worker", "c1")
MANAGER = authz.Caller("m1", "manager", "c1")


def allowed(method: str, caller: authz.Caller | None, request: object = None,
            members: tuple[str, ...] = ("w1", "m1")) -> bool:
    try:
        authz.authorize(method, caller, request, "c1", lambda n: n in members)
        return True
    except PermissionDenied:
        return False


def refusal(method: str, caller: authz.Caller | None, request: object = None,
            members: tuple[str, ...] = ("w1", "m1")) -> str:
    with pytest.raises(PermissionDenied) as caught:
        authz.authorize(method, caller, request, "c1", lambda n: n in members)
    return str(caught.value)


def test_node_ca_is_open_to_anyone() -> None:
    assert allowed(NODECA + "GetRootCACertificate", None)
    assert allowed(NODECA + "IssueNodeCertificate", None)


def test_the_health_check_is_open_and_only_that_service_is() -> None:
    assert allowed("/grpc.health.v1.Health/Check", None)
    assert allowed("/grpc.health.v1.Health/Check", WORKER)
    # a service merely named Health elsewhere is not the health check
    assert "not served" in refusal("/evil.v1.Health/Check", MANAGER)


def test_control_needs_a_manager_certificate() -> None:
    assert allowed(CONTROL + "ListNodes", MANAGER)
    assert refusal(CONTROL + "DeployStack", WORKER) == authz.WORKER_CONTROL
    assert "needs a node certificate" in refusal(CONTROL + "ListNodes", None)
    assert "another swarm" in refusal(CONTROL + "ListNodes",
                                      authz.Caller("m1", "manager", "c2"))


@pytest.mark.parametrize("name", ["Init", "Join"])
def test_init_and_join_are_never_served_remotely(name: str) -> None:
    assert "Unix socket" in refusal(CONTROL + name, MANAGER)


def opening(node_id: str) -> cpb.SessionUp:
    return cpb.SessionUp(open=cpb.SessionRequest(node_id=node_id))


def test_dispatcher_calls_only_for_the_caller_s_own_live_node() -> None:
    mine = cpb.UpdateTaskStatusRequest(node_id="w1")
    assert allowed(DISPATCHER + "UpdateTaskStatus", WORKER, mine)
    assert allowed(DISPATCHER + "Session", WORKER, opening("w1"))
    assert allowed(DISPATCHER + "Session", MANAGER, opening("m1"))
    assert "cannot act for node w2" in refusal(DISPATCHER + "UpdateTaskStatus", WORKER,
                                               cpb.UpdateTaskStatusRequest(node_id="w2"))
    assert "cannot act for node w2" in refusal(DISPATCHER + "Session", WORKER, opening("w2"))
    assert "cannot act for node (none)" in refusal(
        DISPATCHER + "Session", WORKER, cpb.SessionUp(heartbeat=cpb.Heartbeat()))
    assert "has been removed" in refusal(DISPATCHER + "Session", WORKER, opening("w1"),
                                         members=("m1",))
    assert "needs a node certificate" in refusal(DISPATCHER + "UpdateTaskStatus", None, mine)


class Refused(Exception):
    pass


class Context:
    """What the interceptor reads of a call over TLS: the peer certificate; and abort."""

    def __init__(self, cert: bytes) -> None:
        self.cert = cert

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.cert]}

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        raise Refused(f"{code.name}: {details}")


def test_a_session_is_checked_at_its_first_message() -> None:
    """Dispatcher/Session: the message that opens it must be for the caller's own node, and
    the servicer reads nothing of a session that is not; the rest of an allowed session
    (its heartbeats) reaches the servicer as sent. A request-streaming call of any other
    method or shape is refused as unknown rather than passed unchecked."""
    ca = pki.RootCA.create()
    cert = ca.sign_node(pki.make_csr(pki.new_key()), "w1", "worker", "c1")
    nodes = {"w1": object()}
    manager: Any = SimpleNamespace(
        identity=SimpleNamespace(cluster_id="c1"), dispatcher=None,
        store=SimpleNamespace(view=lambda: SimpleNamespace(get=lambda kind, i: nodes.get(i))))
    read: list[cpb.SessionUp] = []

    async def servicer(requests: Any, context: Any) -> Any:
        async for request in requests:
            read.append(request)
            yield cpb.SessionMessage()

    async def intercepted(handler: Any, method: str = DISPATCHER + "Session") -> Any:
        async def continuation(details: Any) -> Any:
            return handler

        return await guard.AuthInterceptor(lambda: manager).intercept_service(
            continuation, SimpleNamespace(method=method))

    async def session(*messages: cpb.SessionUp) -> int:
        checked = await intercepted(grpc.stream_stream_rpc_method_handler(servicer))

        async def stream() -> Any:
            for message in messages:
                yield message

        return len([answer async for answer in checked.stream_stream(stream(), Context(cert))])

    async def body() -> None:
        beat = cpb.SessionUp(heartbeat=cpb.Heartbeat())
        with pytest.raises(Refused, match="PERMISSION_DENIED: node w1 cannot act for node w2"):
            await session(opening("w2"), beat)
        with pytest.raises(Refused, match="cannot act for node [(]none[)]"):
            await session(beat, beat)
        assert read == []
        assert await session(opening("w1"), beat, beat) == 3
        assert read == [opening("w1"), beat, beat]
        assert await session() == 0
        for shape in (grpc.stream_unary_rpc_method_handler(servicer),
                      grpc.stream_stream_rpc_method_handler(servicer)):
            assert await intercepted(shape, DISPATCHER + "Heartbeats") is None
        assert await intercepted(grpc.stream_unary_rpc_method_handler(servicer)) is None

    asyncio.run(body())


def test_other_services_are_refused() -> None:
    assert not allowed("/pyswarm.engine.v1.Engine/Version", MANAGER)


def test_caller_of_reads_the_peer_certificate() -> None:
    ca = pki.RootCA.create()
    cert = ca.sign_node(pki.make_csr(pki.new_key()), "w9", "worker", "c1")
    assert authz.caller_of({"x509_pem_cert": [cert]}) == authz.Caller("w9", "worker", "c1")
    assert authz.caller_of({"transport_security_type": [b"ssl"]}) is None
    assert authz.caller_of({"x509_pem_cert": [ca.cert_pem]}) is None  # not a node's


def client_hello(server_name: str | None) -> bytes:
    """The first bytes a real TLS client sends."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("name", ["swarm-ca", "swarm-manager", "node-1.example"])
def test_server_name_of_a_real_client_hello(name: str) -> None:
    hello = client_hello(name)
    record = hello[:5 + int.from_bytes(hello[3:5], "big")]
    assert sni.server_name(record) == name


def test_no_server_name_and_garbage() -> None:
    hello = client_hello(None)
    assert sni.server_name(hello[:5 + int.from_bytes(hello[3:5], "big")]) is None
    assert sni.server_name(b"GET / HTTP/1.1\r\n\r\n") is None
    truncated = client_hello("swarm-ca")[:60]
    assert sni.server_name(truncated) is None


def test_the_first_record_is_taken_only_once_it_is_all_there() -> None:
    hello = client_hello("swarm-ca")
    size = 5 + int.from_bytes(hello[3:5], "big")
    for cut in (0, 3, 5, size - 1):  # the relay gets the hello in pieces
        assert sni.first_record(hello[:cut]) is None
    assert sni.first_record(hello[:size] + b"more") == hello[:size]
    with pytest.raises(sni.NotTLS):
        sni.first_record(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(sni.NotTLS):  # a length no ClientHello has
        sni.first_record(bytes([0x16, 3, 1, 0xFF, 0xFF]))
