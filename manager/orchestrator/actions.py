"""The commands reconcile returns; the orchestrator loop applies them in one transaction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CreateTask:
    """A new task for ``slot`` with the service's current spec, desired RUNNING.

    ``node_id`` is set for global services (one task per node; slot 0). ``delay_until``
    (epoch seconds) is when a restart may start: the loop keeps the task from running
    before it. ``replaces`` is the id of the task this one takes over from, if any.
    """

    service_id: str
    slot: int
    node_id: str = ""
    delay_until: float = 0.0
    replaces: str = ""


@dataclass(frozen=True)
class ShutdownTask:
    """Set the task's desired state to SHUTDOWN; its worker stops it."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class RemoveTask:
    """Delete an ended task from the store (history beyond the service's limit)."""

    task_id: str


Action = CreateTask | ShutdownTask | RemoveTask
