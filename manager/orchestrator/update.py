"""Rolling updates: replace tasks whose spec is not the service's current one.

Policy (Swarm's ``update_config``): at most ``parallelism`` slots (0: all) are being
updated at once; a slot counts as being updated while its new task has not reached
RUNNING. ``stop-first`` (the default) shuts the old task down as the new one is created;
``start-first`` creates the new task first and slots.py shuts the old one down once the
new one runs. Slots are taken not-running first (nothing is lost by replacing them), then
in slot order. Not yet here: ``delay`` between batches, ``monitor`` and
``failure_action`` (a new task that keeps failing holds its slot "updating", which pauses
the update in effect).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyswarm.manager.orchestrator.actions import Action, CreateTask, ShutdownTask
from pyswarm.manager.orchestrator.slots import RUNNING, SlotOutcome
from pyswarm.proto.objects_pb2 import Service


def plan_update(service: Service, outcomes: Sequence[SlotOutcome]) -> list[Action]:
    dirty = [o for o in outcomes if o.dirty and o.keeper is not None]
    if not dirty:
        return []
    parallelism = service.spec.update.parallelism
    in_flight = sum(1 for o in outcomes if o.updating)
    budget = len(dirty) if parallelism == 0 else max(0, parallelism - in_flight)
    dirty.sort(key=lambda o: (o.keeper is not None and o.keeper.status.state == RUNNING,
                              o.slot, o.node_id))
    start_first = service.spec.update.order == "start-first"
    actions: list[Action] = []
    for outcome in dirty[:budget]:
        old = outcome.keeper
        assert old is not None
        if not start_first:
            actions.append(ShutdownTask(old.id, "service updated"))
        actions.append(CreateTask(service.id, outcome.slot, outcome.node_id, 0.0, old.id))
    return actions
