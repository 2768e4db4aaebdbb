"""Which tasks a node must know about: the set the dispatcher streams to its session.

A node is sent every task placed on it that it still has something to do for: tasks it
should run, and tasks it should stop (desired state SHUTDOWN or later) until it reports them
ended. A task leaves the set once it has ended and the manager no longer wants it running;
the node is then told to forget it and removes its container.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from pyswarm.common import taskstate
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S


def belongs_to_node(task: opb.Task, node_id: str) -> bool:
    if task.node_id != node_id or task.status.state < S.TASK_STATE_ASSIGNED:
        return False
    ended = taskstate.is_terminal(task.status.state)
    return not (ended and task.desired_state > S.TASK_STATE_RUNNING)


def fingerprint(task: opb.Task) -> int:
    """What the node cares about changing: its desired state and the spec it runs, in one
    int (a session keeps one per task; a tuple of two took three objects)."""
    return task.spec_version << 16 | task.desired_state  # states < 2**16 (the last is 832)


def diff(
    sent: dict[str, int], now: Iterable[opb.Task]
) -> tuple[list[opb.Task], list[str], dict[str, int]]:
    """Tasks to (re)send, ids to remove, and the new 'sent' map."""
    current = {sys.intern(t.id): t for t in now}
    fingerprints = {tid: fingerprint(t) for tid, t in current.items()}
    update = [current[tid] for tid, fp in fingerprints.items() if sent.get(tid) != fp]
    remove = [tid for tid in sent if tid not in current]
    return update, remove, fingerprints


def message(kind: int, update: list[opb.Task], remove: list[str]) -> cpb.Assignments:
    return cpb.Assignments(type=kind, update=update, remove=remove)  # type: ignore[arg-type]
