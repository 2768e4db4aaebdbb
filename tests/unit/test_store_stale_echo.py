"""A lagging watch must not bring back an object this store has deleted.

With a shared backend (etcd), this store's own commits come back through the watch, late
when the machine is busy. An echo of an update that predates our delete arrives after the
delete is in memory: it must be dropped, not resurrect the object."""

import asyncio
from collections.abc import AsyncIterator

from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.manager.store.backends.base import Change, ChangeBatch
from pyswarm.proto.objects_pb2 import Service


class LaggingBackend(MemoryBackend):
    """Memory storage whose watch delivers only what the test feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.feed: asyncio.Queue[ChangeBatch] = asyncio.Queue()

    def watch(self) -> AsyncIterator[ChangeBatch] | None:
        async def follow() -> AsyncIterator[ChangeBatch]:
            while True:
                yield await self.feed.get()

        return follow()


def test_an_old_echo_does_not_resurrect_a_deleted_object() -> None:
    async def body() -> None:
        backend = LaggingBackend()
        store = await Store.open(backend)
        await store.update(lambda tx: tx.create(Service(id="s1")))
        created = store.view().get("service", "s1")
        assert created is not None
        echo = ChangeBatch(created.meta.version,
                           [Change("service", "s1", created.SerializeToString(),
                                   created.meta.version)])
        await store.update(lambda tx: tx.delete("service", "s1"))
        backend.feed.put_nowait(echo)  # the watch catches up late
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.view().get("service", "s1") is None
        # A genuinely newer foreign write of the same id still applies.
        newer = ChangeBatch(store.revision + 5, [Change(
            "service", "s1", Service(id="s1").SerializeToString(), store.revision + 5)])
        backend.feed.put_nowait(newer)
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.view().get("service", "s1") is not None
        await store.close()

    asyncio.run(asyncio.wait_for(body(), 10))
