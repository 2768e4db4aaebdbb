"""Restart policy: should a task that ended on its own be replaced, and when?

Swarm's rules. Condition ``any`` replaces every ended task; ``on-failure`` all but those
that completed (exit 0); ``none`` none (the slot stays empty). ``max_attempts`` (0: no
limit) caps the restarts of a slot, counted over the tasks of the slot that ended on
their own — within ``window`` before now when a window is set, over all kept history
otherwise. The replacement may start ``delay`` after the old task ended: 5 s unless the
policy sets one (``delay_set``; 0 allowed).

A task that is not restarted keeps its desired state RUNNING, so it holds its slot and
the slot stays empty. Reconcile is level-triggered: once old attempts slide out of the
window, the next reconcile restarts the slot (the delay is then already over).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyswarm.common.taskstate import name
from pyswarm.manager.orchestrator.tasks import ended_at
from pyswarm.proto.objects_pb2 import (
    TASK_STATE_COMPLETE,
    TASK_STATE_FAILED,
    TASK_STATE_REJECTED,
    RestartCondition,
    Service,
    Task,
)

DEFAULT_DELAY = 5.0  # seconds: Swarm's default, keeps a crashing task from spinning

# Observed end states that mean "it ended by itself" (SHUTDOWN is normally the manager's
# own doing, so it does not count as an attempt in the history).
_SELF_ENDED = frozenset({TASK_STATE_COMPLETE, TASK_STATE_FAILED,
                         TASK_STATE_REJECTED})


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_until: float
    reason: str


def restart_delay(service: Service) -> float:
    policy = service.spec.task.restart
    return policy.delay_ns / 1e9 if policy.delay_set else DEFAULT_DELAY


def restart_decision(service: Service, task: Task, slot_history: Sequence[Task],
                     now: float) -> RestartDecision:
    """Decide for ``task``, which ended while desired RUNNING; ``slot_history`` holds the
    slot's other tasks (it may include ``task`` itself)."""
    policy = service.spec.task.restart
    state = task.status.state
    completed = state == TASK_STATE_COMPLETE
    what = "completed" if completed else f"ended ({_describe(task)})"

    if policy.condition == RestartCondition.RESTART_CONDITION_NONE:
        return RestartDecision(False, 0.0, f"task {what}; restart policy none")
    if policy.condition == RestartCondition.RESTART_CONDITION_ON_FAILURE and completed:
        return RestartDecision(False, 0.0, f"task {what}; restart policy on-failure")

    if policy.max_attempts:
        window = policy.window_ns / 1e9
        slot = {t.id: t for t in slot_history}
        slot[task.id] = task
        attempts = sum(
            1 for t in slot.values()
            if (t.id == task.id or t.status.state in _SELF_ENDED)
            and not (window and ended_at(t, now) < now - window)
        )
        # Every self-ended task before this one was restarted once: attempts - 1 restarts.
        if attempts - 1 >= policy.max_attempts:
            within = f" within {window:g}s" if window else ""
            return RestartDecision(
                False, 0.0,
                f"task {what}; max restart attempts ({policy.max_attempts}) reached{within}")

    delay_until = ended_at(task, now) + restart_delay(service)
    return RestartDecision(True, delay_until, f"task {what}; restarting")


def _describe(task: Task) -> str:
    code = task.status.container.exit_code
    text = name(task.status.state)
    if task.status.state == TASK_STATE_FAILED:
        text += f", exit code {code}"
    return text
