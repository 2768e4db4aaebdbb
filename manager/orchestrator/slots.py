"""One slot of a service: keep exactly one healthy task in it.

A slot is a replica number for replicated services and a node for global ones. Policy:
- A slot holds at most one task of the current spec and one of an older spec (the pair
  of a start-first update); any other task the manager still wants there is a duplicate
  and is shut down.
- A live task whose node is gone, down or drained is shut down and replaced at once: a
  lost node is not the task's fault, so no restart delay applies.
- A task that ended while still wanted goes through the restart policy (restart.py); a
  task that is not restarted keeps holding its slot, so the slot stays empty.
- During a start-first update the old task is shut down once the new one runs.
- A healthy task with an old spec is left to the rolling update (update.py), which
  decides how many slots change at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyswarm.manager.orchestrator.actions import Action, CreateTask, ShutdownTask
from pyswarm.manager.orchestrator.restart import restart_decision
from pyswarm.manager.orchestrator.tasks import SpecCheck, age_key, has_ended
from pyswarm.proto.objects_pb2 import Service, Task, TaskState

RUNNING = TaskState.TASK_STATE_RUNNING

# Why a live task may not stay where it is (None: it may).
NodeProblem = Callable[[Task], str | None]


@dataclass
class SlotOutcome:
    slot: int
    node_id: str                        # global services: the slot's node
    actions: list[Action] = field(default_factory=list)
    keeper: Task | None = None          # the healthy task left holding the slot
    dirty: bool = False                 # keeper has an old spec and no update is under way
    updating: bool = False              # a new-spec task is on its way in (not yet running)


def _preference(task: Task) -> tuple[bool, bool, tuple[float, float, str]]:
    """Which of several tasks to keep: live first, then running, then the newest."""
    return (not has_ended(task), task.status.state == RUNNING, age_key(task))


def _best(tasks: list[Task]) -> Task | None:
    """The task to keep of ``tasks`` (a slot has one in the steady state: no ranking)."""
    if len(tasks) < 2:
        return tasks[0] if tasks else None
    return max(tasks, key=_preference)


def reconcile_slot(service: Service, slot: int, node_id: str, runnable: Sequence[Task],
                   history: Sequence[Task], spec: SpecCheck, node_problem: NodeProblem,
                   may_create: bool, now: float) -> SlotOutcome:
    """Actions for one slot whose ``runnable`` tasks (desired <= RUNNING) are not empty.

    ``history`` is every task of the slot (restart attempts are counted over it);
    ``may_create`` is False where no new task may go (a global service's paused node).
    """
    out = SlotOutcome(slot, node_id)
    act = out.actions

    def create(replaces: Task, delay_until: float = 0.0) -> None:
        if may_create:
            act.append(CreateTask(service.id, slot, node_id, delay_until, replaces.id))

    current: list[Task] = []
    old: list[Task] = []
    for task in runnable:
        (current if spec.is_current(task) else old).append(task)
    new, prev = _best(current), _best(old)
    for task in runnable:
        if task is not new and task is not prev:
            act.append(ShutdownTask(task.id, "duplicate task for slot"))

    # Health of the (at most) two kept tasks: None healthy, "ended", or why it is lost.
    def health(task: Task | None) -> str | None:
        if task is None or has_ended(task):
            return "ended"
        return node_problem(task)

    new_health, prev_health = health(new), health(prev)
    for task, problem in ((new, new_health), (prev, prev_health)):
        if task is not None and problem not in (None, "ended"):
            act.append(ShutdownTask(task.id, problem))  # lost: replaced below if needed

    if new is not None and new_health is None:
        out.keeper = new
        out.updating = new.status.state != RUNNING
        if prev is not None and (prev_health == "ended"
                                 or (prev_health is None and new.status.state == RUNNING)):
            # Start-first: the old task goes once the new one runs (or has already ended).
            act.append(ShutdownTask(prev.id, "replaced by updated task"))
        return out

    if prev is not None and prev_health is None:
        out.keeper = prev
        if new is None:
            out.dirty = True
            return out
        # The new task of a start-first update is lost or ended: replace it, the old task
        # keeps serving meanwhile.
        out.updating = True
        if new_health != "ended":
            create(new)
        else:
            decision = restart_decision(service, new, history, now)
            if decision.restart and may_create:
                act.append(ShutdownTask(new.id, decision.reason))
                create(new, decision.delay_until)
        return out

    # Nothing healthy left. A lost task is replaced at once; else the ended one (the
    # newer spec's if both) goes through the restart policy.
    lost = [t for t, h in ((new, new_health), (prev, prev_health))
            if t is not None and h != "ended"]
    ended = [t for t, h in ((new, new_health), (prev, prev_health))
             if t is not None and h == "ended"]
    if lost:
        create(lost[0])
        for task in ended:
            act.append(ShutdownTask(task.id, "replaced"))
        return out
    rep, others = ended[0], ended[1:]
    for task in others:
        act.append(ShutdownTask(task.id, "replaced"))
    decision = restart_decision(service, rep, history, now)
    if decision.restart and may_create:
        act.append(ShutdownTask(rep.id, decision.reason))
        create(rep, decision.delay_until)
    return out
