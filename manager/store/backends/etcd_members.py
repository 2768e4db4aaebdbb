"""The connections to an etcd cluster's members: one member at a time, the next on failure.

Why not one gRPC channel with round_robin over every member: a member behind a cut link
keeps its TCP connection "ready", so round_robin goes on handing it a share of the calls,
and each of those hangs until its deadline. A manager's 2 s lease cannot survive that (the
lab's partition test showed the majority side losing its leader every few seconds while its
two etcd members were healthy). etcd's own client pins one member and moves on when it
fails; so does this.

Policy:
- Calls go to the pinned member. Members on this host come first (a manager beside its own
  member, as in the lab, then uses it as a swarm manager uses its raft member), then the
  others in the order given.
- A call that fails because of the member (UNAVAILABLE, which is also etcd's "no leader";
  DEADLINE_EXCEEDED; a stream that hung past its budget) moves the pin to the next member.
  The call itself is not repeated here: its caller decides (reads retry; a commit reports
  that retrying is safe).
- Every call carries etcd's `hasleader` metadata (REQUIRE_LEADER): a member cut off from
  its cluster's majority answers "no leader" at once, for unary calls as for streams,
  rather than hanging until the deadline.
- gRPC keep-alive pings find a dead connection under a quiet stream (a watch): every 5 s,
  etcd's default minimum between a client's pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUIRE_LEADER = (("hasleader", "true"),)  # etcd's rpctypes.MetadataRequireLeaderKey
FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# How a call to a member fails (InvalidStateError: a write on a stream that has ended).
CALL_ERRORS = (grpc.aio.AioRpcError, TimeoutError, ConnectionError, asyncio.InvalidStateError)
OPTIONS = [
    # A commit of 10,000 tasks is a few MiB on the wire; so is a watch response for it.
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 2000),
]


def is_local(endpoint: str) -> bool:
    """Whether `endpoint` (HOST:PORT, HOST a literal IP) is an address of this host (of
    this network namespace)."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))  # only an address of this host can be bound
        except OSError:
            return False
    return True


def failover_reason(error: BaseException) -> str:
    """Why `error` means its member cannot serve now, or "" if it does not."""
    if isinstance(error, grpc.aio.AioRpcError):
        if error.code() in FAILOVER_CODES:
            return f"{error.code().name}: {error.details()}"
        return ""
    if isinstance(error, TimeoutError):
        return str(error) or "no answer in time"
    if isinstance(error, asyncio.InvalidStateError):
        return f"the stream had ended ({error})"
    if isinstance(error, ConnectionError):
        return str(error) or type(error).__name__
    return ""


def kv(method: str, request: Any, timeout: float) -> Callable[[grpc.aio.Channel], Any]:
    """For `Members.call`: the KV service's `method` ("Range", "Txn", "Put") with
    `request`, on whichever member's channel it is given."""
    def call(channel: grpc.aio.Channel) -> Any:
        return getattr(rpc.KVStub(channel), method)(request, timeout=timeout,
                                                    metadata=REQUIRE_LEADER)
    return call


class Members:
    def __init__(self, endpoints: list[str]) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        local = [e for e in endpoints if is_local(e)]
        self.endpoints = local + [e for e in endpoints if e not in local]
        self._pinned = 0
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def pinned(self) -> str:
        return self.endpoints[self._pinned]

    def channel(self) -> grpc.aio.Channel:
        """The channel to the pinned member (opened on first use)."""
        endpoint = self.pinned
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint,
                                                                           options=OPTIONS)
        return channel

    def failed(self, channel: grpc.aio.Channel, error: BaseException) -> None:
        """A call on `channel` ended with `error`: if that is the member's fault and the
        member is still pinned, pin the next one."""
        why = failover_reason(error)
        if not why or len(self.endpoints) == 1 or channel is not self._channels.get(self.pinned):
            return
        was = self.pinned
        self._pinned = (self._pinned + 1) % len(self.endpoints)
        log.warning("etcd member %s failed a call (%s); using %s now", was, why, self.pinned)

    async def call(self, make: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """`make(channel)` on the pinned member's channel; a failure moves the pin (and is
        raised)."""
        channel = self.channel()
        try:
            return await make(channel)
        except CALL_ERRORS as error:
            self.failed(channel, error)
            raise

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()
