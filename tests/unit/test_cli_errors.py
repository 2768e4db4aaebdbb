"""The CLI tells a daemon that is not there from a daemon's own UNAVAILABLE answer.

A follower manager whose etcd member died answers a deploy with StoreUnavailable, whose
message quotes gRPC's own ("failed to connect to all addresses") and says the write can be
retried. The CLI once matched that text and told the user the local daemon was not
running (the HA lab test caught it mid-failover)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyswarm.cli import client
from pyswarm.common.rpc import user_errors
from pyswarm.manager.store.errors import NotLeader, StoreUnavailable

ETCD_DOWN = ("the cluster store (etcd) did not answer: failed to connect to all addresses; "
             "last error: UNKNOWN: ipv4:10.0.0.1:2379: Socket closed; the write may or may "
             "not have been applied, and retrying it is safe")


class _Refuser:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @user_errors
    async def Call(self, request: bytes, context: Any) -> bytes:
        raise self.exc


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(exc): a daemon on a unix socket whose one method raises exc; its address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[grpc.aio.Server] = []

    def serve(exc: Exception) -> str:
        addr = f"unix://{tmp_path}/d{len(servers)}.sock"

        async def start() -> None:
            server = grpc.aio.server()
            handler = grpc.unary_unary_rpc_method_handler(_Refuser(exc).Call)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "t.T", {"Call": handler}),))
            server.add_insecure_port(addr)
            await server.start()
            servers.append(server)
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        return addr

    yield serve
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _call(addr: str) -> grpc.RpcError:
    with grpc.insecure_channel(addr) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/t.T/Call")(b"", timeout=5)
    return caught.value


@pytest.mark.parametrize("exc", [StoreUnavailable(ETCD_DOWN),
                                 NotLeader("this manager is not the leader: Socket closed")])
def test_a_daemons_unavailable_answer_is_shown_as_it_is(serve: Any, exc: Exception) -> None:
    error = _call(serve(exc))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    shown = str(client.explain(error))
    assert "Cannot connect" not in shown
    assert shown == f"Error response from daemon: {exc}"


def test_no_daemon_is_shown_as_no_daemon(tmp_path: Path) -> None:
    error = _call(f"unix://{tmp_path}/nobody.sock")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Cannot connect to the pyswarm daemon" in str(client.explain(error))
