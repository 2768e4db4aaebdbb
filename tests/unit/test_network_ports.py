"""The -p syntax: what Docker accepts for one port, and clear errors for the rest."""

from __future__ import annotations

import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.worker.network.ports import PortBinding, parse_publish


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", PortBinding(80, 0)),
        ("8080:80", PortBinding(80, 8080)),
        ("8080:80/udp", PortBinding(80, 8080, "udp")),
        ("8080:80/TCP", PortBinding(80, 8080, "tcp")),
        ("127.0.0.1:8080:80", PortBinding(80, 8080, "tcp", "127.0.0.1")),
        ("127.0.0.1::80", PortBinding(80, 0, "tcp", "127.0.0.1")),
        ("127.0.0.1::53/udp", PortBinding(53, 0, "udp", "127.0.0.1")),
        ("0.0.0.0:8080:80", PortBinding(80, 8080)),
        ("0:80", PortBinding(80, 0)),
        (" 8080:80 ", PortBinding(80, 8080)),
        ("65535:1", PortBinding(1, 65535)),
    ],
)
def test_parse_publish_accepts_docker_forms(spec: str, expected: PortBinding) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("8080:99999", "invalid port 99999 in -p 8080:99999: must be 1-65535"),
        ("99999:80", "invalid port 99999 in -p 99999:80: must be 1-65535"),
        ("8080:0", "invalid port 0 in -p 8080:0: must be 1-65535"),
        ("8080:http", "invalid port 'http' in -p 8080:http: not a number"),
        ("8080:80/sctp", "invalid protocol 'sctp' in -p 8080:80/sctp"),
        ("300.1.1.1:8080:80", "invalid host address '300.1.1.1'"),
        ("[::1]:8080:80", "IPv6 host addresses are not supported"),
        ("8000-8010:80-90", "port ranges are not supported"),
        ("1:2:3:4", "expected [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]"),
        ("", "empty -p value"),
        ("8080:", "invalid port '' in -p 8080:"),
        ("-1:80", "port ranges are not supported"),
    ],
)
def test_parse_publish_rejects_with_named_value(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_publish(spec)
    assert message in str(err.value)
