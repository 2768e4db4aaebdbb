"""Task history: ended tasks a slot keeps for `service ps`, and which ones go.

Per slot (per node for global services) the newest ``task_history_limit`` ended tasks
stay (0 in the spec: the cluster default, 5); older ones are removed. Only tasks the
manager no longer wants (desired SHUTDOWN or later) whose worker has also reported them
ended count as history: a task still stopping keeps its resources and stays.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyswarm.manager.orchestrator.actions import RemoveTask
from pyswarm.manager.orchestrator.tasks import age_key, has_ended, is_runnable
from pyswarm.proto.objects_pb2 import Service, Task

DEFAULT_HISTORY_LIMIT = 5


def history_limit(service: Service) -> int:
    return service.spec.task_history_limit or DEFAULT_HISTORY_LIMIT


def history_removals(service: Service, slot_tasks: Iterable[Task]) -> list[RemoveTask]:
    """RemoveTask for the oldest ended tasks of one slot beyond the history limit."""
    ended = sorted((t for t in slot_tasks if not is_runnable(t) and has_ended(t)),
                   key=age_key)
    excess = len(ended) - history_limit(service)
    return [RemoveTask(t.id) for t in ended[:max(0, excess)]]
