"""Leases, leader election and the roster of managers sharing an etcd cluster.

Policy:
- Whoever creates the election key leads. The key is bound to a lease the leader keeps
  alive; a leader that dies (or loses etcd) stops refreshing it, the lease expires after
  `ttl` seconds, etcd deletes the key, and a waiting candidate's create succeeds.
- A term is the election key's create revision (`Fence`): the store compares it in every
  leader-only commit (etcd.py), so a deposed leader's writes never land.
- A leader must also *believe* it lost before the next one can win: `Lease.lost` is set
  once the lease is not known to be alive any more, that is at the expiry implied by the
  last answered keep-alive (measured from when it was sent, so never later than etcd's),
  whether the stream failed, hung (a cut link) or answered "gone".
- Every call goes to one member at a time (etcd_members.py) and carries etcd's
  `hasleader` metadata: a member cut off from its cluster's majority refuses rather than
  serving stale state or hanging, and the client moves on to the next member.
- One keep-alive exchange may take at most EXCHANGE seconds: a member that does not answer
  in that time (a cut link) is left for the next one while the lease still has time, so
  one bad member does not cost the lease.
- Each manager also registers itself under `<prefix>.managers/<node id>` with a lease of its
  own: the roster (`roster()`) is who is alive and reaching etcd, and the leader.
- Both keys live beside the object prefix (`/pyswarm/v1.election/...`), not under it, so
  the store's watch never sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from .base import Fence
from .etcd_members import (
    CALL_ERRORS,
    REQUIRE_LEADER,
    Members,
    failover_reason,
    is_local,
    kv,
)

log = logging.getLogger(__name__)

RPC_TIMEOUT = 5.0
# A revoke only hastens what expiry does anyway within the TTL: never wait long for it (a
# registration or campaign that failed goes on after it).
REVOKE_TIMEOUT = 1.0
# Stop believing in a lease this long before the expiry its last keep-alive implies: etcd
# and this process measure time on different clocks (rates, not offsets: both monotonic).
MARGIN = 0.1
RETRY = 0.2  # seconds before watching or registering again after a failure
KEEPALIVE_RETRY = 0.05  # seconds before reopening a failed keep-alive stream
EXCHANGE = 0.5  # seconds one keep-alive exchange may take before its member is left
YIELD = 0.3  # seconds a candidate beside etcd's leader lets the others campaign first
STATUS_TIMEOUT = 1.0
APART_PERIOD = 2.0  # seconds between a leader's checks of where etcd's leader is
MOVE_TIMEOUT = 3.0  # seconds etcd gets to hand its leadership over


class Lease:
    """An etcd lease kept alive until it is revoked or can no longer be vouched for."""

    def __init__(self, members: Members, lease_id: int, ttl: int, granted_at: float):
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._members = members
        self._expires = granted_at + ttl
        self._task = asyncio.create_task(self._keep_alive(), name=f"lease {lease_id:x}")

    @classmethod
    async def grant(cls, members: Members, ttl: int) -> Lease:
        asked = time.monotonic()
        reply = await members.call(lambda ch: rpc.LeaseStub(ch).LeaseGrant(
            rpc.LeaseGrantRequest(TTL=ttl), timeout=RPC_TIMEOUT, metadata=REQUIRE_LEADER))
        return cls(members, reply.ID, reply.TTL, asked)

    def left(self) -> float:
        """Seconds this lease is known to live, at least."""
        return self._expires - MARGIN - time.monotonic()

    async def _keep_alive(self) -> None:
        try:
            while self.left() > 0:
                channel = self._members.channel()
                call = rpc.LeaseStub(channel).LeaseKeepAlive(metadata=REQUIRE_LEADER)
                try:
                    while True:
                        sent = time.monotonic()
                        # the whole exchange bounded: a stream stuck on a member that lost
                        # its peers may block a write as well as a read
                        async with asyncio.timeout(max(min(self.left(), EXCHANGE), 0.001)):
                            await call.write(rpc.LeaseKeepAliveRequest(ID=self.id))
                            reply = await call.read()
                        if reply is grpc.aio.EOF:
                            raise ConnectionError("etcd ended the keep-alive stream")
                        if reply.TTL <= 0:
                            log.warning("lease %x: etcd says it is gone", self.id)
                            return
                        self._expires = sent + reply.TTL
                        await asyncio.sleep(self.ttl / 4)
                except CALL_ERRORS as error:
                    log.warning("lease %x: keep-alive failed on %s (%s); %.1fs left", self.id,
                                self._members.pinned, failover_reason(error) or repr(error),
                                self.left())
                    self._members.failed(channel, error)
                finally:
                    call.cancel()
                # soon, and on the next member: the lease's time is running
                await asyncio.sleep(min(KEEPALIVE_RETRY, max(self.left(), 0)))
        finally:
            self.lost.set()

    async def revoke(self) -> None:
        """End the lease now (its keys go with it); quietly, if etcd cannot be reached."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a bug in the keep-alive must not stop the revoke
            log.exception("lease %x: the keep-alive task failed", self.id)
        with contextlib.suppress(*CALL_ERRORS):
            await self._members.call(lambda ch: rpc.LeaseStub(ch).LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=self.id), timeout=REVOKE_TIMEOUT,
                metadata=REQUIRE_LEADER))
        self.lost.set()


class Leadership:
    """A term as leader: its lease, and the fence every leader-only commit carries. While
    it lasts it keeps etcd's leader off this manager's own member (`_keep_apart`)."""

    def __init__(self, lease: Lease, fence: Fence, members: Members | None = None):
        self.lease = lease
        self.fence = fence
        self._apart = (asyncio.create_task(_keep_apart(members), name="etcd leader apart")
                       if members is not None else None)

    @property
    def lost(self) -> asyncio.Event:
        return self.lease.lost

    async def resign(self) -> None:
        """Give up leadership now: revoking the lease deletes the key."""
        if self._apart is not None:
            self._apart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._apart
        await self.lease.revoke()


async def _keep_apart(members: Members) -> None:
    """While this manager leads: whenever its own machine's member is etcd's leader (the
    first leader campaigned alone; etcd elects whom it likes after a failure), ask that
    member to hand etcd's leadership to another. Apart, this machine's death costs the
    lease alone; together, etcd's election and then the lease, which etcd's new leader
    extends (the slow rounds of bench/failover.py: 4-6 s against 2-2.5 s). A transfer is
    etcd's own graceful one (MoveLeader): leases are extended across it, nothing lapses."""
    while True:
        try:
            await _move_etcds_leader_away(members)
        except CALL_ERRORS as error:
            log.info("could not check where etcd's leader is (%s)",
                     failover_reason(error) or repr(error))
        await asyncio.sleep(APART_PERIOD)


async def _move_etcds_leader_away(members: Members) -> None:
    if len(members.endpoints) == 1 or not is_local(members.pinned):
        return  # no other member, or the pinned member is not on this machine
    leading = await _leading_member(members)
    if not leading:
        return
    listed = await members.call(lambda ch: rpc.ClusterStub(ch).MemberList(
        rpc.MemberListRequest(), timeout=STATUS_TIMEOUT))
    # Straight on the channel, not members.call: a target that cannot take over (down,
    # behind) fails the call, which says nothing against the pinned member.
    maintenance = rpc.MaintenanceStub(members.channel())
    for member in listed.members:
        if member.ID == leading or not member.name:  # itself, or never started
            continue
        try:
            await maintenance.MoveLeader(rpc.MoveLeaderRequest(targetID=member.ID),
                                         timeout=MOVE_TIMEOUT)
        except CALL_ERRORS as error:
            log.info("etcd member %s could not take etcd's leadership (%s)", member.name,
                     failover_reason(error) or repr(error))
            continue
        log.info("etcd's leader was this manager's own member: moved to %s", member.name)
        return


async def _leading_member(members: Members) -> int:
    """The pinned member's id if it is etcd's own leader, else 0 (a member call's errors
    are raised)."""
    reply = await members.call(lambda ch: rpc.MaintenanceStub(ch).Status(
        rpc.StatusRequest(), timeout=STATUS_TIMEOUT))
    return int(reply.leader) if reply.leader == reply.header.member_id else 0


async def _beside_etcds_leader(members: Members) -> bool:
    """Whether this candidate's member is etcd's own leader (False if it cannot tell)."""
    try:
        return bool(await _leading_member(members))
    except CALL_ERRORS:
        return False


async def campaign(members: Members, key: bytes, value: bytes, ttl: int) -> Leadership:
    """Block until this candidate leads; `value` (its address) is what others read.

    A candidate whose member is etcd's leader lets the others go first (YIELD seconds):
    that candidate sees the key go and commits first, so it would nearly always win, and a
    leader beside etcd's leader makes one machine's death cost both elections in series:
    etcd's (1-2 s), then the lease, which etcd's new leader extends by a full TTL and an
    election timeout. Apart, the lease alone counts (2-2.5 s). When no other candidate
    takes the key, this one still does, YIELD later."""
    while True:
        if await _beside_etcds_leader(members):
            await asyncio.sleep(YIELD)
        lease = await Lease.grant(members, ttl)
        won = False
        try:
            request = rpc.TxnRequest(
                compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                                     key=key, create_revision=0)],
                success=[rpc.RequestOp(
                    request_put=rpc.PutRequest(key=key, value=value, lease=lease.id))],
            )
            reply = await members.call(kv("Txn", request, RPC_TIMEOUT))
            if reply.succeeded and not lease.lost.is_set():
                won = True
                return Leadership(lease, Fence(key, int(reply.header.revision)), members)
        finally:
            if not won:
                await lease.revoke()
        await _until_deleted(members, key, reply.header.revision + 1)


async def _until_deleted(members: Members, key: bytes, start: int) -> None:
    """Return once `key` is deleted after revision `start` (or the watch broke: the caller
    simply tries again)."""
    channel = members.channel()
    call = rpc.WatchStub(channel).Watch(metadata=REQUIRE_LEADER)
    try:
        await call.write(
            rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=key, start_revision=start))
        )
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF or reply.canceled or reply.compact_revision:
                return
            if any(e.type == rpc.Event.DELETE for e in reply.events):
                return
    except CALL_ERRORS as error:
        log.warning("election: watch failed (%s); trying again",
                    failover_reason(error) or repr(error))
        members.failed(channel, error)
        await asyncio.sleep(RETRY)
    finally:
        call.cancel()


async def leader(members: Members, key: bytes) -> bytes | None:
    """The current leader's value, or None."""
    reply = await members.call(kv("Range", rpc.RangeRequest(key=key), RPC_TIMEOUT))
    return bytes(reply.kvs[0].value) if reply.kvs else None


async def register(members: Members, key: bytes, value: bytes, ttl: int) -> None:
    """Keep `key` = `value` bound to a live lease of this process, for as long as this
    runs (cancel it to stop; the key then goes within `ttl`)."""
    while True:
        lease: Lease | None = None
        try:
            lease = await Lease.grant(members, ttl)
            put = rpc.PutRequest(key=key, value=value, lease=lease.id)
            await members.call(kv("Put", put, RPC_TIMEOUT))
            await lease.lost.wait()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever failed, register again
            what = error.details() if isinstance(error, grpc.aio.AioRpcError) else repr(error)
            log.warning("roster: cannot register %s (%s)", key.decode(), what)
        finally:
            if lease is not None:
                await asyncio.shield(lease.revoke())
        await asyncio.sleep(RETRY)


async def roster(members: Members, election_key: bytes,
                 members_prefix: bytes) -> tuple[bytes | None, dict[str, bytes]]:
    """The leader's value and every registered member (name -> value), read together."""
    request = rpc.TxnRequest(success=[
        rpc.RequestOp(request_range=rpc.RangeRequest(key=election_key)),
        rpc.RequestOp(request_range=rpc.RangeRequest(
            key=members_prefix, range_end=prefix_range_end(members_prefix))),
    ])
    reply = await members.call(kv("Txn", request, RPC_TIMEOUT))
    head, registered = (r.response_range.kvs for r in reply.responses)
    leading = bytes(head[0].value) if head else None
    return leading, {bytes(item.key[len(members_prefix):]).decode(): bytes(item.value)
                     for item in registered}
