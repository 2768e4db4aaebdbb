"""``reconcile``: what one service needs, given its tasks and the nodes — by its mode.

Replicated services (replicated.py) want ``replicas`` slots each holding one healthy task:
missing slots are created, extra slots shut down (not-running tasks first, then those on
the nodes with the most copies, then the highest slot).

Global services (global_.py) want one task on every node that is ready, active and
satisfies the constraints; a paused node keeps its task, a drained, down or gone node
loses it, and it is not replaced elsewhere.

Both share the slot policy (slots.py): a task on a lost node (down, gone, drained) is
replaced at once; a task that ended by itself follows the restart policy (restart.py:
condition, max attempts within a window, delay); a task with an outdated spec is replaced
by the rolling update (update.py: parallelism, stop-first or start-first); each slot keeps
at most ``task_history_limit`` ended tasks (history.py).

The result is a list of actions for one transaction; no two of them concern the same
task, and a slot gets at most one CreateTask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyswarm.manager.orchestrator.actions import Action
from pyswarm.manager.orchestrator.global_ import reconcile_global
from pyswarm.manager.orchestrator.replicated import reconcile_replicated
from pyswarm.proto.objects_pb2 import Node, Service, Task


def reconcile(service: Service, tasks: Sequence[Task], nodes: Mapping[str, Node],
              now: float) -> list[Action]:
    """Actions that bring ``service``'s tasks (all of them, history included) to its spec."""
    if service.spec.WhichOneof("mode") == "global":
        return reconcile_global(service, tasks, nodes, now)
    return reconcile_replicated(service, tasks, nodes, now)
