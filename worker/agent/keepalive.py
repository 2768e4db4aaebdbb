"""What runs beside a worker's session stream: heartbeats and status reports.

    outbox = Outbox()                      # the node puts each task's status change in it
    helpers = Helpers(call)                # when a session starts:
    helpers.start(send_heartbeats(stub, node_id, session_id, period, answered),
                  send_reports(stub, node_id, session_id, outbox))

Shared by the agent and the simulated nodes (worker/sim.py), so the benchmark measures the
protocol the daemons speak.

Policy:
- Heartbeats go out on the clock, every period, whether or not the last one has been
  answered yet (`send_heartbeats` says why). One that fails with a retryable code is
  followed by the next; nothing gives up early: a busy manager is not a dead one, and a
  helper given up on would leave the session open with nobody beating in it.
- A status report that times out, or finds the manager unavailable or out of resources,
  is sent again after a short pause (`retrying`).
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
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

T = TypeVar("T")

# Codes after which the same request is sent again in the same session: the call did not
# get through, which says nothing about the session. CANCELLED is among them: at a thousand
# nodes an overloaded manager answered one heartbeat in ten with it (bench/scale.py), and
# ending the session for it made every node reconnect three times within a deploy.
RETRY = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # seconds between attempts (doubling)
GIVE_UP_PERIODS = 10  # heartbeat periods without an answer before the session is given up
REPORT_BATCH = 0.02  # seconds: status changes within this window go in one request


async def retrying(send: Callable[[], Awaitable[T]]) -> T:
    """send()'s answer, sending again while it fails with a code in RETRY."""
    pause = RETRY_MIN
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if _cancelled():
                raise asyncio.CancelledError from exc  # not the call's failure: ours
            if exc.code() not in RETRY:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_MAX)


def _cancelled() -> bool:
    """Whether the current task is being cancelled (gRPC may turn the cancellation of a
    task awaiting a unary call into that call's CANCELLED error)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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


async def send_heartbeats(stub: Any, node_id: str, session_id: str,
                          period: Callable[[], float],
                          answered: Callable[[cpb.HeartbeatResponse], None]) -> None:
    """Heartbeat every period() seconds (the manager sets it), on the clock, until cancelled
    or given up.

    The next heartbeat does not wait for the last one's answer. An answer can be seconds
    late while the manager heard the heartbeat on time: it comes back on the connection
    that carries the session, behind whatever the manager is sending this node (a deploy's
    network changes). Waiting for each answer made the heartbeats themselves that late, and
    a busy manager marked healthy nodes DOWN (bench/scale.py, 300 nodes). So each one is
    its own call, with GIVE_UP_PERIODS periods to be answered; a retryable failure (RETRY)
    is left to the next tick, and once no heartbeat has been answered for GIVE_UP_PERIODS
    periods the session is given up with that failure. Any other error ends it at once."""
    request = cpb.HeartbeatRequest(node_id=node_id, session_id=session_id)
    loop = asyncio.get_running_loop()
    failure: asyncio.Future[None] = loop.create_future()
    calls: set[asyncio.Task[cpb.HeartbeatResponse]] = set()
    last_answer = time.monotonic()
    ended = False

    def done(call: asyncio.Task[cpb.HeartbeatResponse]) -> None:
        nonlocal last_answer
        calls.discard(call)
        if call.cancelled():
            return
        exc = call.exception()  # retrieved even when the session is already ending
        if ended or failure.done():
            return
        if exc is None:
            last_answer = time.monotonic()
            answered(call.result())
        elif (not isinstance(exc, grpc.aio.AioRpcError) or exc.code() not in RETRY
              or time.monotonic() - last_answer >= period() * GIVE_UP_PERIODS):
            failure.set_exception(exc)

    async def beat() -> cpb.HeartbeatResponse:
        return await stub.Heartbeat(request, timeout=period() * GIVE_UP_PERIODS)  # type: ignore[no-any-return]

    due = time.monotonic()
    try:
        while True:
            due = max(due + period(), time.monotonic())  # a late tick is not made up twice
            await asyncio.wait([failure], timeout=due - time.monotonic())
            if failure.done():
                failure.result()  # raises the failure
            call = asyncio.create_task(beat())
            calls.add(call)
            call.add_done_callback(done)
    finally:
        ended = True  # calls cancelled below may still end in errors: they no longer count
        for call in list(calls):
            call.cancel()
        if failure.done() and not failure.cancelled():
            failure.exception()  # retrieved: it is raised above or the session is ending


class Outbox:
    """Task status changes not reported yet: the newest of each task."""

    def __init__(self) -> None:
        self.statuses: dict[str, opb.TaskStatus] = {}
        self.ready = asyncio.Event()

    def put(self, task_id: str, status: opb.TaskStatus) -> None:
        self.statuses[task_id] = status
        self.ready.set()

    def drop(self, task_id: str) -> None:
        self.statuses.pop(task_id, None)

    def correct(self, task_id: str, managers: opb.TaskStatus, ours: opb.TaskStatus) -> None:
        """A new session's COMPLETE assignments carry the manager's view of each task's
        status: where it is behind what this node reported (a report lost with a session,
        a manager restored or failed over), report ours again. Level-triggered, as the
        assignments are: a lost report is repaired at the next session, whatever lost it."""
        if ours.state > managers.state and task_id not in self.statuses:
            self.put(task_id, ours)

    def restore(self, batch: dict[str, opb.TaskStatus]) -> None:
        """A batch that was not acknowledged goes back; changes made since win."""
        for task_id, status in batch.items():
            self.statuses.setdefault(task_id, status)
        if self.statuses:
            self.ready.set()


async def send_reports(
        stub: Any, node_id: str, session_id: str, outbox: Outbox,
        before: Callable[[], Awaitable[None]] | None = None,
        answered: Callable[[cpb.UpdateTaskStatusResponse], None] | None = None) -> None:
    """Send what the outbox gathers, in batches, until cancelled; `before` runs before
    each batch is taken. A batch that fails for good, or is still in flight when the
    session ends, goes back to the outbox (newer changes win) for the next session: the
    manager may never have seen it, and sending a status twice is harmless."""
    while True:
        await outbox.ready.wait()
        await asyncio.sleep(REPORT_BATCH)
        outbox.ready.clear()
        if before is not None:
            await before()
        batch, outbox.statuses = outbox.statuses, {}
        if not batch:
            continue
        request = cpb.UpdateTaskStatusRequest(
            node_id=node_id, session_id=session_id,
            updates=[cpb.TaskStatusUpdate(task_id=k, status=v) for k, v in batch.items()])
        try:
            answer = await retrying(functools.partial(stub.UpdateTaskStatus, request))
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            outbox.restore(batch)
            raise
        if answered is not None:
            answered(answer)
