"""Checks on specs arriving over the control API: a clear error naming the field.

The stack loader checks stack files with file and line; these checks guard the API itself,
whatever client sent the request.
"""

from __future__ import annotations

import re

from pyswarm.common.errors import InvalidArgument
from pyswarm.manager.scheduler.constraints import parse_constraint
from pyswarm.proto import objects_pb2 as opb

NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,62})$")


def service_spec(spec: opb.ServiceSpec) -> None:
    where = f"service {spec.name or '(unnamed)'}"
    if not NAME_RE.match(spec.name):
        raise InvalidArgument(
            f'{where}: name "{spec.name}" must be 1-63 characters of [a-zA-Z0-9_.-], '
            f"starting with a letter or digit")
    if not spec.task.container.image:
        raise InvalidArgument(f"{where}: task.container.image: an image is required")
    if spec.WhichOneof("mode") is None:
        raise InvalidArgument(f"{where}: mode: replicated or global is required")
    for expr in spec.task.placement.constraints:
        try:
            parse_constraint(expr)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: placement.constraints: {exc}") from None
    seen: set[tuple[str, int]] = set()
    for port in spec.endpoint.ports:
        proto = port.protocol or "tcp"
        if proto not in ("tcp", "udp"):
            raise InvalidArgument(f"{where}: endpoint.ports: protocol {proto!r} is not tcp/udp")
        if not 0 < port.target_port < 65536 or port.published_port > 65535:
            raise InvalidArgument(f"{where}: endpoint.ports: port numbers must be 1-65535")
        if port.published_port:
            key = (proto, port.published_port)
            if key in seen:
                raise InvalidArgument(
                    f"{where}: endpoint.ports: {port.published_port}/{proto} published twice")
            seen.add(key)
    limits = spec.task.resources.limits
    if limits.memory_bytes and limits.memory_bytes < 6 * 1024 * 1024:
        raise InvalidArgument(f"{where}: resources.limits.memory: the minimum is 6MB")
    if spec.HasField("global") and spec.task.placement.max_replicas:
        raise InvalidArgument(f"{where}: placement.max_replicas_per_node needs replicated mode")
