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

The router is a process of its own (router.py, which says why), started and stopped with
the endpoint; it goes when the daemon does, however the daemon ends.

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
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from pyswarm.common import pki, rpc
from pyswarm.manager.security.guard import AuthInterceptor

DEFAULT_PORT = 2377
ROUTER_START = 10.0  # seconds the router process gets to say it listens
ROUTER_STOP = 3.0    # and to go once told to
# How the router is run: as `python -m`, but with ssl kept out. The router never terminates
# TLS, and asyncio imports ssl only to offer it: without it the process is 4.5 MB smaller
# (20.8 against 16.3 MB idle, a process per manager).
ROUTER_MAIN = ("import runpy, sys; sys.modules['ssl'] = None; "
               "runpy.run_module('pyswarm.manager.security.router', run_name='__main__', "
               "alter_sys=True)")

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


# TLS records of at most 4 KiB from the manager (gRPC's default is 16 KiB): gRPC keeps a
# buffer of that size per connection, and the manager has a connection per node. A server
# with a thousand such connections took 104 KB of C heap per connection, against 116 KB at
# 16 KiB (8 KiB: 108 KB; 1 KiB, the least gRPC allows: 101 KB): bench/memprobe/connections.py.
TLS_OPTIONS = [("grpc.tsi.max_frame_size", 4096)]


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
        self._router: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Bind and serve; OSError (e.g. the address is in use) leaves nothing running."""
        server = grpc.aio.server(interceptors=[self._interceptor],
                                 options=[*rpc.FLOW_OPTIONS, *TLS_OPTIONS])
        self._add_servicers(server)
        for sock in (self.node_sock, self.join_sock):
            sock.unlink(missing_ok=True)
        server.add_secure_port(f"unix:{self.node_sock}",
                               _Reloadable(self._credentials, True).server_credentials())
        server.add_secure_port(f"unix:{self.join_sock}",
                               _Reloadable(self._credentials, False).server_credentials())
        await server.start()
        self._server = server
        try:
            await self._start_router()
        except OSError:
            await self.stop()
            raise

    async def _start_router(self) -> None:
        """The port's router, in its own process (router.py); OSError if it cannot listen."""
        host, port = self.listen
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ROUTER_MAIN, host, str(port),
            pki.CA_NAME, str(self.join_sock), str(self.node_sock),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)  # a ^C at the daemon's terminal is the daemon's to handle
        self._router = proc
        assert proc.stdout is not None
        try:
            first = (await asyncio.wait_for(proc.stdout.readline(), ROUTER_START)).decode()
        except TimeoutError:
            first = ""
        if first.strip() == "ready":
            return
        kind, _, rest = first.strip().partition(" ")
        code, _, message = rest.partition(" ")
        if kind == "error" and code.isdigit():
            raise OSError(int(code) or None, message)
        raise OSError(f"the port's router did not start (said {first.strip()!r})")

    async def stop(self) -> None:
        proc, self._router = self._router, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()  # the router's cue to go
            try:
                await asyncio.wait_for(proc.wait(), ROUTER_STOP)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._server is not None:
            await self._server.stop(grace=1)
            self._server = None
        for sock in (self.node_sock, self.join_sock):
            sock.unlink(missing_ok=True)
