"""The service DNS's names, without sockets: who sees which name, and what the answer is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.network.dns import NameTable, ServiceDNS, Upstream, host_nameservers

FRONT, BACK, OTHER, INGRESS = "net-front", "net-back", "net-other", "net-ingress"


def state() -> cpb.NetworkState:
    s = cpb.NetworkState(version=7)
    for net_id, name in ((FRONT, "stack_front"), (BACK, "stack_back"), (OTHER, "other"),
                         (INGRESS, "ingress")):
        s.networks.add(id=net_id, spec=opb.NetworkSpec(name=name), subnet="10.214.0.0/24",
                       vni=1)
    web = s.endpoints.add(service_id="s-web", service_name="stack_web", aliases=["web"],
                          mode="vip")
    web.vips.add(network_id=FRONT, addr="10.215.0.2")
    web.vips.add(network_id=BACK, addr="10.215.0.3")
    web.vips.add(network_id=INGRESS, addr="10.215.0.4")
    for slot, (front, back) in enumerate((("10.214.1.5", "10.214.2.5"),
                                          ("10.214.1.6", "10.214.2.6")), start=1):
        task = web.tasks.add(task_id=f"t{slot}", node_id="n1", name=f"stack_web.{slot}")
        task.networks.add(network_id=FRONT, addresses=[f"{front}/24"], aliases=["www"])
        task.networks.add(network_id=BACK, addresses=[f"{back}/24"])
        task.networks.add(network_id=INGRESS, addresses=["10.255.0.9/24"])
    db = s.endpoints.add(service_id="s-db", service_name="stack_db", aliases=["db"],
                         mode="dnsrr")
    for slot, ip in enumerate(("10.214.2.7", "10.214.2.8"), start=1):
        task = db.tasks.add(task_id=f"d{slot}", name=f"stack_db.{slot}")
        task.networks.add(network_id=BACK, addresses=[f"{ip}/24"])
    hidden = s.endpoints.add(service_id="s-h", service_name="hidden", mode="vip")
    hidden.vips.add(network_id=OTHER, addr="10.215.0.9")
    edge = s.endpoints.add(service_id="s-e", service_name="edge", mode="vip")
    edge.vips.add(network_id=INGRESS, addr="10.215.0.10")
    s.endpoints.add(service_id="s-idle", service_name="idle", mode="dnsrr")  # no task yet
    return s


@pytest.fixture
def table() -> NameTable:
    return NameTable.from_state(state())


@pytest.mark.parametrize(("name", "networks", "expected"), [
    # vip mode: the VIP on the first network the asker shares with the service
    ("stack_web", [FRONT], ["10.215.0.2"]),
    ("stack_web", [BACK, FRONT], ["10.215.0.3"]),
    ("web", [FRONT], ["10.215.0.2"]),  # the stack's short name (alias)
    ("WEB.", [FRONT], ["10.215.0.2"]),  # case and the trailing dot do not matter
    ("www", [FRONT], ["10.215.0.2"]),  # a network alias of the service's tasks
    ("www", [BACK], []),  # ... on that network only
    # tasks.NAME: the tasks' own addresses on that network
    ("tasks.stack_web", [FRONT], ["10.214.1.5", "10.214.1.6"]),
    ("tasks.web", [BACK], ["10.214.2.5", "10.214.2.6"]),
    # a task's name, and the container name Swarm gives it
    ("stack_web.2", [BACK], ["10.214.2.6"]),
    ("stack_web.1.t1", [FRONT], ["10.214.1.5"]),
    # dnsrr: the tasks' addresses, no VIP
    ("stack_db", [BACK], ["10.214.2.7", "10.214.2.8"]),
    ("db", [FRONT, BACK], ["10.214.2.7", "10.214.2.8"]),
    ("tasks.db", [BACK], ["10.214.2.7", "10.214.2.8"]),
    # names of networks the asker is not on: known, not visible
    ("stack_db", [FRONT], []),
    ("hidden", [FRONT, BACK], []),
    ("hidden", [], []),
    # no service discovery through the ingress network
    ("edge", [INGRESS], []),
    ("stack_web", [INGRESS], []),
    # a dnsrr service without tasks is still the cluster's name: NXDOMAIN, not forwarded
    ("idle", [FRONT], []),
    # anything else is not the cluster's: forwarded
    ("example.com", [FRONT], None),
    ("stack_web.example.com", [FRONT], None),
])
def test_lookup(table: NameTable, name: str, networks: list[str],
                expected: list[str] | None) -> None:
    found = table.lookup(name, networks)
    assert (sorted(found) if found is not None else None) == expected


def test_dnsrr_answers_are_shuffled(table: NameTable) -> None:
    orders = {tuple(table.lookup("stack_db", [BACK]) or []) for _ in range(64)}
    assert orders == {("10.214.2.7", "10.214.2.8"), ("10.214.2.8", "10.214.2.7")}


def test_an_empty_table_knows_nothing() -> None:
    assert NameTable().lookup("web", [FRONT]) is None
    assert NameTable.from_state(cpb.NetworkState()).lookup("web", [FRONT]) is None


def server(table: NameTable, networks: dict[str, list[str]]) -> ServiceDNS:
    dns_server = ServiceDNS("10.213.0.1", lambda ip: networks.get(ip, []), upstreams=[])
    dns_server.table = table
    return dns_server


def test_replies_from_the_table(table: NameTable) -> None:
    srv = server(table, {"10.213.0.5": [FRONT]})
    q = dns.message.make_query("web", "A")
    reply = srv.resolve(q, "10.213.0.5")
    assert reply is not None and reply.rcode() == dns.rcode.NOERROR
    assert reply.id == q.id and reply.flags & dns.flags.AA and reply.flags & dns.flags.QR
    (rrset,) = reply.answer
    assert rrset.ttl == 0 and [r.to_text() for r in rrset] == ["10.215.0.2"]

    aaaa = srv.resolve(dns.message.make_query("web", "AAAA"), "10.213.0.5")
    assert aaaa is not None and aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer

    hidden = srv.resolve(dns.message.make_query("hidden", "A"), "10.213.0.5")
    assert hidden is not None and hidden.rcode() == dns.rcode.NXDOMAIN

    # An address that is no container of ours sees no cluster name.
    stranger = srv.resolve(dns.message.make_query("web", "A"), "10.213.0.99")
    assert stranger is not None and stranger.rcode() == dns.rcode.NXDOMAIN

    assert srv.resolve(dns.message.make_query("example.com", "A"), "10.213.0.5") is None


def test_no_upstream_means_servfail_at_once(table: NameTable) -> None:
    srv = server(table, {})
    q = dns.message.make_query("example.com", "A")
    wire = asyncio.run(srv.answer(q.to_wire(), "10.213.0.5", tcp=False))
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == q.id and reply.rcode() == dns.rcode.SERVFAIL


def test_garbage_gets_formerr_and_responses_are_ignored(table: NameTable) -> None:
    srv = server(table, {})
    garbage = b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xff"  # a cut question
    wire = asyncio.run(srv.answer(garbage, "10.213.0.5", False))
    assert wire is not None and wire[:2] == b"\x12\x34"
    assert wire[2] & 0x80 and wire[3] & 0x0F == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.make_query("web", "A"))
    assert asyncio.run(srv.answer(response.to_wire(), "10.213.0.5", False)) is None


def test_many_answers_are_truncated_for_udp() -> None:
    s = cpb.NetworkState()
    ep = s.endpoints.add(service_id="big", service_name="big", mode="dnsrr")
    for i in range(100):
        ep.tasks.add(task_id=f"t{i}").networks.add(network_id=FRONT,
                                                   addresses=[f"10.214.1.{i + 2}/24"])
    srv = server(NameTable.from_state(s), {"10.213.0.5": [FRONT]})
    q = dns.message.make_query("big", "A", use_edns=False)
    reply = srv.resolve(q, "10.213.0.5")
    assert reply is not None
    wire = reply.to_wire(max_size=512, prefer_truncation=True)
    assert len(wire) <= 512 and dns.message.from_wire(wire).flags & dns.flags.TC


def test_host_nameservers(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example.org\nnameserver 127.0.0.53\n"
                    "nameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n")
    assert host_nameservers(str(path)) == [Upstream("127.0.0.53"), Upstream("fe80::1")]
    assert host_nameservers(str(tmp_path / "missing")) == []
