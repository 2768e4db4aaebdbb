"""One task on this node, moved one state per step (SwarmKit's controller contract).

    ASSIGNED → ACCEPTED → PREPARING (image here?) → STARTING (create the container)
             → RUNNING → COMPLETE | FAILED              (the container exited 0 | not 0)
    desired SHUTDOWN: stop the container (stop signal, grace period, SIGKILL) → SHUTDOWN
    removed from the node's assignments: remove the container; the controller ends

Errors before the container started make the task REJECTED, after it FAILED. Every move is
reported through `report` (batched by the agent); the controller never rewinds a state.

A task on overlay networks stays PREPARING until every one of them is on this node (the
manager's NetworkState can arrive after the task); after NETWORK_WAIT without them it is
REJECTED, naming the networks that never came.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pyswarm.common import taskstate
from pyswarm.common.errors import Conflict, NotFound, PyswarmError
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.spec import container_request, missing_networks
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.records import ContainerRecord
from pyswarm.worker.engine.service import ExitWatcher

S = taskstate.S


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
DEFAULT_GRACE = 10.0  # seconds between the stop signal and SIGKILL (Swarm's default)
# Seconds a task waits in PREPARING for its overlay networks to reach this node: the
# NetworkState follows the assignments within a session round trip, so this is generous.
NETWORK_WAIT = 30.0
NETWORK_CHECK = 0.2  # seconds between looks while waiting


@dataclass
class Report:
    task_id: str
    status: opb.TaskStatus


class TaskController:
    def __init__(self, task: opb.Task, engine: Engine, watcher: ExitWatcher,
                 report: Callable[[Report], None], node_hostname: str,
                 adopted: ContainerRecord | None = None) -> None:
        self.task = task
        self.engine = engine
        self.watcher = watcher
        self.report = report
        self.node_hostname = node_hostname
        self.status = opb.TaskStatus()
        self.status.CopyFrom(task.status)
        self.container: ContainerRecord | None = adopted
        self.removed = False
        self._wake = asyncio.Event()
        self._exit: asyncio.Future[ContainerRecord] | None = None
        self._image_ready = False
        self._network_deadline: float | None = None
        if adopted is not None:
            self._adopt(adopted)

    # ---- inputs --------------------------------------------------------------------------

    def update(self, task: opb.Task) -> None:
        self.task = task
        self._wake.set()

    def remove(self) -> None:
        self.removed = True
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Step until the task is removed from this node."""
        while True:
            progressed = await self.step()
            if self.removed and self._done():
                return
            if not progressed:
                self._wake.clear()
                waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
                if self._exit is not None:
                    waits.add(self._exit)  # type: ignore[arg-type]
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    if p is not self._exit:
                        p.cancel()

    def _done(self) -> bool:
        return self.container is None and taskstate.is_terminal(self.status.state)

    async def step(self) -> bool:
        """Make at most one move; True if something changed."""
        state = self.status.state
        if self.removed or self.task.desired_state > S.TASK_STATE_RUNNING:
            return await self._step_down()
        if state == S.TASK_STATE_ASSIGNED:
            self._set(S.TASK_STATE_ACCEPTED, "accepted")
        elif state == S.TASK_STATE_ACCEPTED:
            self._set(S.TASK_STATE_PREPARING, "preparing")
        elif state == S.TASK_STATE_PREPARING:
            if not self._image_ready:
                image = self.task.spec.container.image
                try:
                    await asyncio.to_thread(self._ensure_image, image)
                except PyswarmError as exc:
                    self._set(S.TASK_STATE_REJECTED, "preparing failed", err=str(exc))
                    return True
                self._image_ready = True
            ready = self._networks_ready()
            if self.status.state != S.TASK_STATE_PREPARING:
                return True  # rejected: its networks never came
            if not ready:
                return False
            self._set(S.TASK_STATE_STARTING, "starting")
        elif state == S.TASK_STATE_STARTING:
            network = self.engine.network
            dns = [network.service_dns] if network.service_dns else []
            request = container_request(self.task, self.node_hostname, dns)
            try:
                record = await asyncio.to_thread(self.engine.create, request)
            except PyswarmError as exc:
                self._set(S.TASK_STATE_REJECTED, "starting container failed", err=str(exc))
                return True
            self.watcher.watch(record.id)
            self._watch_exit(record)
            self._set(S.TASK_STATE_RUNNING, "started")
        elif state == S.TASK_STATE_RUNNING and self._exit is not None and self._exit.done():
            self._finish(self._exit.result())
        else:
            return False
        return True

    async def _step_down(self) -> bool:
        """Desired SHUTDOWN (or removed): stop what runs, report, then clean up."""
        record = self._live_container()
        if record is not None and record.state == "running":
            grace = self.task.spec.container.stop_grace_period_ns / 1e9 or DEFAULT_GRACE
            await self._stop(record, grace)
            self._set(S.TASK_STATE_SHUTDOWN, "shutdown")
            return True
        if not taskstate.is_terminal(self.status.state):
            if self._exit is not None and self._exit.done():
                self._finish(self._exit.result())
            else:
                self._set(S.TASK_STATE_SHUTDOWN, "shutdown")
            return True
        if self.removed and self.container is not None:
            cid, self.container = self.container.id, None
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.engine.remove, cid, True, True)
            return True
        return False

    # ---- helpers -------------------------------------------------------------------------

    def _networks_ready(self) -> bool:
        """True once the task's networks are all here; else arms a wake-up and returns False,
        or rejects the task when the wait is over."""
        missing = missing_networks(self.task, self.engine.network.overlays.networks())
        if not missing:
            return True
        loop = asyncio.get_running_loop()
        if self._network_deadline is None:
            self._network_deadline = loop.time() + NETWORK_WAIT
        if loop.time() >= self._network_deadline:
            self._set(S.TASK_STATE_REJECTED, "preparing failed",
                      err=f"network {', '.join(missing)} is not available on this node: no "
                          f"overlay for it came from the manager within {NETWORK_WAIT:g}s")
            return True
        loop.call_later(NETWORK_CHECK, self._wake.set)
        return False

    def _adopt(self, record: ContainerRecord) -> None:
        """A container that outlived an agent restart: pick up where it is."""
        if record.state == "running":
            self.watcher.watch(record.id)
            self._watch_exit(record)
            if self.status.state < S.TASK_STATE_RUNNING:
                self._set(S.TASK_STATE_RUNNING, "started")
        elif not taskstate.is_terminal(self.status.state):
            self._finish(record)

    def _watch_exit(self, record: ContainerRecord) -> None:
        self.container = record
        self._exit = asyncio.ensure_future(self.watcher.wait(record))

    def _live_container(self) -> ContainerRecord | None:
        if self.container is None:
            return None
        try:
            return self.engine.resolve(self.container.id)
        except NotFound:
            self.container = None
            return None

    async def _stop(self, record: ContainerRecord, grace: float) -> None:
        with contextlib.suppress(Conflict, NotFound):
            await asyncio.to_thread(self.engine.kill, record.id, record.stop_signal)
        exit_future = self._exit or asyncio.ensure_future(self.watcher.wait(record))
        try:
            await asyncio.wait_for(asyncio.shield(exit_future), grace)
        except TimeoutError:
            with contextlib.suppress(Conflict, NotFound):
                await asyncio.to_thread(self.engine.kill, record.id, signal.SIGKILL)
            await exit_future

    def _finish(self, record: ContainerRecord) -> None:
        if taskstate.is_terminal(self.status.state):
            return
        self.status.container.exit_code = record.exit_code
        if record.exit_code == 0:
            self._set(S.TASK_STATE_COMPLETE, "finished")
        elif record.oom_killed:
            self._set(S.TASK_STATE_FAILED, "failed", err="task: killed: out of memory")
        else:
            self._set(S.TASK_STATE_FAILED, "failed",
                      err=f"task: non-zero exit ({record.exit_code})")

    def _ensure_image(self, image: str) -> None:
        """Pull only from a registry the reference names (host:port/...): an image without
        one must already be on the node; pyswarm never reaches out to Docker Hub."""
        try:
            self.engine.images.get(image)
        except NotFound:
            first = image.split("/", 1)[0]
            if "/" in image and ("." in first or ":" in first or first == "localhost"):
                self.engine.images.pull(image)
            else:
                raise NotFound(f"No such image: {image} (not on this node, and the reference "
                               f"names no registry to pull it from)") from None

    def _set(self, state: int, message: str, err: str = "") -> None:
        taskstate.check(self.status.state, state)
        self.status.state = state  # type: ignore[assignment]
        self.status.message = message
        self.status.err = err
        self.status.timestamp = now_rfc3339()
        if self.container is not None:
            self.status.container.container_id = self.container.id
            self.status.container.pid = self.container.pid
        snapshot = opb.TaskStatus()
        snapshot.CopyFrom(self.status)
        self.report(Report(self.task.id, snapshot))
