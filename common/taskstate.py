"""The task state machine, in one table.

Observed states only move forward (by their number in objects.proto). From any state a
task may jump ahead to a terminal state (it failed, was rejected, was shut down); the
normal path is NEW → PENDING → ASSIGNED → ACCEPTED → PREPARING → STARTING → RUNNING →
COMPLETE. Anything else raises: a bug or a confused worker must not rewind a task.
"""

from __future__ import annotations

from pyswarm.proto.objects_pb2 import TaskState

S = TaskState

TERMINAL = frozenset({S.TASK_STATE_COMPLETE, S.TASK_STATE_SHUTDOWN, S.TASK_STATE_FAILED,
                      S.TASK_STATE_REJECTED, S.TASK_STATE_ORPHANED, S.TASK_STATE_REMOVE})

# state -> the states it may move to
TRANSITIONS: dict[int, frozenset[int]] = {
    S.TASK_STATE_NEW: frozenset({S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED}),
    S.TASK_STATE_PENDING: frozenset({S.TASK_STATE_ASSIGNED}),
    S.TASK_STATE_ASSIGNED: frozenset({S.TASK_STATE_ACCEPTED, S.TASK_STATE_PREPARING,
                                      S.TASK_STATE_STARTING, S.TASK_STATE_RUNNING}),
    S.TASK_STATE_ACCEPTED: frozenset({S.TASK_STATE_PREPARING, S.TASK_STATE_STARTING,
                                      S.TASK_STATE_RUNNING}),
    S.TASK_STATE_PREPARING: frozenset({S.TASK_STATE_STARTING, S.TASK_STATE_RUNNING}),
    S.TASK_STATE_STARTING: frozenset({S.TASK_STATE_RUNNING}),
    S.TASK_STATE_RUNNING: frozenset({S.TASK_STATE_COMPLETE}),
}
for _state in list(TRANSITIONS):
    # Every live state may end: failed, rejected (before running), shut down, orphaned.
    ends = {S.TASK_STATE_FAILED, S.TASK_STATE_SHUTDOWN, S.TASK_STATE_ORPHANED}
    if _state < S.TASK_STATE_RUNNING:
        ends.add(S.TASK_STATE_REJECTED)
    TRANSITIONS[_state] = TRANSITIONS[_state] | ends
for _state in TERMINAL:
    TRANSITIONS[_state] = frozenset()


class IllegalTransition(ValueError):
    pass


def name(state: int) -> str:
    """``TASK_STATE_RUNNING`` → ``running``."""
    return TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


def check(current: int, new: int) -> None:
    """Raise IllegalTransition unless ``current`` may move to ``new`` (same state is fine)."""
    if new == current:
        return
    if new not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"task state cannot move from {name(current)} to {name(new)}")


def is_terminal(state: int) -> bool:
    return state in TERMINAL


def is_live(state: int) -> bool:
    """Not yet ended: counts towards a service's replicas."""
    return state not in TERMINAL
