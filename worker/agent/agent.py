"""The agent: this node's side of the cluster.

It keeps a session with a manager's dispatcher, runs the tasks the session assigns through
the local engine (one TaskController each), reports every state change in batches and
heartbeats on the session's stream at the period the manager sets.

Policy:
- When the session drops the agent keeps every container running and reconnects with
  exponential backoff; status changes made meanwhile are sent once it is back.
- On (re)start the agent re-adopts the containers its tasks run in (found by their
  com.docker.swarm.task.id label). A COMPLETE assignment set is the truth: containers of
  tasks absent from it are stopped and removed.
- A report that times out is sent again; one that fails for good ends the session, which
  reconnects at once, and so does a manager silent for ten periods (keepalive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from pyswarm.common.netdelta import NetworkView, StaleDelta
from pyswarm.common.rpc import LEADER_KEY
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.controller import Report, TaskController
from pyswarm.worker.agent.keepalive import (
    Helpers,
    Outbox,
    being_cancelled,
    open_session,
    send_heartbeats,
    send_reports,
)
from pyswarm.worker.agent.remotes import Remotes
from pyswarm.worker.agent.spec import TASK_LABEL
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.records import ContainerRecord
from pyswarm.worker.engine.service import ExitWatcher

BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # seconds between reconnection attempts
ELECTION_RETRY = 0.25  # seconds before the next attempt when the managers are electing
# Session failures said once per kind (a manager gone or restarting, a follower's
# redirect); any other (a refusal: PERMISSION_DENIED...) is said at every attempt.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND,
             grpc.StatusCode.FAILED_PRECONDITION}


def describe_node() -> opb.NodeDescription:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return opb.NodeDescription(
        # PYSWARM_NODE_NAME names nodes that share one machine (tests, the lab).
        hostname=os.environ.get("PYSWARM_NODE_NAME") or socket.gethostname(),
        os="linux", architecture=platform.machine(),
        resources=opb.Resources(nano_cpus=(os.cpu_count() or 1) * 10**9, memory_bytes=memory),
        engine_version="pyswarm 0.1.0",
    )


class Agent:
    def __init__(self, engine: Engine, watcher: ExitWatcher, node_id: str,
                 channel_factory: Callable[[str], grpc.aio.Channel], addr: str = "",
                 remotes: Remotes | None = None,
                 on_tasks_changed: Callable[[dict[str, TaskController]], None] | None = None,
                 before_report: Callable[[], Awaitable[None]] | None = None,
                 on_network_state: Callable[[cpb.NetworkState], None] | None = None,
                 ) -> None:
        self.engine = engine
        self.watcher = watcher
        self.node_id = node_id
        self.channel_factory = channel_factory  # a channel to a manager (remotes.py)
        self.remotes = remotes or Remotes([""])
        self.addr = addr
        self.description = describe_node()
        self.controllers: dict[str, TaskController] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._outbox = Outbox()
        self._session_id = ""
        self._session_with = ""  # the manager of the last session (remotes.py)
        self._stub: Any = None
        self.on_tasks_changed = on_tasks_changed
        self.before_report = before_report
        self.on_network_state = on_network_state
        self.network_state: cpb.NetworkState | None = None  # the whole state, merged
        self.network_view = NetworkView(node_id)
        self._period = 1.0
        self._heard = 0.0  # when the session stream last brought a message (monotonic)
        self._cleanups: set[asyncio.Task[None]] = set()

    # ---- session -------------------------------------------------------------------------

    async def serve(self, pause: float = BACKOFF_MAX) -> None:
        """run(), started again after `pause` should it ever end other than by this task's
        own cancellation (the node stops): an agent that stopped would leave its node DOWN
        for good, and say nothing."""
        while True:
            try:
                await self.run()
                why = "it returned"
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                why = "a cancellation the node did not ask for"
            except Exception as exc:  # noqa: BLE001 - said, and the loop runs again
                why = repr(exc)
            print(f"pyswarm agent: the session loop stopped ({why}); starting it again",
                  flush=True)
            await asyncio.sleep(pause)

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        last: tuple[str, Any, str] | None = None  # the last failure said in the log
        while True:
            target = self.remotes.pick()
            channel = self.channel_factory(target)
            try:
                await self._session(cpb_grpc.DispatcherStub(channel), target)
                backoff, last = BACKOFF_MIN, None
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                leader = _leader_named(exc)
                if leader is not None:  # a follower: go to the leader now
                    self.remotes.redirected(target, leader)
                    # no leader yet (an election): soon, never after a grown backoff, or
                    # the new leader's grace for reconnecting nodes may run out first
                    backoff = BACKOFF_MIN if leader else ELECTION_RETRY
                else:
                    self.remotes.failed(target)
                said = (target, exc.code(), exc.details())
                if said != last or exc.code() not in TRANSIENT:
                    print(f"pyswarm agent: no session with {target or 'the manager'} "
                          f"({exc.code().name}: {exc.details()}); next: "
                          f"{self.remotes.pick()}", flush=True)
                    last = said
            except Exception as exc:  # noqa: BLE001 - a bug must not end the agent
                print(f"pyswarm agent: session error: {exc!r}", flush=True)
            finally:
                self._stub = None
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, stub: Any, target: str = "") -> None:
        call = stub.Session()
        helpers = Helpers(call)
        try:
            await open_session(call, cpb.SessionRequest(
                node_id=self.node_id, description=self.description, addr=self.addr))
            async for message in call:
                self._heard = time.monotonic()  # a word from the manager (send_heartbeats)
                if not self._session_id or message.session_id != self._session_id:
                    self._session_id = message.session_id
                    if target != self._session_with:
                        print(f"pyswarm agent: in session with {target or 'the manager'}",
                              flush=True)
                        self._session_with = target
                    self.remotes.worked(target)
                    if message.managers:
                        self.remotes.learned(message.managers)
                    self._stub = stub
                    helpers.start(
                        send_heartbeats(call, lambda: self._period, lambda: self._heard),
                        send_reports(stub, self.node_id, self._session_id, self._outbox,
                                     self.before_report))
                    self._outbox.ready.set()  # resend what changed while disconnected
                self._period = message.heartbeat_period_ms / 1000 or 1.0
                if message.HasField("assignments"):  # absent: a network-only message
                    self._apply(message.assignments)
                if message.HasField("network"):
                    # Whole first, then deltas: consumers get the merged whole state.
                    try:
                        state = self.network_view.apply(message.network)
                    except StaleDelta as exc:
                        # A message was missed: a new session starts with a whole state.
                        print(f"pyswarm agent: {exc}; reconnecting", flush=True)
                        raise
                    self.network_state = state
                    if self.on_network_state is not None:
                        self.on_network_state(state)
        except asyncio.CancelledError:
            if (cause := await helpers.cause()) is not None:
                raise cause from None  # a heartbeat or report failed for good: reconnect
            raise
        finally:
            helpers.stop()
            self._session_id = ""

    # ---- assignments ---------------------------------------------------------------------

    def _apply(self, assignments: cpb.Assignments) -> None:
        if assignments.type == cpb.Assignments.COMPLETE:
            wanted = {t.id for t in assignments.update}
            for task_id in list(self.controllers):
                if task_id not in wanted:
                    self.controllers[task_id].remove()
            self._remove_strays(wanted)
        for task in assignments.update:
            controller = self.controllers.get(task.id)
            if controller is None:
                controller = TaskController(task, self.engine, self.watcher, self._report,
                                            self.description.hostname,
                                            adopted=self._container_of(task.id))
                self.controllers[task.id] = controller
                self._runs[task.id] = asyncio.create_task(self._drive(controller))
            else:
                controller.update(task)
                if assignments.type == cpb.Assignments.COMPLETE:
                    self._outbox.correct(task.id, task.status, controller.status)
        for task_id in assignments.remove:
            if task_id in self.controllers:
                self.controllers[task_id].remove()
        self._changed()

    async def _drive(self, controller: TaskController) -> None:
        task_id = controller.task.id
        try:
            await controller.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            print(f"pyswarm agent: task {task_id} controller crashed: {exc!r}", flush=True)
        finally:
            if controller.removed and self.controllers.get(task_id) is controller:
                del self.controllers[task_id]
                self._runs.pop(task_id, None)
                self._changed()

    def _container_of(self, task_id: str) -> ContainerRecord | None:
        for record in self.engine.list(all=True):
            if record.labels.get(TASK_LABEL) == task_id:
                return record
        return None

    def _remove_strays(self, wanted: set[str]) -> None:
        """Containers of tasks this node no longer has (e.g. replaced while it was down)."""
        for record in self.engine.list(all=True):
            task_id = record.labels.get(TASK_LABEL)
            if task_id and task_id not in wanted and task_id not in self.controllers:
                # Keep a reference: the loop holds tasks only weakly.
                cleanup = asyncio.create_task(self._remove_container(record))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)

    async def _remove_container(self, record: ContainerRecord) -> None:
        with contextlib.suppress(Exception):
            if record.state == "running":
                await asyncio.to_thread(self.engine.kill, record.id, record.stop_signal)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.watcher.wait(record), DEFAULT_STRAY_GRACE)
            await asyncio.to_thread(self.engine.remove, record.id, True, True)

    def _changed(self) -> None:
        if self.on_tasks_changed is not None:
            self.on_tasks_changed(self.controllers)

    # ---- status reports ------------------------------------------------------------------

    def _report(self, report: Report) -> None:
        self._outbox.put(report.task_id, report.status)
        self._changed()

    async def close(self) -> None:
        for run in self._runs.values():
            run.cancel()


DEFAULT_STRAY_GRACE = 10.0  # seconds a stray container gets to stop before SIGKILL


def _leader_named(exc: grpc.aio.AioRpcError) -> str | None:
    """The leader's address a follower's refusal names (common.rpc.LEADER_KEY): "" while
    the managers elect one; None if this was no follower's refusal."""
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_KEY:
            return value if isinstance(value, str) else value.decode()
    return None
