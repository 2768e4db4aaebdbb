"""The userspace load balancer: an asyncio TCP proxy per published port and per VIP port.

Used by ``ServiceLB`` where nftables cannot be programmed (or with ``PYSWARM_LB=userspace``).
It serves the same backend sets as the nftables path (tasks of every node: this node's by
their bridge address, other nodes' by their overlay address, which the kernel reaches through
the overlay's interface with this node's address as the source):

- each published TCP port of a service gets a listening socket on 0.0.0.0;
- each VIP gets a ``local`` route (``ip route add local <vip>/32 dev lo table local``), so
  that the node accepts packets to it, and a listening socket on ``<vip>:<port>`` for each
  declared TCP port of its service (``VirtualIP.ports``). Unlike nftables, which balances
  every port, other ports of a VIP are refused.

Each accepted connection is piped to the next backend in turn (round robin). A backend whose
connect fails (refused, unreachable, or no answer within ``CONNECT_TIMEOUT``) is skipped and
the next one tried; when none answers the client gets a reset.

Policy:

- The listening sockets are bound in the caller's thread, so a port held by another process
  is reported as Conflict by ``set_service`` itself, and all ports of a call are bound or
  none. Serving then runs on the agent's loop (``loop.call_soon_threadsafe``), so the
  methods may be called from any thread, the loop's own included, without waiting for it.
  Listeners set SO_REUSEPORT, so a VIP's ``<vip>:80`` and a published ``0.0.0.0:80`` can
  both exist (the kernel prefers the exact address); a probe without it still conflicts.
- Zero backends: the port is not listened on, so connections are refused (as the nftables
  path resets them); the service still owns the port for ``set_service``'s conflict checks.
- Backends see the node (the bridge gateway, or its overlay address) as the client: a
  proxy cannot keep the client's source address. The nftables path does, for tasks on
  this node.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyswarm.common.errors import Conflict, RuntimeFailure
from pyswarm.worker.network.lb_nft import (
    Backend,
    ServicePort,
    ServiceState,
    VipState,
    VirtualIP,
    off_loop,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
ANY = "0.0.0.0"
_CHUNK = 65536
_BACKLOG = 512


@dataclass
class _Port:
    """One listening address and port: its listener (when it has backends), where to send to."""

    loop: asyncio.AbstractEventLoop
    addr: str
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


def _bind(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((addr, port))
        s.listen(_BACKLOG)
    except OSError as e:
        s.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            where = "" if addr == ANY else f" at {addr}"
            raise Conflict(f"port {port}/tcp is already in use on this node{where}") from None
        raise
    s.setblocking(False)
    return s


Listen = tuple[str, int]  # (address, port)


class ProxyLB:
    """The userspace implementation behind ``ServiceLB`` (its lock serialises the calls)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._services: dict[str, ServiceState] = {}
        self._vips: dict[str, VipState] = {}
        self._overlays: dict[str, str] = {}
        self._ports: dict[Listen, _Port] = {}  # listening address and port -> its proxy

    # ---- published ports ---------------------------------------------------------------

    def state(self) -> dict[str, ServiceState]:
        return {sid: (list(p), list(b)) for sid, (p, b) in self._services.items()}

    def apply(self, service_id: str, ports: Sequence[ServicePort],
              backends: Sequence[Backend], old: ServiceState | None) -> None:
        for p in ports:
            if p.proto != "tcp":
                log.warning("service %s: %s/%s is not served by the userspace proxy",
                            service_id, p.published, p.proto)
        self._program({(ANY, p.published): p.target for p in ports if p.proto == "tcp"},
                      backends,
                      {(ANY, p.published) for p in (old[0] if old else []) if p.proto == "tcp"})
        self._services[service_id] = (list(ports), list(backends))

    def remove(self, service_id: str, old: ServiceState) -> None:
        self._stop({(ANY, p.published) for p in old[0] if p.proto == "tcp"})
        self._services.pop(service_id, None)

    # ---- virtual IPs -------------------------------------------------------------------

    def vip_state(self) -> dict[str, VipState]:
        return {addr: (vip, list(b)) for addr, (vip, b) in self._vips.items()}

    def apply_vip(self, vip: VirtualIP, backends: Sequence[Backend],
                  old: VipState | None) -> None:
        if old is not None and old == (vip, list(backends)) and old[0].ports == vip.ports:
            return
        if old is None:
            _local_route("replace", vip.addr)
        old_keys = {(vip.addr, port) for port in old[0].ports} if old else set()
        try:
            self._program({(vip.addr, port): port for port in vip.ports}, backends, old_keys)
        except BaseException:
            if old is None:
                _local_route("del", vip.addr)
            raise
        self._vips[vip.addr] = (vip, list(backends))

    def remove_vip(self, old: VipState) -> None:
        self._stop({(old[0].addr, port) for port in old[0].ports})
        _local_route("del", old[0].addr)
        self._vips.pop(old[0].addr, None)

    # ---- overlays: the kernel picks the source address of the proxy's connections --------

    def overlay_state(self) -> dict[str, str]:
        return dict(self._overlays)

    def apply_overlays(self, overlays: Mapping[str, str]) -> None:
        self._overlays = dict(overlays)

    def overlays_pending(self) -> bool:
        return False

    # ---- all ---------------------------------------------------------------------------

    def close(self) -> None:
        for port in self._ports.values():
            port.stop()
        for addr in self._vips:
            _local_route("del", addr)
        self._ports.clear()
        self._services.clear()
        self._vips.clear()

    def _program(self, listens: Mapping[Listen, int], backends: Sequence[Backend],
                 old: set[Listen]) -> None:
        """Listen on ``listens`` (address, port -> target port) for ``backends``; stop the
        listeners of ``old`` that are no longer wanted. All new binds succeed or none."""
        ips = tuple(b.ip for b in backends)
        bound: dict[Listen, socket.socket] = {}
        try:
            for key in listens:
                current = self._ports.get(key)
                if ips and (current is None or current.sock is None):
                    bound[key] = _bind(*key)
        except BaseException:
            for s in bound.values():
                s.close()
            raise
        self._stop(old - listens.keys())
        for key, target in listens.items():
            port = self._ports.setdefault(key, _Port(self._loop, key[0], key[1]))
            port.target, port.backends = target, ips
            if not ips:
                port.stop()
            elif key in bound:
                port.listen(bound[key])

    def _stop(self, keys: set[Listen]) -> None:
        for key in keys:
            if (port := self._ports.pop(key, None)) is not None:
                port.stop()


def _local_route(command: str, addr: str) -> None:
    """Add (replace) or delete ``local <addr>/32 dev lo`` in the local table."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def change() -> None:
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.route(command, dst=f"{addr}/32", type="local", table=255, oif=lo,
                      scope="host")

    try:
        off_loop(change)
    except NetlinkError as e:
        if command == "del" and e.code in (errno.ESRCH, errno.ENOENT):
            return  # already gone
        raise RuntimeFailure(f"cannot {command} the local route of VIP {addr}: {e}") from e
