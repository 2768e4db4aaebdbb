import pytest

from pyswarm.common import taskstate
from pyswarm.proto.objects_pb2 import TaskState as S


def test_the_normal_path_is_legal() -> None:
    path = [S.TASK_STATE_NEW, S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED, S.TASK_STATE_ACCEPTED,
            S.TASK_STATE_PREPARING, S.TASK_STATE_STARTING, S.TASK_STATE_RUNNING,
            S.TASK_STATE_COMPLETE]
    for a, b in zip(path, path[1:], strict=False):
        taskstate.check(a, b)


@pytest.mark.parametrize("current", [s for s in S.values() if s not in taskstate.TERMINAL])
def test_every_live_state_can_fail_or_shut_down(current: int) -> None:
    taskstate.check(current, S.TASK_STATE_FAILED)
    taskstate.check(current, S.TASK_STATE_SHUTDOWN)


@pytest.mark.parametrize(
    "current,new",
    [(S.TASK_STATE_RUNNING, S.TASK_STATE_STARTING), (S.TASK_STATE_COMPLETE, S.TASK_STATE_RUNNING),
     (S.TASK_STATE_FAILED, S.TASK_STATE_RUNNING), (S.TASK_STATE_RUNNING, S.TASK_STATE_REJECTED),
     (S.TASK_STATE_PENDING, S.TASK_STATE_RUNNING), (S.TASK_STATE_SHUTDOWN, S.TASK_STATE_FAILED)],
)
def test_backwards_and_skipping_placement_raise(current: int, new: int) -> None:
    with pytest.raises(taskstate.IllegalTransition, match="cannot move"):
        taskstate.check(current, new)


def test_names() -> None:
    assert taskstate.name(S.TASK_STATE_RUNNING) == "running"


def test_a_batched_report_may_skip_states() -> None:
    taskstate.check(S.TASK_STATE_STARTING, S.TASK_STATE_COMPLETE)
    taskstate.check(S.TASK_STATE_ASSIGNED, S.TASK_STATE_RUNNING)
