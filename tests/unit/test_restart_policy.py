"""The restart policy: condition × how the task ended, attempts within a window, delays."""

from __future__ import annotations

import pytest

from pyswarm.manager.orchestrator.restart import DEFAULT_DELAY, restart_decision
from tests.unit.cluster_builders import NOW, S, make_service, make_task

COMPLETE, FAILED, REJECTED = S.TASK_STATE_COMPLETE, S.TASK_STATE_FAILED, S.TASK_STATE_REJECTED


def ended(task_id="t", state=FAILED, exit_code=1, at=NOW - 1, svc=None, **kw):
    return make_task(task_id, svc or make_service(), state=state, exit_code=exit_code,
                     at=at, **kw)


@pytest.mark.parametrize("condition, state, exit_code, restart", [
    ("any", COMPLETE, 0, True),
    ("any", FAILED, 1, True),
    ("any", REJECTED, 0, True),
    ("on-failure", COMPLETE, 0, False),
    ("on-failure", FAILED, 1, True),
    ("on-failure", FAILED, 137, True),
    ("on-failure", REJECTED, 0, True),
    ("on-failure", S.TASK_STATE_SHUTDOWN, 0, True),   # stopped without being asked
    ("none", COMPLETE, 0, False),
    ("none", FAILED, 1, False),
])
def test_condition_matrix(condition, state, exit_code, restart):
    svc = make_service(restart=condition)
    task = ended(state=state, exit_code=exit_code, svc=svc)
    decision = restart_decision(svc, task, [task], NOW)
    assert decision.restart is restart
    if not restart:
        assert condition in decision.reason


@pytest.mark.parametrize("delay, ended_ago, expected_until", [
    (None, 1, NOW - 1 + DEFAULT_DELAY),    # default 5 s
    (0, 1, NOW - 1),                       # delay 0 set explicitly
    (30, 10, NOW + 20),
    (2, 60, NOW - 58),                     # long past: may start at once
])
def test_delay_counts_from_when_the_task_ended(delay, ended_ago, expected_until):
    svc = make_service(delay=delay)
    task = ended(at=NOW - ended_ago, svc=svc)
    assert restart_decision(svc, task, [], NOW).delay_until == pytest.approx(expected_until)


def test_missing_timestamp_counts_from_now():
    svc = make_service(delay=3)
    task = ended(svc=svc)
    task.status.timestamp = ""
    assert restart_decision(svc, task, [], NOW).delay_until == NOW + 3


def history(svc, ages, state=FAILED):
    return [make_task(f"h{i}", svc, state=state, desired=S.TASK_STATE_SHUTDOWN,
                      at=NOW - age) for i, age in enumerate(ages)]


@pytest.mark.parametrize("max_attempts, window, earlier_ages, restart", [
    (0, 0, [1, 2, 3, 4, 5, 6], True),   # no limit
    (1, 0, [], True),                   # first failure: restart #1
    (1, 0, [50], False),                # one restart done
    (3, 0, [10, 20], True),
    (3, 0, [10, 20, 30], False),
    (3, 60, [10, 20, 300], True),       # the old one is outside the window
    (3, 60, [10, 20, 30], False),
    (2, 15, [10, 20, 30], True),
])
def test_max_attempts_within_window(max_attempts, window, earlier_ages, restart):
    svc = make_service(max_attempts=max_attempts, window=window)
    task = ended(svc=svc)
    decision = restart_decision(svc, task, [*history(svc, earlier_ages), task], NOW)
    assert decision.restart is restart
    if not restart:
        assert f"max restart attempts ({max_attempts})" in decision.reason


def test_manager_shutdowns_are_not_attempts():
    svc = make_service(max_attempts=1)
    task = ended(svc=svc)
    lost = history(svc, [5, 6, 7], state=S.TASK_STATE_SHUTDOWN)
    assert restart_decision(svc, task, lost, NOW).restart


def test_reason_names_exit_code():
    svc = make_service()
    task = ended(exit_code=3, svc=svc)
    assert "exit code 3" in restart_decision(svc, task, [], NOW).reason
