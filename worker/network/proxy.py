"""The userspace load balancer: an asyncio TCP proxy per published port.

Used by ``ServiceLB`` where nftables cannot be programmed (or with ``PYSWARM_LB=userspace``).
Each published TCP port of a service gets a listening socket on 0.0.0.0; each accepted
connection is piped to the next backend in turn (round robin). A backend whose connect fails
(refused, unreachable, or no answer within ``CONNECT_TIMEOUT``) is skipped and the next one
tried; when none answers the client gets a reset.

Policy:

- The listening socket is bound in the caller's thread, so a port held by another process
  is reported as Conflict by ``set_service`` itself, and all ports of a call are bound or
  none. Serving then runs on the agent's loop (``loop.call_soon_threadsafe``), so the
  methods may be called from any thread, the loop's own included, without waiting for it.
- Zero backends: the port is not listened on, so connections are refused (as the nftables
  path resets them); the service still owns the port for ``set_service``'s conflict checks.
- Backends see the node (the bridge gateway) as the client: a proxy cannot keep the client's
  source address. The nftables path does.
- UDP is not proxied: its ports are recorded (``services()`` shows them) but not served; a
  warning says so.
- A changed backend set applies to new connections; established ones are left to finish.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyswarm.common.errors import Conflict
from pyswarm.worker.network.lb import Backend, ServicePort, ServiceState

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
_CHUNK = 65536
_BACKLOG = 512


@dataclass
class _Port:
    """One published TCP port: its listener (when it has backends) and where to send to."""

    loop: asyncio.AbstractEventLoop
    published: int
    target: int = 0
    backends: tuple[str, ...] = ()
    sock: socket.socket | None = None  # the listener (set and cleared by any thread)
    turn: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def listen(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop.call_soon_threadsafe(self._start, sock)

    def stop(self) -> None:
        """Stop listening (any thread); connections already piped are left to finish."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.call_soon_threadsafe(self._stop, sock)

    # On the loop. A plain reader callback rather than loop.sock_accept, whose cancellation
    # can lose a connection just accepted (Python 3.11).

    def _start(self, sock: socket.socket) -> None:
        if self.sock is sock:
            self.loop.add_reader(sock.fileno(), self._accept, sock)
        # else: stopped before the loop got to it; _stop, queued after, closes it

    def _stop(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(_BACKLOG):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of descriptors: keep the port, drop this one
                log.error("proxy of port %d cannot accept: %s", self.published, e)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self._handle(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        backends, target = self.backends, self.target
        for _ in range(len(backends)):
            ip = backends[self.turn % len(backends)]
            self.turn += 1
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(ip, target), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                log.info("backend %s:%d of port %d failed (%s): trying the next",
                         ip, target, self.published, e)
                continue
            await _splice(reader, writer, up_reader, up_writer)
            return
        _reset(writer)


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter) -> None:
    """Copy both ways, passing half-closes on; close both when both directions ended."""
    try:
        await asyncio.gather(_copy(r1, w2), _copy(r2, w1))
    finally:
        for w in (w1, w2):
            w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()  # one side broke: end the other too


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


def _bind(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
        s.listen(_BACKLOG)
    except OSError as e:
        s.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise Conflict(f"port {port}/tcp is already in use on this node") from None
        raise
    s.setblocking(False)
    return s


class ProxyLB:
    """The userspace implementation behind ``ServiceLB`` (its lock serialises the calls)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._services: dict[str, ServiceState] = {}
        self._ports: dict[int, _Port] = {}  # published TCP port -> its proxy

    def state(self) -> dict[str, ServiceState]:
        return {sid: (list(p), list(b)) for sid, (p, b) in self._services.items()}

    def apply(self, service_id: str, ports: Sequence[ServicePort],
              backends: Sequence[Backend], old: ServiceState | None) -> None:
        ips = tuple(b.ip for b in backends)
        tcp = {p.published: p.target for p in ports if p.proto == "tcp"}
        for p in ports:
            if p.proto != "tcp":
                log.warning("service %s: %s/%s is not served by the userspace proxy",
                            service_id, p.published, p.proto)
        old_tcp = {p.published for p in (old[0] if old else []) if p.proto == "tcp"}
        # Bind every new listener first: all or nothing.
        bound: dict[int, socket.socket] = {}
        try:
            for published in tcp:
                current = self._ports.get(published)
                if ips and (current is None or current.sock is None):
                    bound[published] = _bind(published)
        except BaseException:
            for s in bound.values():
                s.close()
            raise
        for published in old_tcp - tcp.keys():
            self._ports.pop(published).stop()
        for published, target in tcp.items():
            port = self._ports.setdefault(published, _Port(self._loop, published))
            port.target, port.backends = target, ips
            if not ips:
                port.stop()
            elif published in bound:
                port.listen(bound[published])
        self._services[service_id] = (list(ports), list(backends))

    def close(self) -> None:
        for port in self._ports.values():
            port.stop()
        self._ports.clear()
        self._services.clear()

    def remove(self, service_id: str, old: ServiceState) -> None:
        for p in old[0]:
            if p.proto == "tcp" and p.published in self._ports:
                self._ports.pop(p.published).stop()
        self._services.pop(service_id, None)
