"""What a session re-sends its node: a task whose desired state or spec changed, and no
other (manager/dispatcher/assignments.py)."""

from pyswarm.common import taskstate
from pyswarm.manager.dispatcher import assignments
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S


def _task(id: str, desired: int = S.TASK_STATE_RUNNING, spec_version: int = 1) -> opb.Task:
    return opb.Task(id=id, node_id="n1", desired_state=desired, spec_version=spec_version)


def test_a_task_is_sent_again_only_when_its_desired_state_or_spec_changed():
    update, remove, sent = assignments.diff({}, [_task("a"), _task("b"), _task("c")])
    assert [t.id for t in update] == ["a", "b", "c"] and remove == []

    now = [_task("a"), _task("b", desired=S.TASK_STATE_SHUTDOWN), _task("c", spec_version=2)]
    update, remove, sent = assignments.diff(sent, now)
    assert [t.id for t in update] == ["b", "c"] and remove == []

    update, remove, sent = assignments.diff(sent, now)
    assert update == [] and remove == []

    # Both changed, by amounts that would cancel out in a careless fingerprint.
    shift = S.TASK_STATE_SHUTDOWN - S.TASK_STATE_RUNNING
    now = [_task("b", desired=S.TASK_STATE_RUNNING, spec_version=1 + shift),
           _task("c", spec_version=2)]
    update, remove, _ = assignments.diff(sent, now)
    assert [t.id for t in update] == ["b"] and remove == ["a"]
