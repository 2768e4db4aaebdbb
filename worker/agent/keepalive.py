"""What runs beside a worker's session stream: heartbeats and status reports.

    outbox = Outbox()                      # the node puts each task's status change in it
    call = stub.Session()                  # the session's stream, both ways
    await open_session(call, request)
    helpers = Helpers(call)                # once its first message has come:
    helpers.start(send_heartbeats(call, period, heard),
                  send_reports(stub, node_id, session_id, outbox))

Shared by the agent and the simulated nodes (worker/sim.py), so the benchmark measures the
protocol the daemons speak.

Policy:
- Heartbeats go out on the clock, every period, on the session's own stream, whether or
  not the last one has been answered yet (`send_heartbeats` says why). Nothing gives up
  early: a busy manager is not a dead one.
- A status report that times out, or finds the manager unavailable or out of resources,
  is sent again after a short pause (`retrying`).
- Heartbeats give up after GIVE_UP_PERIODS periods without a word from the manager (any
  message on the session stream, an answer or not): a manager that vanished without closing
  the connection (a partition, a machine gone) must not hold the node's session forever;
  ten periods ride out a stalled manager but not a lost one.
- A status report's other errors end the session (NOT_FOUND: the manager no longer knows
  it), and the node opens a new one at once. `Helpers` does that: the first helper to
  fail cancels the session's stream, and the stream's reader raises the helper's error
  instead of the cancellation (`Helpers.cause`). A cancellation of the stream that the
  reader's own task did not ask for never leaves the session as a CancelledError: the
  node's loop would take it for its own and stop for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

T = TypeVar("T")

# Codes after which a status report is sent again in the same session: the call did not get
# through, which says nothing about the session. CANCELLED is among them: at a thousand
# nodes an overloaded manager answered one heartbeat call in ten with it (bench/scale.py,
# when each heartbeat was a call of its own), and ending the session for it made every
# node reconnect three times within a deploy.
RETRY = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # seconds between attempts (doubling)
GIVE_UP_PERIODS = 10  # heartbeat periods without a word from the manager: session given up
REPORT_BATCH = 0.02  # seconds: status changes within this window go in one request
SETTLE = 1.0  # seconds a stream's reader waits for a failing helper's error (Helpers)


async def retrying(send: Callable[[], Awaitable[T]]) -> T:
    """send()'s answer, sending again while it fails with a code in RETRY."""
    pause = RETRY_MIN
    while True:
        try:
            return await send()
        except grpc.aio.AioRpcError as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc  # not the call's failure: ours
            if exc.code() not in RETRY:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_MAX)


def being_cancelled() -> bool:
    """Whether the current task is being cancelled (gRPC may turn the cancellation of a
    task awaiting a unary call into that call's CANCELLED error)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Helpers:
    """The background tasks of one session; the first of them to fail ends the session.

    Use: `start()` them when the session begins, `stop()` in the reader's `finally`, and in
    its `except asyncio.CancelledError` raise `await cause()` unless it is None.
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

    async def cause(self) -> BaseException | None:
        """Why the session's stream was cancelled, for its reader: None when the reader's
        own task is being cancelled (the node stops), else the error of the helper that
        failed, or CANCELLED if none did.

        The helper's error may not be on record yet: gRPC cancels the call itself when a
        write is cancelled (grpc.aio's `_write`), so heartbeats given up during a write
        that hangs (a partition) cancel the stream before they have finished, and the
        reader can hear of it first. The helpers get a moment to finish."""
        if being_cancelled():
            return None
        if self.failure is None:
            running = [t for t in self._tasks if not t.done()]
            if running:
                await asyncio.wait(running, timeout=SETTLE)
        return self.failure or grpc.aio.AioRpcError(
            grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
            "the session's stream was cancelled")


async def open_session(call: Any, request: cpb.SessionRequest) -> None:
    """Send the message that opens a session on its new stream `call`. A call that has
    already ended (the manager could not be reached) is left to its reader, which raises
    its status: gRPC refuses the write itself with InvalidStateError, which says nothing."""
    with contextlib.suppress(asyncio.InvalidStateError):
        await call.write(cpb.SessionUp(open=request))


async def send_heartbeats(call: Any, period: Callable[[], float],
                          heard: Callable[[], float]) -> None:
    """Heartbeat every period() seconds (the manager sets it) on the session's stream
    `call`, until cancelled or given up; `heard()` is when the stream last brought a message
    from the manager (time.monotonic()): an answer to a heartbeat, or anything else.

    Writing does not wait for answers, and the manager reads without waiting to answer: an
    answer can be seconds late while the manager heard the heartbeat on time. It comes back
    behind whatever the manager is sending this node (a deploy's network changes), which
    is why any message counts as a word from the manager: at a thousand nodes, answers
    queued behind network states for up to 12 s, and nodes that counted only answers gave
    up sessions the manager was serving.

    Once nothing has come from the manager for GIVE_UP_PERIODS periods the session is given
    up (DEADLINE_EXCEEDED), even while a write waits for the connection to take it. A
    write that finds the stream ended ends this quietly: the stream's reader has its
    status."""
    beat = cpb.SessionUp(heartbeat=cpb.Heartbeat())

    async def write() -> None:
        due = time.monotonic()
        while True:
            await call.write(beat)
            due = max(due + period(), time.monotonic())  # a late tick is not made up
            await asyncio.sleep(due - time.monotonic())

    writer = asyncio.create_task(write())
    try:
        while True:
            done, _ = await asyncio.wait({writer}, timeout=period())
            if done:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    writer.result()
                return
            silent = time.monotonic() - heard()
            if silent >= period() * GIVE_UP_PERIODS:
                raise _silent(period() * GIVE_UP_PERIODS)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError,
                                 asyncio.InvalidStateError):
            await writer


def _silent(seconds: float) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), f"no word from the manager for {seconds:g} s")


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
