"""The router of the manager's TLS port, in a process of its own (`TLSEndpoint` starts it).

It reads each connection's TLS ClientHello for the server name, without terminating TLS,
and passes the connection's bytes, unchanged, to one of the two local sockets of the
manager's gRPC server (endpoint.py says why there are two). It is a process of its own
because every byte of every node's session crosses it: in the daemon's event loop it was
a queue in front of every heartbeat, and a deploy's network changes to 300 nodes (100 MB)
delayed their heartbeats past the deadline; the manager marked healthy nodes DOWN and the
cluster never converged (bench/scale.py). Here it has its own loop (and core).

    python -m pyswarm.manager.security.router HOST PORT JOIN_NAME JOIN_SOCK NODE_SOCK

(endpoint.py runs it so, with ssl kept out: ROUTER_MAIN)

prints "ready" once it listens, or "error ERRNO MESSAGE" and exits 2 if it cannot bind;
it exits when its standard input closes (the daemon stopped or died, even by SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyswarm.manager.security import sni

HELLO_TIMEOUT = 10.0  # seconds a new connection gets to send its ClientHello


@dataclass
class Routes:
    join_name: str  # the server name that goes to join_sock (no client certificate)
    join_sock: Path
    node_sock: Path
    connections: set[_Side] = field(default_factory=set)


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

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.hello = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.routes.connections.add(self)
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
        target = self.routes.join_sock if name == self.routes.join_name else self.routes.node_sock
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
        self.routes.connections.discard(self)
        super().connection_lost(exc)


async def serve(host: str, port: int, routes: Routes) -> None:
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(lambda: _Downstream(routes), host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"error {exc.errno or 0} {reason}", flush=True)
        raise SystemExit(2) from None
    print("ready", flush=True)
    ended = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ended.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    watch = asyncio.ensure_future(reader.read())  # returns at EOF: the daemon is gone
    await asyncio.wait([watch, asyncio.ensure_future(ended.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    server.close()
    for side in list(routes.connections):
        if side.transport is not None:
            side.transport.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 1)


def main(argv: list[str]) -> None:
    host, port, join_name, join_sock, node_sock = argv
    asyncio.run(serve(host, int(port), Routes(join_name, Path(join_sock), Path(node_sock))))


if __name__ == "__main__":
    main(sys.argv[1:])
