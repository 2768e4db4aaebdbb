"""The task state machine, in one table.

Observed states only move forward (by their number in objects.proto); the normal path is
NEW → PENDING → ASSIGNED → ACCEPTED → PREPARING → STARTING → RUNNING → COMPLETE, and a
report may skip states in between. Anything backwards raises: a bug or a confused worker
must not rewind a task.
"""

from __future__ import annotations

from types import SimpleNamespace

from pyswarm.proto.objects_pb2 import TaskState

# The states as plain attributes: `S.TASK_STATE_RUNNING` on protobuf's enum wrapper goes
# through a Python __getattr__ each time, which the manager's loops paid per task per pass.
S = SimpleNamespace(**dict(TaskState.items()))

TERMINAL = frozenset({S.TASK_STATE_COMPLETE, S.TASK_STATE_SHUTDOWN, S.TASK_STATE_FAILED,
                      S.TASK_STATE_REJECTED, S.TASK_STATE_ORPHANED, S.TASK_STATE_REMOVE})

# state -> the states it may move to: any later one (a worker's batched report may skip
# states a quick task passed through, e.g. STARTING → COMPLETE), except that REJECTED means
# "failed before it ran" and a task that was never placed cannot report progress.
_ORDER = sorted(TaskState.values())
TRANSITIONS: dict[int, frozenset[int]] = {}
for _state in _ORDER:
    if _state in TERMINAL:
        TRANSITIONS[_state] = frozenset()
        continue
    later = {s for s in _ORDER if s > _state and s != S.TASK_STATE_REMOVE}
    if _state >= S.TASK_STATE_RUNNING:
        later.discard(S.TASK_STATE_REJECTED)
    if _state < S.TASK_STATE_ASSIGNED:
        later -= {s for s in later if S.TASK_STATE_ASSIGNED < s < S.TASK_STATE_COMPLETE}
    TRANSITIONS[_state] = frozenset(later)


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
