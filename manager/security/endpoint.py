"""The manager's TLS port (2377): Control, Dispatcher and NodeCA for remote nodes.

gRPC's Python server can either require a client certificate or not ask for one, per port;
a manager needs both on one port (a joining node has no certificate yet, every other call
needs one: Go's VerifyClientCertIfGiven, which Swarm uses). So the port is a small router:
it reads the TLS ClientHello's server name without terminating TLS and hands the connection,
bytes unchanged, to one of two local ports of the same gRPC server:

    TCP listen-addr ─┬─ name "swarm-ca"      → join.sock: server certificate only (NodeCA
                     │                          for nodes that have no certificate yet)
                     └─ any other name        → node.sock: client certificate REQUIRED and
                                                 verified against the root CA

TLS runs end to end between the node and gRPC; the router sees only ciphertext. Both local
ports are Unix sockets in the daemon's root-only run folder. Every call still goes through
the AuthInterceptor (authz.py), whatever port it came by: a call on join.sock has no client
certificate, so only NodeCA answers there. A certificate from another CA fails the
handshake on node.sock (gRPC logs "Handshake failed ... CERTIFICATE_VERIFY_FAILED").

The server presents the manager node's own certificate followed by the root CA, so that a
joining node can read the root from the handshake and check it against its token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import grpc

from pyswarm.common import pki
from pyswarm.manager.security import sni
from pyswarm.manager.security.guard import AuthInterceptor

HELLO_TIMEOUT = 10.0  # seconds a new connection gets to send its ClientHello
DEFAULT_PORT = 2377

# key PEM, certificate PEM, root CA PEM: the manager node's current credentials
Credentials = tuple[bytes, bytes, bytes]


def parse_listen_addr(text: str, flag: str = "--listen-addr") -> tuple[str, int]:
    """"IP[:PORT]" (or "[IPv6]:PORT") → (ip, port); the port defaults to 2377."""
    import ipaddress

    text = text.strip() or f"0.0.0.0:{DEFAULT_PORT}"
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f'invalid {flag} "{text}": expected IP[:PORT]')
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'invalid {flag} "{text}": "{host}" is not an IP address') from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'invalid {flag} "{text}": the port must be 1-65535')
    return host, int(port)


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Reloadable:
    """gRPC asks this at each handshake whether the certificate changed (renewals)."""

    def __init__(self, credentials: Callable[[], Credentials], require_client_cert: bool):
        self._credentials = credentials
        self._require = require_client_cert
        self._served = credentials()

    def config(self, creds: Credentials) -> grpc.ServerCertificateConfiguration:
        key, cert, ca = creds
        # The chain carries the root too: a joining node checks it against its token.
        return grpc.ssl_server_certificate_configuration([(key, cert + ca)], ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        current = self._credentials()
        if current == self._served:
            return None
        self._served = current
        return self.config(current)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.config(self._served), self.fetch,
            require_client_authentication=self._require)


class TLSEndpoint:
    def __init__(self, listen: tuple[str, int], run_dir: Path,
                 credentials: Callable[[], Credentials],
                 add_servicers: Callable[[grpc.aio.Server], None],
                 interceptor: AuthInterceptor) -> None:
        self.listen = listen
        self.node_sock = run_dir / "tls-node.sock"
        self.join_sock = run_dir / "tls-join.sock"
        self._credentials = credentials
        self._add_servicers = add_servicers
        self._interceptor = interceptor
        self._server: grpc.aio.Server | None = None
        self._router: asyncio.Server | None = None
        self._connections: set[_Side] = set()

    async def start(self) -> None:
        """Bind and serve; OSError (e.g. the address is in use) leaves nothing running."""
        server = grpc.aio.server(interceptors=[self._interceptor])
        self._add_servicers(server)
        for sock in (self.node_sock, self.join_sock):
            sock.unlink(missing_ok=True)
        server.add_secure_port(f"unix:{self.node_sock}",
                               _Reloadable(self._credentials, True).server_credentials())
        server.add_secure_port(f"unix:{self.join_sock}",
                               _Reloadable(self._credentials, False).server_credentials())
        await server.start()
        self._server = server
        host, port = self.listen
        try:
            self._router = await asyncio.get_running_loop().create_server(
                self._accept, host, port)
        except OSError:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._router is not None:
            self._router.close()
            for side in list(self._connections):
                if side.transport is not None:
                    side.transport.close()
            with contextlib.suppress(Exception):
                await self._router.wait_closed()
            self._router = None
        if self._server is not None:
            await self._server.stop(grace=1)
            self._server = None
        for sock in (self.node_sock, self.join_sock):
            sock.unlink(missing_ok=True)

    def _accept(self) -> asyncio.Protocol:
        return _Downstream(self)


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives is written to the other end.

    Protocols rather than streams: a heartbeat is a few small TLS records each way, and a
    record passed on from data_received() costs a fraction of a stream read, a write and a
    drain in a coroutine (at a thousand nodes that is most of the relay's CPU). When the
    other end's buffer is full, this end stops reading until it drains."""

    transport: asyncio.Transport | None = None
    peer: _Side | None = None
    ended = False  # this end has received EOF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        """Half-close passed on; once both directions have ended, both ends close (a
        half-closed pair left open would hold two sockets for every connection ever made)."""
        self.ended = True
        peer = self.peer.transport if self.peer is not None else None
        if peer is None or not peer.can_write_eof() or (self.peer is not None
                                                        and self.peer.ended):
            if peer is not None:
                peer.close()
            return False  # asyncio closes this end
        peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Downstream(_Side):
    """The node's TCP connection: its ClientHello picks the local listener."""

    def __init__(self, endpoint: TLSEndpoint) -> None:
        self.endpoint = endpoint
        self.hello = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.endpoint._connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            super().data_received(data)
            return
        self.hello += data
        try:
            record = sni.first_record(self.hello)
        except sni.NotTLS:
            self._close()
            return
        if record is None:
            if len(self.hello) > sni.MAX_RECORD + 5:
                self._close()
            return
        assert self.transport is not None
        self.transport.pause_reading()
        if self.timer is not None:
            self.timer.cancel()
        name = sni.server_name(record)
        target = self.endpoint.join_sock if name == pki.CA_NAME else self.endpoint.node_sock
        self.connecting = asyncio.ensure_future(self._connect(target))

    async def _connect(self, target: Path) -> None:
        up = _Side()
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: up, str(target))
        except OSError:
            self._close()
            return
        if self.transport is None:  # the node went away meanwhile
            if up.transport is not None:
                up.transport.close()
            return
        up.peer, self.peer = self, up
        assert up.transport is not None
        up.transport.write(bytes(self.hello))
        self.hello.clear()
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self.peer is None:
            return False  # ended before its hello: close
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.endpoint._connections.discard(self)
        super().connection_lost(exc)
