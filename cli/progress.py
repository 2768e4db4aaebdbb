"""Watching services converge after a deploy, scale or update: what to show, and when to stop.

The manager does the work; this only reads what it reports (service counts and tasks) and
judges, for the person waiting at the terminal:

- a service has converged when as many tasks run as it wants, none of those it wants running
  is still on its way, and (after an update) the running ones carry the new spec;
- a service is failing when every slot it has has failed (or been rejected) at least
  ``FAILURES_TO_GIVE_UP`` times: retrying further will not help, so we stop early;
- otherwise we wait, until the timeout.

``assess`` is a pure function of the manager's answers; ``watch`` is the polling loop; the
``Board`` draws one line per service, in place on a terminal, as change lines otherwise.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyswarm.cli import render

FAILURES_TO_GIVE_UP = 3
POLL_SECONDS = 0.25
BAR_WIDTH = 20


def task_name(task: Any) -> str:
    """Docker's task name: ``<service>.<slot>``, or ``<service>.<node id>`` for global ones."""
    return f"{task.service_name}.{task.slot if task.slot else task.node_id}"


def task_problem(task: Any) -> str:
    """``web.2: rejected: No such image: nosuch:1`` — why a task is not (or no longer) running."""
    from pyswarm.common import taskstate

    return f"{task_name(task)}: {taskstate.name(task.status.state)}: " \
        f"{task.status.err or task.status.message}"


@dataclass(frozen=True)
class ServiceProgress:
    name: str
    desired: int
    running: int
    converged: bool
    failing: bool
    problems: tuple[str, ...] = ()   # the latest problem of each troubled slot

    def line(self, width: int, bar: bool) -> str:
        text = f"{self.name.ljust(width)}  {self.running}/{self.desired} running"
        if bar:
            filled = BAR_WIDTH if self.converged or not self.desired else \
                min(BAR_WIDTH, BAR_WIDTH * self.running // self.desired)
            arrow = ">" if 0 < filled < BAR_WIDTH else ""
            text += f"  [{('=' * filled + arrow)[:BAR_WIDTH].ljust(BAR_WIDTH)}]"
        if self.converged:
            text += "  converged"
        elif self.problems:
            text += f"  {self.problems[-1]}"
        return text


def _is_current(task: Any, service: Any) -> bool:
    """Whether a task runs the service's spec as it is now (not the one before an update)."""
    return task.spec_version >= service.meta.version or task.spec == service.spec.task


def assess(name: str, summary: Any | None, tasks: Sequence[Any],
           updated: bool = False) -> ServiceProgress:
    """Judge one service from its ListServices summary and its tasks (pure).

    ``updated``: the service's spec just changed, so only tasks on the new spec count.
    """
    from pyswarm.common import taskstate

    S = taskstate.S
    if summary is None:  # not created yet, as far as this manager's answer goes
        return ServiceProgress(name, 0, 0, converged=False, failing=False)
    service = summary.service
    desired, running = int(summary.desired), int(summary.running)
    wanted = [t for t in tasks if t.desired_state <= S.TASK_STATE_RUNNING]
    on_the_way = [t for t in wanted if t.status.state < S.TASK_STATE_RUNNING]
    stale = updated and any(not _is_current(t, service)
                            for t in wanted if t.status.state == S.TASK_STATE_RUNNING)
    converged = running == desired and not on_the_way and not stale

    failures: dict[str, int] = {}
    latest: dict[str, Any] = {}
    for t in sorted(tasks, key=lambda t: (t.status.timestamp, t.meta.version)):
        key = task_name(t)
        failures.setdefault(key, 0)
        if t.status.state in (S.TASK_STATE_FAILED, S.TASK_STATE_REJECTED):
            failures[key] += 1
            latest[key] = t
        elif t.status.state == S.TASK_STATE_RUNNING:
            latest.pop(key, None)  # it recovered
        elif t.status.state < S.TASK_STATE_RUNNING and t.status.message:
            latest[key] = t        # e.g. pending: no suitable node (...)
    failing = (not converged and running < desired and bool(failures)
               and all(n >= FAILURES_TO_GIVE_UP for n in failures.values()))
    problems = tuple(task_problem(latest[k]) for k in sorted(latest))
    return ServiceProgress(name, desired, running, converged, failing, problems)


@dataclass
class Board:
    """One line per service: redrawn in place on a terminal, printed on change otherwise."""

    names: Sequence[str]
    out: Any = None
    tty: bool | None = None
    _drawn: int = 0
    _last: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = self.out or sys.stdout
        if self.tty is None:
            self.tty = bool(getattr(self.out, "isatty", lambda: False)())

    def show(self, states: Iterable[ServiceProgress]) -> None:
        width = max((len(n) for n in self.names), default=0)
        if self.tty:
            # A line longer than the terminal would wrap and throw the redraw off.
            columns = shutil.get_terminal_size().columns - 1
            lines = [render.shorten(s.line(width, bar=True), columns) for s in states]
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}A")
            for line in lines:
                self.out.write("\x1b[2K" + line + "\n")
            self._drawn = len(lines)
        else:
            for s in states:
                line = s.line(width, bar=False)
                if self._last.get(s.name) != line:
                    self._last[s.name] = line
                    self.out.write(line + "\n")
        self.out.flush()


@dataclass(frozen=True)
class Outcome:
    converged: bool
    failing: bool
    services: tuple[ServiceProgress, ...]

    @property
    def unconverged(self) -> tuple[ServiceProgress, ...]:
        return tuple(s for s in self.services if not s.converged)


Poll = Callable[[], tuple[Sequence[Any], Sequence[Any]]]


def watch(names: Sequence[str], poll: Poll, timeout: float, board: Board,
          updated: Iterable[str] = (), clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Poll ``() -> (service summaries, tasks)`` until every named service has converged,
    one is failing for good, or ``timeout`` seconds have passed."""
    updated = set(updated)
    deadline = clock() + timeout
    while True:
        summaries, tasks = poll()
        by_name = {s.service.spec.name: s for s in summaries}
        states = tuple(
            assess(n, by_name.get(n), [t for t in tasks if t.service_name == n], n in updated)
            for n in names
        )
        board.show(states)
        converged = all(s.converged for s in states)
        failing = any(s.failing for s in states)
        if converged or failing or clock() >= deadline:
            return Outcome(converged, failing, states)
        sleep(POLL_SECONDS)
