"""The nft text the node applies, and reading published ports back from nft's JSON."""

from __future__ import annotations

from pyswarm.worker.network import firewall, rules
from pyswarm.worker.network.ports import PortBinding

CID = "c" * 64


def test_base_script_is_idempotent_and_keeps_published_ports() -> None:
    script = rules.base_script("t", "br0", "10.1.0.0/16")
    assert "flush chain ip t ports" not in script  # published ports survive a re-setup
    for chain in ("prerouting", "output", "postrouting", "forward"):
        assert f"flush chain ip t {chain}" in script
    assert 'ip saddr 10.1.0.0/16 oifname != "br0" masquerade' in script
    assert 'oifname "br0" ip saddr 127.0.0.0/8 masquerade' in script
    assert "fib daddr type local jump ports" in script


def test_port_rule_text() -> None:
    rule = rules.port_rule("t", CID, "10.1.0.2", PortBinding(80, 8080, "udp", "127.0.0.1"))
    assert rule == (
        "add rule ip t ports ip daddr 127.0.0.1 udp dport 8080 dnat to 10.1.0.2:80"
        f' comment "{CID} udp 127.0.0.1 8080 80"'
    )
    assert "ip daddr" not in rules.port_rule("t", CID, "10.1.0.2", PortBinding(80, 8080))


def test_parse_port_rules_reads_our_comments_only() -> None:
    objects = [
        {"rule": {"chain": "ports", "handle": 7, "comment": f"{CID} tcp * 8080 80"}},
        {"rule": {"chain": "ports", "handle": 8, "comment": f"{CID} udp 127.0.0.1 53 53"}},
        {"rule": {"chain": "ports", "handle": 9, "comment": "added by hand"}},
        {"rule": {"chain": "ports", "handle": 10}},
        {"rule": {"chain": "postrouting", "handle": 3, "comment": f"{CID} tcp * 1 1"}},
        {"chain": {"name": "ports"}},
    ]
    assert rules.parse_port_rules(objects) == [
        rules.PortRule(7, CID, PortBinding(80, 8080)),
        rules.PortRule(8, CID, PortBinding(53, 53, "udp", "127.0.0.1")),
    ]


def test_delete_rules_script() -> None:
    assert rules.delete_rules_script("t", [3, 4]) == (
        "delete rule ip t ports handle 3\ndelete rule ip t ports handle 4\n"
    )


def test_firewall_rules_are_tagged_with_the_bridge() -> None:
    specs = firewall.rules("br0")
    assert specs[0][:2] == ["-i", "br0"] and specs[1][:2] == ["-o", "br0"]
    assert all("pyswarm br0" in spec and spec[-2:] == ["-j", "ACCEPT"] for spec in specs)
