"""The node's service DNS: what a container's resolver asks on the node bridge's gateway.

Docker's embedded DNS server, for pyswarm's cluster tasks. A query is answered for the
container that asks (known by its eth0 address, through ``networks_of``: that address's
container and the overlay networks it is attached to), from a ``NameTable`` built out of
the manager's NetworkState:

- a service's name or alias → its VIP on a network the asker shares with it (``vip`` mode),
  or the addresses of its tasks on that network (``dnsrr`` mode, in a shuffled order);
- ``tasks.<service or alias>`` → the addresses of the service's tasks on that network;
- a task's name (``stack_web.1``, also ``stack_web.1.<task id>``) → its address there;
- a name of the table that the asker shares no network with → NXDOMAIN: networks do not
  see each other's names; nor does anyone see names through the ``ingress`` network, which
  carries published ports, not service discovery (as in Docker);
- any other name is forwarded to the host's nameservers (``/etc/resolv.conf``), one after
  the other, each given ``UPSTREAM_TIMEOUT``; when none answers the container gets SERVFAIL
  at once rather than waiting out its own resolver's retries.

When the asker shares several networks with a service, the first of the asker's networks
(in its eth1, eth2... order) wins. Names compare case-insensitively, with or without the
trailing dot. Answers carry TTL 0: tasks move, and a cached address would outlive them. A
known name asked for another type (AAAA, MX...) gets an empty NOERROR answer, so resolvers
do not go on to search domains.

Both UDP and TCP are served (an answer too big for the asker's UDP buffer is truncated with
TC set, and the resolver asks again over TCP). The wire format is dnspython's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pyswarm.common.errors import InvalidArgument, RuntimeFailure
from pyswarm.proto import cluster_pb2 as cpb

log = logging.getLogger(__name__)

TTL = 0
UPSTREAM_TIMEOUT = 2.0  # seconds per upstream nameserver
FORWARD_DEADLINE = 4.0  # seconds for all of them: glibc's resolver gives up after 5
TCP_IDLE = 10.0  # seconds a TCP client may stay silent before we close its connection
INGRESS = "ingress"

# An address per network id, in answer order.
Answers = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53


class NameTable:
    """Names → addresses per network; pure, built whole from one NetworkState."""

    def __init__(self) -> None:
        self._names: dict[str, Answers] = {}
        self._shuffle: set[str] = set()  # dnsrr names: the order of answers is mixed each time

    @classmethod
    def from_state(cls, state: cpb.NetworkState) -> NameTable:
        table = cls()
        ingress = {n.id for n in state.networks if n.spec.name == INGRESS}
        for ep in state.endpoints:
            tasks: dict[str, list[str]] = {}  # network id -> addresses of the service's tasks
            aliases: dict[str, set[str]] = {}  # per-network aliases (attachment config)
            for task in ep.tasks:
                for att in task.networks:
                    if att.network_id in ingress or not att.addresses:
                        continue
                    ip = _ip(att.addresses[0])
                    if ip is None:
                        continue
                    tasks.setdefault(att.network_id, []).append(ip)
                    aliases.setdefault(att.network_id, set()).update(att.aliases)
                    if task.name:
                        table._add(task.name, att.network_id, (ip,))
                        if task.task_id:
                            table._add(f"{task.name}.{task.task_id}", att.network_id, (ip,))
            task_answers = {net: tuple(sorted(ips, key=_ip_key)) for net, ips in tasks.items()}
            if ep.mode == "dnsrr":
                service_answers = dict(task_answers)
            else:
                service_answers = {v.network_id: (ip,) for v in ep.vips
                                   if v.network_id not in ingress
                                   and (ip := _ip(v.addr)) is not None}
            names = [ep.service_name, *ep.aliases]
            for name in names:
                table._declare(name)
                table._declare(f"tasks.{name}")
                for net, answers in service_answers.items():
                    table._add(name, net, answers, shuffle=ep.mode == "dnsrr")
                for net, answers in task_answers.items():
                    table._add(f"tasks.{name}", net, answers, shuffle=True)
            for net, extra in aliases.items():
                for alias in extra:
                    table._declare(alias)
                    if net in service_answers:
                        table._add(alias, net, service_answers[net], shuffle=ep.mode == "dnsrr")
        return table

    def lookup(self, name: str, networks: Sequence[str]) -> list[str] | None:
        """Addresses for an asker on ``networks``: None if the name is not the cluster's
        (forward it), [] if it is but the asker may not see it (NXDOMAIN)."""
        entry = self._names.get(_key(name))
        if entry is None:
            return None
        for net in networks:
            answers = entry.get(net)
            if answers:
                result = list(answers)
                if _key(name) in self._shuffle:
                    random.shuffle(result)
                return result
        return []

    def _declare(self, name: str) -> None:
        if name:
            self._names.setdefault(_key(name), {})

    def _add(self, name: str, network_id: str, answers: Iterable[str], shuffle: bool = False
             ) -> None:
        if not name:
            return
        key = _key(name)
        entry = self._names.setdefault(key, {})
        merged = tuple(dict.fromkeys((*entry.get(network_id, ()), *answers)))
        entry[network_id] = merged
        if shuffle:
            self._shuffle.add(key)


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _ip(text: str) -> str | None:
    """The address part of ``10.214.0.5/24`` or ``10.215.0.7``; None if malformed."""
    try:
        return str(ipaddress.IPv4Interface(text).ip)
    except ValueError:
        return None


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def configured_upstreams(setting: str) -> list[Upstream] | None:
    """PYSWARM_DNS_UPSTREAMS: "" → None (the host's resolv.conf), "none" → [], else a list
    of IPs separated by commas."""
    setting = setting.strip()
    if not setting:
        return None
    if setting == "none":
        return []
    found = []
    for item in setting.split(","):
        try:
            found.append(Upstream(str(ipaddress.ip_address(item.strip()))))
        except ValueError:
            raise InvalidArgument(f'PYSWARM_DNS_UPSTREAMS: "{item.strip()}" is not an IP '
                                  f'address (give IP[,IP...], or "none")') from None
    return found


def host_nameservers(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The ``nameserver`` lines of the host's resolv.conf (IPv4 and IPv6)."""
    found: list[Upstream] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(Upstream(str(ipaddress.ip_address(parts[1].split("%")[0]))))
    return found


# ---- the server ---------------------------------------------------------------------------


class ServiceDNS:
    """Serves one address (the node bridge's gateway) on UDP and TCP; asyncio."""

    def __init__(
        self,
        address: str,
        networks_of: Callable[[str], Sequence[str]],
        upstreams: Sequence[Upstream] | None = None,
        port: int = 53,
    ) -> None:
        self.address = address
        self.port = port
        self.networks_of = networks_of
        self.upstreams = list(upstreams) if upstreams is not None else host_nameservers()
        self.table = NameTable()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind both sockets, or raise RuntimeFailure (nothing left bound)."""
        loop = asyncio.get_running_loop()
        udp = _bound(socket.SOCK_DGRAM, self.address, self.port)
        try:
            tcp = _bound(socket.SOCK_STREAM, self.address, self.port)
        except RuntimeFailure:
            udp.close()
            raise
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in self._pending:
            task.cancel()
        self._udp, self._tcp = None, None

    # ---- answering ----------------------------------------------------------------------

    async def answer(self, wire: bytes, client: str, tcp: bool) -> bytes | None:
        """The reply to one query from ``client`` (None: drop it, it was not DNS)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer one (no loops)
        local = self.resolve(query, client)
        if local is None:
            reply = await self._forward(query, tcp)
        else:
            reply = local
        payload = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        return reply.to_wire(max_size=payload, prefer_truncation=True)

    def resolve(self, query: dns.message.Message, client: str) -> dns.message.Message | None:
        """A reply from the table, or None when the question is for the host's nameservers."""
        reply = dns.message.make_response(query, recursion_available=True)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            reply.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                            else dns.rcode.FORMERR)
            return reply
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return None
        name = question.name.to_text(omit_final_dot=True)
        found = self.table.lookup(name, self.networks_of(client))
        if found is None:
            return None
        reply.flags |= dns.flags.AA
        if not found:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            reply.answer.append(dns.rrset.from_text_list(
                question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A, found))
        return reply

    async def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_DEADLINE
        for upstream in self.upstreams:
            left = min(UPSTREAM_TIMEOUT, deadline - loop.time())
            if left <= 0:
                break
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, upstream.host, left, upstream.port)
                return await dns.asyncquery.udp(query, upstream.host, left, upstream.port,
                                                ignore_unexpected=True)
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                log.debug("upstream %s:%s: %r", upstream.host, upstream.port, exc)
        reply = dns.message.make_response(query, recursion_available=True)
        reply.set_rcode(dns.rcode.SERVFAIL)
        return reply

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> None:
        client = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack("!H", head)
                wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                reply = await self.answer(wire, client, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ServiceDNS) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.server.answer(data, addr[0], tcp=False)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message we cannot parse, if it has at least a header to answer."""
    if len(wire) < 12:
        return None
    (ident, flags) = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:
        return None
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR,
                       0, 0, 0, 0)


def _bound(kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        raise RuntimeFailure(f"service DNS cannot bind {address}:{port}/{proto}: {e}") from e
    return sock
