"""Leader election among managers sharing etcd: whoever creates the election key leads.

Policy: the key is attached to a lease that the leader keeps alive every ttl/3 seconds.
A leader that dies (or is partitioned from etcd) stops refreshing, the lease expires after
`ttl` seconds, etcd deletes the key, and a waiting candidate's create succeeds. A leader
that fails to refresh its lease sets `lost` and must stop acting as leader at once.
The key lives beside the object prefix (`/pyswarm/v1.election/<name>`), not under it, so the
store's watch never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, channel: grpc.aio.Channel, key: bytes, lease_id: int, ttl: int):
        self.key = key
        self.lease_id = lease_id
        self.lost = asyncio.Event()  # set when the lease could not be kept alive
        self._channel = channel
        self._keepalive = asyncio.create_task(self._keep_alive(ttl))

    async def _keep_alive(self, ttl: int) -> None:
        async def pings() -> AsyncIterator[rpc.LeaseKeepAliveRequest]:
            while True:
                yield rpc.LeaseKeepAliveRequest(ID=self.lease_id)
                await asyncio.sleep(max(ttl / 3, 0.5))

        try:
            async for reply in rpc.LeaseStub(self._channel).LeaseKeepAlive(pings()):
                if reply.TTL <= 0:
                    break  # the lease is gone
        except grpc.aio.AioRpcError as error:
            log.warning("election: lease keep-alive failed: %s", error)
        self.lost.set()

    async def resign(self) -> None:
        """Give up leadership now: revoking the lease deletes the key."""
        self._keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keepalive
        with contextlib.suppress(grpc.aio.AioRpcError):
            await rpc.LeaseStub(self._channel).LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=self.lease_id), timeout=10
            )
        self.lost.set()


async def campaign(channel: grpc.aio.Channel, key: bytes, value: bytes, ttl: int) -> Leadership:
    """Block until this candidate leads; `value` (its address) is what others read."""
    lease = await rpc.LeaseStub(channel).LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=10)
    leadership_started = False
    try:
        while True:
            reply = await rpc.KVStub(channel).Txn(
                rpc.TxnRequest(
                    compare=[
                        rpc.Compare(
                            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key,
                            create_revision=0,
                        )
                    ],
                    success=[rpc.RequestOp(
                        request_put=rpc.PutRequest(key=key, value=value, lease=lease.ID)
                    )],
                ),
                timeout=10,
            )
            if reply.succeeded:
                leadership_started = True
                return Leadership(channel, key, lease.ID, ttl)
            await _until_deleted(channel, key, reply.header.revision + 1)
    finally:
        if not leadership_started:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await rpc.LeaseStub(channel).LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease.ID), timeout=10
                )


async def _until_deleted(channel: grpc.aio.Channel, key: bytes, start: int) -> None:
    call = rpc.WatchStub(channel).Watch()
    try:
        await call.write(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(key=key, start_revision=start)
            )
        )
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF or reply.canceled or reply.compact_revision:
                return  # try again from the top
            if any(e.type == rpc.Event.DELETE for e in reply.events):
                return
    finally:
        call.cancel()


async def leader(channel: grpc.aio.Channel, key: bytes) -> bytes | None:
    """The current leader's value, or None."""
    reply = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key), timeout=10)
    return bytes(reply.kvs[0].value) if reply.kvs else None
