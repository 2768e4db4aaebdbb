"""What runs beside a worker's session stream: heartbeats and status reports.

    outbox = Outbox()                      # the node puts each task's status change in it
    helpers = Helpers(call)                # when a session starts:
    helpers.start(send_heartbeats(stub, node_id, session_id, period, answered, heard),
                  send_reports(stub, node_id, session_id, outbox))

Shared by the agent and the simulated nodes (worker/sim.py), so the benchmark measures the
protocol the daemons speak.

Policy:
- Heartbeats go out on the clock, every period, on one stream per session, whether or not
  the last one has been answered yet (`send_heartbeats` says why). A stream that fails
  with a retryable code is opened again; nothing gives up early: a busy manager is not a
  dead one, and a helper given up on would leave the session open with nobody beating in
  it.
- A status report that times out, or finds the manager unavailable or out of resources,
  is sent again after a short pause (`retrying`).
- Heartbeats give up after GIVE_UP_PERIODS periods without a word from the manager (an
  answer, or a message on the session stream): a manager that vanished without closing
  the connection (a partition, a machine gone) must not hold the node's session forever;
  ten periods ride out a stalled manager but not a lost one.
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

# Codes after which the same request is sent again (a heartbeat stream opened again) in the
# same session: the call did not get through, which says nothing about the session.
# CANCELLED is among them: at a thousand nodes an overloaded manager answered one heartbeat
# call in ten with it (bench/scale.py, when each heartbeat was a call of its own), and
# ending the session for it made every node reconnect three times within a deploy.
RETRY = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED})
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # seconds between attempts (doubling)
GIVE_UP_PERIODS = 10  # heartbeat periods without a word from the manager: session given up
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
                          answered: Callable[[cpb.HeartbeatResponse], None],
                          heard: Callable[[], float]) -> None:
    """Heartbeat every period() seconds (the manager sets it) on the session's Heartbeats
    stream, until cancelled or given up; `heard()` is when the session stream last brought
    a message (time.monotonic()).

    Writing does not wait for answers, and the manager reads without waiting to answer: an
    answer can be seconds late while the manager heard the heartbeat on time. It comes back
    on the connection that carries the session, behind whatever the manager is sending this
    node (a deploy's network changes); heartbeats that waited for answers were that late
    themselves, and a busy manager marked healthy nodes DOWN (bench/scale.py, 300 nodes).
    For the same reason a message on the session stream is as good a sign of the manager
    as an answer: at a thousand nodes, answers queued behind network states for up to 12 s
    and nodes that counted only answers gave up sessions the manager was serving.

    A stream that fails with a code in RETRY (or that the manager closes) is opened again
    in the same session after a short pause. Once nothing has come from the manager for
    GIVE_UP_PERIODS periods the session is given up: with the stream's last failure, or
    DEADLINE_EXCEEDED. Any other error ends it at once."""
    request = cpb.HeartbeatRequest(node_id=node_id, session_id=session_id)
    last_answer = time.monotonic()
    pause = RETRY_MIN

    def silent() -> float:
        return time.monotonic() - max(last_answer, heard())

    while True:
        opened = last_answer
        call = stub.Heartbeats()

        async def read(call: Any = call) -> None:
            nonlocal last_answer
            async for answer in call:
                last_answer = time.monotonic()
                answered(answer)

        async def write(call: Any = call) -> None:
            due = time.monotonic()
            while True:
                await call.write(request)
                due = max(due + period(), time.monotonic())  # a late tick is not made up
                await asyncio.sleep(due - time.monotonic())

        reader, writer = asyncio.create_task(read()), asyncio.create_task(write())
        try:
            while True:
                done, _ = await asyncio.wait({reader, writer}, timeout=period(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if done:
                    # The stream is over; its reader ends with its status (a write to an
                    # ended stream only says it ended).
                    await asyncio.wait({reader}, timeout=period())
                    failure = _ended(reader, writer)
                    break
                if silent() >= period() * GIVE_UP_PERIODS:
                    raise _silent(period() * GIVE_UP_PERIODS)
        finally:
            for task in (reader, writer):
                task.cancel()
            call.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if (not isinstance(failure, grpc.aio.AioRpcError) or failure.code() not in RETRY
                or silent() >= period() * GIVE_UP_PERIODS):
            raise failure
        pause = RETRY_MIN if last_answer > opened else min(pause * 2, RETRY_MAX)
        await asyncio.sleep(pause)


def _ended(*tasks: asyncio.Task[None]) -> BaseException:
    """Why a heartbeat stream ended: its gRPC status if a task saw one, else another error
    (a bug), else the manager closed it (UNAVAILABLE: it is opened again)."""
    errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]
    for exc in errors:
        if isinstance(exc, grpc.aio.AioRpcError):
            return exc
    for exc in errors:
        if exc is not None and not isinstance(exc, asyncio.InvalidStateError):
            return exc
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), "the manager closed the heartbeat stream")


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
