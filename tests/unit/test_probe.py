"""The manager's probe of itself measures what a heartbeat waits inside the manager:
against a real gRPC server whose health check is held on purpose."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pyswarm.manager.dispatcher.probe import IngressProbe


class HeldHealth(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.checks = 0

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        self.checks += 1
        await self.release.wait()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_the_lag_is_the_age_of_a_held_probe_then_its_round_trip() -> None:
    async def body() -> None:
        server = grpc.aio.server()
        health = HeldHealth()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        probe = IngressProbe(lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
                             every=0.02)
        probe.start()
        try:
            while health.checks < 3:
                await asyncio.sleep(0.01)
            assert probe.lag() < 0.2  # answered at once: a few milliseconds
            health.release.clear()  # the manager stops answering
            held_at = health.checks
            while health.checks == held_at:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await asyncio.sleep(0.5)
            assert probe.lag() >= 0.5  # grows while the probe waits
            health.release.set()
            while health.checks < held_at + 3:
                await asyncio.sleep(0.01)
            waited = time.monotonic() - started
            assert 0.5 <= probe.worst <= waited + 0.5
            assert probe.lag() < 0.2  # caught up
        finally:
            await probe.stop()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_a_manager_not_serving_yet_claims_no_lag() -> None:
    async def body() -> None:
        with socket.socket() as s:  # a port nobody serves
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        probe = IngressProbe(lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
                             every=0.02)
        probe.start()
        try:
            await asyncio.sleep(1.0)
            assert probe.lag() < 0.5  # failed attempts are not a manager being slow
        finally:
            await probe.stop()

    asyncio.run(asyncio.wait_for(body(), 20))
