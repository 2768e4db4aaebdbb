"""The shared backend: an etcd v3 cluster, so that several managers keep one state.

Layout: one key per object, `<prefix><kind>/<id>`, whose value is the serialized message.
An object's version is its key's mod_revision, so a commit's revision (etcd's revision after
the txn) is the version of everything it wrote.

Policy:
- A commit is one etcd Txn: compare every key (mod_revision == expected, or
  create_revision == 0 for a new object), then all puts and deletes. On a failed compare
  the same Txn reads back the keys (keys only) to name the object that changed.
- A leader's commit is fenced: the same Txn also compares the election key's
  create_revision with its term's (etcd_election.py). Lease expiry alone would not do: a
  leader stalled (GC, a slow disk, a cut link) past its lease could still land a write it
  prepared before the next leader took over. The compare makes that impossible.
- etcd caps the ops of one Txn (--max-txn-ops, 128 by default) and the size of a request
  (--max-request-bytes, 1.5 MiB). `max_txn_ops` must match the server: the store refuses an
  atomic write larger than it and splits only writes it was told may be split
  (`Store.batch`). Run etcd with higher limits for large atomic writes.
- Load ranges over the prefix in pages, every page pinned to the first page's revision, so
  the view is one consistent snapshot; the watch starts just after it, so nothing is missed.
- The watch is a bidirectional stream written directly on etcd's generated gRPC stubs
  (shipped by aetcd) rather than aetcd's Watcher, because the store needs etcd's grouping of
  events per revision (one revision = one commit) and progress requests, which aetcd's
  per-event callbacks do not give. It reconnects from the next revision after a dropped
  stream; if etcd compacted that history away the watch fails and the view is stale (the
  manager must restart its store).
- aetcd 1.0.0's generated code (made by protoc 5.27) imports under our protobuf 7.36 with
  the upb backend, without a warning even under -W error: no regeneration or pin needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from ..errors import NotLeader, StoreUnavailable, VersionConflict
from .base import Change, ChangeBatch, Fence, Op, Record
from .etcd_election import Leadership, campaign, leader, register, roster
from .etcd_members import CALL_ERRORS, REQUIRE_LEADER, Members, kv

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/pyswarm/v1/"
PAGE = 1000  # keys per Range page at load: well under gRPC's 4 MiB message limit
RPC_TIMEOUT = 30.0  # a single unary call (a 10,000-key commit takes about a second)
# How long a commit keeps sending a Txn that etcd dropped as a proposal (an etcd election
# takes about a second) before the caller hears StoreUnavailable.
DROPPED_RETRY_S = 5.0
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # the watch's backoff, then every 5 s


class EtcdBackend:
    def __init__(
        self, endpoints: list[str], prefix: str = DEFAULT_PREFIX, *, max_txn_ops: int = 128
    ):
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = endpoints
        self.prefix = prefix
        self.max_ops: int | None = max_txn_ops
        self._prefix = prefix.encode()
        self.members = Members(endpoints)  # calls go to one member, the next on failure
        self.dropped_retry_s = DROPPED_RETRY_S
        self._loaded = 0
        self._watch_call: grpc.aio.StreamStreamCall | None = None

    def _key(self, kind: str, id: str) -> bytes:
        return self._prefix + f"{kind}/{id}".encode()

    def _parse(self, key: bytes) -> tuple[str, str] | None:
        kind, slash, id = key[len(self._prefix) :].decode().partition("/")
        return (kind, id) if slash else None

    # ---- load ---------------------------------------------------------------------------

    async def load(self) -> tuple[int, dict[str, dict[str, Record]]]:
        end = prefix_range_end(self._prefix)
        key, revision = self._prefix, 0
        objects: dict[str, dict[str, Record]] = {}
        while True:
            reply = await self.members.call(kv("Range", rpc.RangeRequest(
                key=key, range_end=end, limit=PAGE, revision=revision), RPC_TIMEOUT))
            revision = revision or reply.header.revision
            for item in reply.kvs:
                parsed = self._parse(item.key)
                if parsed is not None:
                    objects.setdefault(parsed[0], {})[parsed[1]] = Record(
                        item.value, item.mod_revision
                    )
            if not reply.more:
                break
            key = reply.kvs[-1].key + b"\0"
        self._loaded = revision
        return revision, objects

    # ---- commit -------------------------------------------------------------------------

    async def commit(self, ops: list[Op], fence: Fence | None = None) -> int:
        compare, success, failure = [], [], []
        if fence is not None:  # first: a deposed leader hears that, not a conflict
            compare.append(rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                                       key=fence.key, create_revision=fence.revision))
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=fence.key,
                                                                        keys_only=True)))
        for op in ops:
            key = self._key(op.kind, op.id)
            if op.expected_version == 0:
                compare.append(
                    rpc.Compare(
                        result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key,
                        create_revision=0,
                    )
                )
            else:
                compare.append(
                    rpc.Compare(
                        result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key,
                        mod_revision=op.expected_version,
                    )
                )
            if op.data is None:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
            else:
                success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.data)))
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=key, keys_only=True)))
        txn = kv("Txn", rpc.TxnRequest(compare=compare, success=success, failure=failure),
                 RPC_TIMEOUT)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.dropped_retry_s
        delay = 0.05
        while True:
            try:
                reply = await self.members.call(txn)
                break
            except grpc.aio.AioRpcError as error:
                if not _transient(error):
                    raise
                if (error.details() == PROPOSAL_DROPPED
                        and loop.time() + delay < give_up):
                    # Never appended to etcd's log (its raft leader was changing): the
                    # same Txn again, still guarded by its compares, once etcd has a leader.
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                raise StoreUnavailable(
                    f"the cluster store (etcd) did not answer: {error.details()}; the write "
                    f"may or may not have been applied, and retrying it is safe") from None
        if reply.succeeded:
            return int(reply.header.revision)
        reads = list(reply.responses)
        if fence is not None:
            kvs = reads.pop(0).response_range.kvs
            if not kvs or kvs[0].create_revision != fence.revision:
                raise NotLeader("this manager's leadership ended before its write landed; "
                                "nothing of it was applied")
        for op, read in zip(ops, reads, strict=True):
            kvs = read.response_range.kvs
            current = kvs[0].mod_revision if kvs else 0
            if current != op.expected_version:
                if op.expected_version == 0:
                    what = "already exists"
                elif current == 0:
                    what = "no longer exists"
                else:
                    what = f"is at version {current}, not {op.expected_version}"
                raise VersionConflict(
                    f"{op.kind} {op.id} {what}", kind=op.kind, id=op.id,
                    revision=reply.header.revision,
                )
        raise VersionConflict("the commit lost a race", revision=reply.header.revision)

    # ---- watch --------------------------------------------------------------------------

    def watch(self) -> AsyncIterator[ChangeBatch] | None:
        return self._follow()

    async def _follow(self) -> AsyncIterator[ChangeBatch]:
        start = self._loaded + 1
        failures = 0
        while True:
            channel = self.members.channel()
            call = rpc.WatchStub(channel).Watch(metadata=REQUIRE_LEADER)
            self._watch_call = call
            try:
                await call.write(
                    rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(
                            key=self._prefix,
                            range_end=prefix_range_end(self._prefix),
                            start_revision=start,
                        )
                    )
                )
                while True:
                    reply = await call.read()
                    if reply is grpc.aio.EOF:
                        raise ConnectionError("etcd closed the watch stream")
                    if reply.compact_revision:
                        raise RuntimeError(
                            f"etcd compacted revisions up to {reply.compact_revision}: "
                            f"changes after {start - 1} are lost; restart the store"
                        )
                    if reply.canceled:
                        raise ConnectionError(f"etcd canceled the watch: {reply.cancel_reason}")
                    failures = 0
                    if reply.created:
                        continue
                    if not reply.events:  # a progress mark
                        yield ChangeBatch(reply.header.revision, [])
                        continue
                    for batch in self._batches(reply.events):
                        start = batch.revision + 1
                        yield batch
            except CALL_ERRORS as error:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("etcd watch dropped (%s); resuming at %d in %.1fs", error, start, delay)
                self.members.failed(channel, error)
                await asyncio.sleep(delay)
            finally:
                self._watch_call = None
                call.cancel()

    def _batches(self, events: list[rpc.Event]) -> list[ChangeBatch]:
        """Group a watch reply's events by revision: one etcd revision is one commit."""
        batches: list[ChangeBatch] = []
        for event in events:
            record = event.kv
            parsed = self._parse(record.key)
            if parsed is None:
                continue
            if not batches or batches[-1].revision != record.mod_revision:
                batches.append(ChangeBatch(record.mod_revision, []))
            deleted = event.type == rpc.Event.DELETE
            batches[-1].changes.append(
                Change(parsed[0], parsed[1], None if deleted else record.value, record.mod_revision)
            )
        return batches

    async def request_progress(self) -> None:
        """Ask etcd for a progress mark (etcd >= 3.4): it answers once the watch has sent
        every event up to the current revision."""
        if self._watch_call is not None:
            # a stream that is failing asks nothing: the watch reconnects, and the caller
            # waits for the revision with a timeout anyway
            with contextlib.suppress(*CALL_ERRORS):
                await self._watch_call.write(
                    rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
                )

    # ---- leader election and the roster (etcd_election.py) ------------------------------

    def _side_key(self, folder: str, name: str) -> bytes:
        return (self.prefix.rstrip("/") + f".{folder}/" + name).encode()

    async def campaign(self, name: str, value: bytes, ttl: int = 10) -> Leadership:
        """Block until this manager leads election `name`."""
        return await campaign(self.members, self._side_key("election", name), value, ttl)

    async def leader(self, name: str) -> bytes | None:
        """The value the current leader of `name` campaigned with, or None."""
        return await leader(self.members, self._side_key("election", name))

    async def register(self, member: str, value: bytes, ttl: int) -> None:
        """Keep this manager in the roster while this runs (etcd_election.register)."""
        await register(self.members, self._side_key("managers", member), value, ttl)

    async def roster(self, election: str) -> tuple[bytes | None, dict[str, bytes]]:
        """The leader of `election` and every registered manager."""
        return await roster(self.members, self._side_key("election", election),
                            self._side_key("managers", ""))

    async def close(self) -> None:
        if self._watch_call is not None:
            self._watch_call.cancel()
        await self.members.close()


# etcd's answers (besides UNAVAILABLE and DEADLINE_EXCEEDED) while its raft leader changes:
# safe to retry, since a commit's compares fail if it did land. A dropped proposal
# (rpctypes.ErrProposalDropped, as UNKNOWN) was never in the log, so `commit` sends it
# again itself; after the others the manager cannot tell whether it landed (a retry of a
# write that did would meet a conflict), so they go to the caller.
PROPOSAL_DROPPED = "raft proposal dropped"
_DROPPED = frozenset({PROPOSAL_DROPPED, "etcdserver: request timed out, possibly due "
                      "to previous leader failure", "etcdserver: leader changed"})


def _transient(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call may succeed if made again (the member, or etcd's leader, was
    changing): reported as StoreUnavailable, which says that retrying is safe."""
    return (error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            or (error.details() or "") in _DROPPED)
