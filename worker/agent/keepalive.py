"""What runs beside a worker's session stream: heartbeats and status reports.

Shared by the agent and the simulated nodes (worker/sim.py), so the benchmark measures the
protocol the daemons speak.

Policy:
- A heartbeat or a status report that times out, or finds the manager unavailable or out
  of resources, is sent again after a short pause (`retrying`): a busy manager is not a
  dead one. A heartbeat given up on would leave the session open with nobody beating in
  it, and the manager would mark a healthy node DOWN and move its tasks away.
- Heartbeats give up after GIVE_UP_PERIODS periods without an answer: a manager that
  vanished without closing the connection (a partition, a machine gone) must not hold the
  node's session forever; ten periods ride out a stalled manager but not a lost one.
- Any other error ends the session (NOT_FOUND: the manager no longer knows it), and the
  node opens a new one at once. `Helpers` does that: the first helper to fail cancels the
  session's stream, and the stream's reader raises the helper's error instead of the
  cancellation (`Helpers.failed`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

# Codes after which the same request is sent again in the same session.
RETRY = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.RESOURCE_EXHAUSTED})
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # seconds between attempts (doubling)
GIVE_UP_PERIODS = 10  # heartbeat periods without an answer before the session is given up


async def retrying(send: Callable[[], Awaitable[T]], give_up_after: float | None = None) -> T:
    """send()'s answer, sending again while it fails with a code in RETRY (and, with
    give_up_after, until that many seconds have passed: then its last error)."""
    pause = RETRY_MIN
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRY or (deadline is not None and time.monotonic() > deadline):
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_MAX)


class Helpers:
    """The background tasks of one session; the first of them to fail ends the session.

    Use: `start()` them when the session begins, `stop()` in the reader's `finally`, and in
    its `except asyncio.CancelledError` call `failed()` before re-raising.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None

    def start(self, *coros: Coroutine[Any, Any, None]) -> None:
        self.stop()
        for coro in coros:
            task = asyncio.create_task(coro)
            task.add_done_callback(self._done)
            self._tasks.append(task)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if self.failure is None:
            self.failure = task.exception()
            self._call.cancel()  # the reader's `async for` ends with CancelledError

    def failed(self) -> None:
        """Raise the helper's error if it is why the stream was cancelled (and not a
        cancellation of the reader itself)."""
        current = asyncio.current_task()
        if self.failure is not None and (current is None or current.cancelling() == 0):
            raise self.failure
