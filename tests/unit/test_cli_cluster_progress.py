"""Judging convergence from the manager's answers, and drawing it (cli/progress.py)."""

from __future__ import annotations

import io

from pyswarm.cli import progress
from pyswarm.proto import cluster_pb2, objects_pb2

S = objects_pb2.TaskState


def _summary(name: str, desired: int, running: int, version: int = 7) -> cluster_pb2.ServiceSummary:
    service = objects_pb2.Service(id="svc", spec=objects_pb2.ServiceSpec(name=name))
    service.meta.version = version
    service.spec.task.container.image = "web:2"
    return cluster_pb2.ServiceSummary(service=service, desired=desired, running=running)


def _task(slot: int, state: int, ts: str = "2024-01-01T00:00:01Z", err: str = "",
          message: str = "", spec_version: int = 7, image: str = "web:2",
          desired: int = S.TASK_STATE_RUNNING) -> objects_pb2.Task:
    task = objects_pb2.Task(id=f"t{slot}{state}{ts}", service_name="web", slot=slot,
                            desired_state=desired, spec_version=spec_version)
    task.status.state = state
    task.status.timestamp = ts
    task.status.err = err
    task.status.message = message
    task.spec.container.image = image
    return task


def test_converged_when_all_run_and_none_on_the_way() -> None:
    tasks = [_task(1, S.TASK_STATE_RUNNING), _task(2, S.TASK_STATE_RUNNING)]
    assert progress.assess("web", _summary("web", 2, 2), tasks).converged
    pending = [*tasks[:1], _task(2, S.TASK_STATE_PENDING, message="no suitable node (1 node)")]
    state = progress.assess("web", _summary("web", 2, 1), pending)
    assert not state.converged and not state.failing
    assert state.problems == ("web.2: pending: no suitable node (1 node)",)


def test_missing_service_is_not_converged() -> None:
    state = progress.assess("web", None, [])
    assert (state.converged, state.desired, state.running) == (False, 0, 0)


def test_after_an_update_old_tasks_do_not_count() -> None:
    old = [_task(1, S.TASK_STATE_RUNNING, spec_version=3, image="web:1")]
    assert not progress.assess("web", _summary("web", 1, 1), old, updated=True).converged
    # same spec, older version (e.g. an unrelated write bumped the service): still current
    same = [_task(1, S.TASK_STATE_RUNNING, spec_version=3, image="web:2")]
    assert progress.assess("web", _summary("web", 1, 1), same, updated=True).converged
    assert progress.assess("web", _summary("web", 1, 1), old, updated=False).converged


def test_failing_only_when_every_slot_failed_three_times() -> None:
    def failures(slot: int, n: int) -> list[objects_pb2.Task]:
        return [_task(slot, S.TASK_STATE_REJECTED, ts=f"2024-01-01T00:00:0{i}Z",
                      err="No such image: nosuch:1", desired=S.TASK_STATE_SHUTDOWN)
                for i in range(n)]

    two = progress.assess("web", _summary("web", 2, 0), failures(1, 3) + failures(2, 2))
    assert not two.failing
    three = progress.assess("web", _summary("web", 2, 0), failures(1, 3) + failures(2, 3))
    assert three.failing
    assert three.problems == ("web.1: rejected: No such image: nosuch:1",
                              "web.2: rejected: No such image: nosuch:1")
    # a slot that recovered is no longer a problem, and keeps the service from failing
    recovered = failures(1, 3) + [_task(1, S.TASK_STATE_RUNNING, ts="2024-01-01T00:00:09Z")]
    state = progress.assess("web", _summary("web", 1, 1), recovered)
    assert state.converged and not state.failing and state.problems == ()


def test_board_redraws_in_place_on_a_tty() -> None:
    out = io.StringIO()
    board = progress.Board(["web", "api"], out=out, tty=True)
    board.show([progress.ServiceProgress("web", 3, 1, False, False),
                progress.ServiceProgress("api", 1, 1, True, False)])
    board.show([progress.ServiceProgress("web", 3, 3, True, False),
                progress.ServiceProgress("api", 1, 1, True, False)])
    text = out.getvalue()
    assert text.count("\x1b[2A") == 1          # moved up over the two lines once
    assert "\x1b[2Kweb  1/3 running  [======>" in text
    assert "web  3/3 running  [====================]  converged" in text


def test_board_prints_changes_only_without_a_tty() -> None:
    out = io.StringIO()
    board = progress.Board(["web"], out=out, tty=False)
    for running in (0, 0, 2, 2, 3):
        board.show([progress.ServiceProgress("web", 3, running, running == 3, False)])
    assert out.getvalue().splitlines() == ["web  0/3 running", "web  2/3 running",
                                           "web  3/3 running  converged"]
    assert "\x1b" not in out.getvalue()


def test_watch_stops_at_the_deadline() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    outcome = progress.watch(["web"], lambda: ([_summary("web", 2, 1)], []), timeout=1.0,
                             board=progress.Board(["web"], out=io.StringIO(), tty=False),
                             clock=lambda: now[0], sleep=sleep)
    assert not outcome.converged and not outcome.failing
    assert [s.name for s in outcome.unconverged] == ["web"]
    assert now[0] >= 1.0
