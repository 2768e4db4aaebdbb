"""A service's ``ports``: short (``"[ip:][published:]target[/protocol]"``, with ranges) and long
forms → PortConfig.

Policy: a published range maps one to one onto a target range of the same length; a target
without a published port gets one from the allocator (published 0). A host IP cannot be
honoured by the swarm's routing mesh: it is ignored with a warning. A port published twice
(same number and protocol) is an error.
"""

from __future__ import annotations

import re

from pyswarm.manager.stack.context import Context
from pyswarm.manager.stack.values import (
    Field,
    as_choice,
    as_int,
    as_list,
    as_map,
    as_str,
    check_keys,
    describe,
    fail,
)
from pyswarm.manager.stack.yaml12 import YMap
from pyswarm.proto import objects_pb2

_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_PROTOCOLS = ("tcp", "udp")
_MODES = {"ingress": objects_pb2.PUBLISH_MODE_INGRESS, "host": objects_pb2.PUBLISH_MODE_HOST}


def read_ports(ctx: Context, f: Field) -> list[objects_pb2.PortConfig]:
    if as_list(ctx.report, f) is None:
        return []
    ports: list[objects_pb2.PortConfig] = []
    seen: dict[tuple[int, str], Field] = {}
    for entry in f.elements():
        if isinstance(entry.value, YMap):
            found = _long(ctx, entry)
        elif isinstance(entry.value, str | int) and not isinstance(entry.value, bool):
            found = _short(ctx, entry, str(entry.value))
        else:
            fail(ctx.report, entry,
                 f"must be a port string or mapping, got {describe(entry.value)}")
            continue
        for port in found:
            key = (port.published_port, port.protocol)
            if port.published_port and key in seen:
                fail(ctx.report, entry, f"port {port.published_port}/{port.protocol} is "
                     f"published twice (first at line {seen[key].mark.line})")
                continue
            seen.setdefault(key, entry)
            ports.append(port)
    return ports


def _range(text: str) -> range | None:
    match = _RANGE.match(text)
    if not match:
        return None
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        return None
    return range(low, high + 1)


def _short(ctx: Context, f: Field, text: str) -> list[objects_pb2.PortConfig]:
    spec, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    bad = f'must be a port like "8080:80", "8080:80/udp" or "80", got {describe(text)}'
    if protocol not in _PROTOCOLS:
        fail(ctx.report, f, f"protocol must be tcp or udp, got {describe(protocol)}")
        return []
    host_ip = ""
    if spec.startswith("["):  # [::1]:8080:80
        close = spec.find("]:")
        if close < 0:
            fail(ctx.report, f, bad)
            return []
        host_ip, spec = spec[1:close], spec[close + 2 :]
        parts = spec.split(":")
        if len(parts) == 1:
            parts.insert(0, "")
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
    if len(parts) > 2 or (host_ip == "" and len(parts) == 0):
        fail(ctx.report, f, bad)
        return []
    if host_ip:
        ctx.report.warn(f.mark, f.path, f"host IP {host_ip} ignored: swarm publishes ports "
                        f"on every address")
    published_text = parts[0] if len(parts) == 2 else ""
    targets = _range(parts[-1])
    published = _range(published_text) if published_text else None
    if targets is None or (published_text and published is None):
        fail(ctx.report, f, bad)
        return []
    if published is not None and len(published) != len(targets):
        fail(ctx.report, f, f"published range {published_text} and target range {parts[-1]} "
             f"differ in length")
        return []
    return [
        objects_pb2.PortConfig(
            protocol=protocol,
            target_port=target,
            published_port=published[i] if published is not None else 0,
            publish_mode=objects_pb2.PUBLISH_MODE_INGRESS,
        )
        for i, target in enumerate(targets)
    ]


def _long(ctx: Context, f: Field) -> list[objects_pb2.PortConfig]:
    if as_map(ctx.report, f) is None:
        return []
    check_keys(ctx.report, f, {"target", "published", "protocol", "mode", "name", "host_ip"},
               {"app_protocol": ""})
    port = objects_pb2.PortConfig(protocol="tcp")
    target = f.get("target")
    if target is None:
        fail(ctx.report, f, "target is required")
        return []
    value = as_int(ctx.report, target, minimum=1, maximum=65535)
    if value is None:
        return []
    port.target_port = value
    if (published := f.get("published")) is not None:
        port.published_port = as_int(ctx.report, published, minimum=0, maximum=65535) or 0
    if (protocol := f.get("protocol")) is not None:
        port.protocol = as_choice(ctx.report, protocol, _PROTOCOLS) or "tcp"
    if (mode := f.get("mode")) is not None:
        choice = as_choice(ctx.report, mode, tuple(_MODES))
        port.publish_mode = _MODES.get(choice or "", objects_pb2.PUBLISH_MODE_INGRESS)
    if (name := f.get("name")) is not None:
        port.name = as_str(ctx.report, name) or ""
    if (host_ip := f.get("host_ip")) is not None:
        ctx.report.warn(host_ip.mark, host_ip.path,
                        "ignored: swarm publishes ports on every address")
    return [port]
