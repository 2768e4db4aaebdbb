"""How long this manager currently takes to hear a node: its own health check, sent from
inside the manager to its public TLS port.

A heartbeat crosses the port's router, TLS, gRPC's completion queue and the event loop
before the dispatcher sees it. When the manager is overloaded (a big deploy on a thousand
nodes), heartbeats wait in those queues, not in the dispatcher: the liveness loop's own
timer can be on time while they wait, so the loop's lateness alone does not show it, and
healthy nodes would be marked DOWN, their tasks moved, and the extra work would overload
the manager further. The probe takes the same path as a heartbeat (the standard
grpc.health.v1 Check, with this manager's own node certificate), so its round trip is
what a heartbeat waits now for the manager as a whole; the dispatcher waits that much
longer before it marks a node DOWN (Dispatcher._watch_liveness). What it cannot see is a
delay on one node's connection alone; the dispatcher's false-DOWN backoff covers that.

`lag()` is the larger of the last round trip and the age of the probe in flight: while the
manager is stuck, the lag grows with it and no node is marked DOWN meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROBE_EVERY = 0.25  # seconds between the end of one probe and the next


class IngressProbe:
    def __init__(self, channel: Callable[[], grpc.aio.Channel],
                 every: float = PROBE_EVERY) -> None:
        self._channel = channel
        self._every = every
        self._last = 0.0  # seconds the last answered probe took
        self._sent: float | None = None  # when the probe in flight was sent
        self._task: asyncio.Task[None] | None = None
        self.worst = 0.0

    def lag(self) -> float:
        in_flight = 0.0 if self._sent is None else time.monotonic() - self._sent
        return max(self._last, in_flight)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingress probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            channel = self._channel()
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    self._sent = time.monotonic()
                    await stub.Check(health_pb2.HealthCheckRequest())
                    self._last = time.monotonic() - self._sent
                    self.worst = max(self.worst, self._last)
                    self._sent = None
                    await asyncio.sleep(self._every)
            except grpc.aio.AioRpcError:
                # Not serving yet, or being stopped: no measure, no lag claimed.
                self._sent, self._last = None, 0.0
            finally:
                await channel.close()
            await asyncio.sleep(self._every)
