"""Making and changing task objects: the one place the loops build them."""

from __future__ import annotations

import secrets
from typing import TypeVar

from google.protobuf.message import Message

from pyswarm.common import taskstate
from pyswarm.manager.store.model import now_rfc3339
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S
M = TypeVar("M", bound=Message)

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """25 base-36 characters, like SwarmKit's ids (one draw from the OS's random source,
    not one per character: a large deploy makes ids by the ten thousand)."""
    n = secrets.randbelow(36**25)
    out = []
    for _ in range(25):
        n, digit = divmod(n, 36)
        out.append(_ALPHABET[digit])
    return "".join(out)


def copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def new_task(service: opb.Service, slot: int, node_id: str = "") -> opb.Task:
    """A task for one slot (or, global, one node) of ``service``: NEW, waiting for the
    allocator, which gives it its addresses and endpoint and makes it PENDING."""
    task = opb.Task(
        id=new_id(), service_id=service.id, service_name=service.spec.name, slot=slot,
        node_id=node_id, spec_version=service.meta.version, desired_state=S.TASK_STATE_RUNNING,
    )
    task.spec.CopyFrom(service.spec.task)
    task.endpoint.spec.CopyFrom(service.spec.endpoint)
    task.endpoint.ports.extend(service.endpoint.ports or service.spec.endpoint.ports)
    task.status.state = S.TASK_STATE_NEW
    task.status.timestamp = now_rfc3339()
    task.status.message = ""  # nothing to report: the allocator writes why it waits, if it does
    return task


def set_status(task: opb.Task, state: int, message: str) -> None:
    task.status.state = state  # type: ignore[assignment]
    task.status.message = message
    task.status.timestamp = now_rfc3339()
