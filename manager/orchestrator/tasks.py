"""Questions about one task that every reconcile asks: is it live, runnable, up to date?"""

from __future__ import annotations

from pyswarm.common import taskstate
from pyswarm.manager.scheduler.timestamps import parse_time
from pyswarm.proto.objects_pb2 import TASK_STATE_RUNNING, Service, Task


def is_runnable(task: Task) -> bool:
    """The manager still wants it to run: it holds its slot."""
    return task.desired_state <= TASK_STATE_RUNNING


def has_ended(task: Task) -> bool:
    return taskstate.is_terminal(task.status.state)


def is_live(task: Task) -> bool:
    """Wanted and not ended: counts as one of the service's replicas."""
    return is_runnable(task) and not has_ended(task)


def ended_at(task: Task, now: float) -> float:
    """When the task reached its last state (``now`` when it never said)."""
    return parse_time(task.status.timestamp) or now


def age_key(task: Task) -> tuple[float, float, str]:
    """Older first: by creation, then last state change, then id (deterministic)."""
    return (parse_time(task.meta.created_at), parse_time(task.status.timestamp), task.id)


class SpecCheck:
    """Is a task's spec the service's current one? Each spec is serialised once a pass.

    The version alone cannot say "changed": a service's meta.version moves on every
    write, scaling included, and scaling must not roll every task. Equal versions do
    prove equal specs, so they skip the comparison. Tasks made from one version of the
    service have one spec (a task's spec is never written after it is made), so the answer
    is kept per version: after a deploy the service's version has moved on (its endpoint
    is written after it is created), and comparing each task's spec cost two
    serialisations a task, a third of an orchestrator pass over 10,000 tasks (py-spy,
    bench/scale.py).
    """

    def __init__(self, service: Service) -> None:
        self._version = service.meta.version
        self._spec = service.spec.task.SerializeToString(deterministic=True)
        self._by_version: dict[int, bool] = {}

    def is_current(self, task: Task) -> bool:
        version = task.spec_version
        if self._version and version == self._version:
            return True
        known = self._by_version.get(version) if version else None
        if known is None:
            known = task.spec.SerializeToString(deterministic=True) == self._spec
            if version:
                self._by_version[version] = known
        return known
