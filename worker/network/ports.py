"""Published ports: the ``-p`` syntax and the value the node network programs.

Accepted forms, as Docker accepts them for one port::

    80                  container port 80/tcp on a free ephemeral host port, all addresses
    8080:80             host port 8080 -> container port 80
    8080:80/udp         the same for UDP
    127.0.0.1:8080:80   only on that host address
    127.0.0.1::80       that host address, a free ephemeral host port

Policy: IPv4 only, one port per binding (Docker's ranges ``8000-8010:80-90`` are refused with a
message saying so), protocols tcp and udp. Every error names the bad value and the whole spec.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyswarm.common.errors import InvalidArgument

PROTOCOLS = ("tcp", "udp")
FORM = "[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]"


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_port: int  # 0 = pick a free ephemeral port (like docker -p 80)
    proto: str = "tcp"  # "tcp" | "udp"
    host_ip: str = ""  # "" = all addresses of the node

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}->{self.container_port}/{self.proto}"


def parse_publish(spec: str) -> PortBinding:
    """Parse one ``-p`` value; raise InvalidArgument naming the bad part."""
    text = spec.strip()
    if not text:
        raise InvalidArgument(f"empty -p value: expected {FORM}")
    ports, _, proto = text.partition("/")
    proto = proto.lower() if proto else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {proto!r} in -p {spec}: must be tcp or udp")
    if ports.startswith("["):
        raise InvalidArgument(f"invalid -p {spec}: IPv6 host addresses are not supported")
    parts = ports.split(":")
    if len(parts) == 1:
        host_ip, host_port_text, container_text = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, (host_port_text, container_text) = "", parts
    elif len(parts) == 3:
        host_ip, host_port_text, container_text = parts
    else:
        raise InvalidArgument(f"invalid -p {spec}: expected {FORM}")
    return PortBinding(
        container_port=_port(container_text, spec, allow_zero=False),
        host_port=_port(host_port_text, spec, allow_zero=True) if host_port_text else 0,
        proto=proto,
        host_ip=_host_ip(host_ip, spec),
    )


def _port(text: str, spec: str, *, allow_zero: bool) -> int:
    if "-" in text:
        raise InvalidArgument(f"invalid port {text} in -p {spec}: port ranges are not supported")
    if not text.isdigit():
        raise InvalidArgument(f"invalid port {text!r} in -p {spec}: not a number")
    value = int(text)
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise InvalidArgument(f"invalid port {text} in -p {spec}: must be 1-65535")
    return value


def _host_ip(text: str, spec: str) -> str:
    if text in ("", "0.0.0.0"):
        return ""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidArgument(
            f"invalid host address {text!r} in -p {spec}: must be an IPv4 address"
        ) from None
