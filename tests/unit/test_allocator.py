"""The allocator's memory on its own: subnets, VNIs, addresses, VIPs and ports."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from pyswarm.manager.allocator import AllocationError, Allocator
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.allocator.pool import Pool
from pyswarm.proto import objects_pb2 as opb

INGRESS = opb.PUBLISH_MODE_INGRESS


def network(id: str, subnet: str = "", ingress: bool = False) -> opb.Network:
    n = opb.Network(id=id)
    n.spec.name = id
    n.spec.subnet = subnet
    if ingress:
        n.spec.labels[nets.INGRESS_LABEL] = "true"
    return n


def allocated(alloc: Allocator, *networks: opb.Network) -> list[opb.Network]:
    out = []
    for n in networks:
        done = alloc.network(n)
        assert done is not None
        out.append(done)
    return out


def service(id: str, *ports: tuple[int, int], mode: str = "vip") -> opb.Service:
    s = opb.Service(id=id)
    s.spec.name = id
    s.spec.endpoint.mode = mode
    for target, published in ports:
        s.spec.endpoint.ports.add(target_port=target, published_port=published,
                                  publish_mode=INGRESS)
    return s


def with_endpoint(s: opb.Service, endpoint: opb.Endpoint) -> opb.Service:
    out = opb.Service()
    out.CopyFrom(s)
    out.endpoint.CopyFrom(endpoint)
    return out


def test_subnets_and_vnis_are_unique() -> None:
    alloc = Allocator()
    done = allocated(alloc, network("ing", "10.255.0.0/16", ingress=True),
                     *(network(f"net{i}") for i in range(5)), network("mine", "10.9.0.0/16"))
    subnets = [ipaddress.IPv4Network(n.subnet) for n in done]
    for a, b in itertools.combinations(subnets, 2):
        assert not a.overlaps(b)
    assert [str(s) for s in subnets[1:6]] == [f"10.214.{i}.0/24" for i in range(5)]
    assert done[0].vni == 4096
    vnis = [n.vni for n in done[1:]]
    assert len(set(vnis)) == len(vnis) and min(vnis) >= 4097
    # Allocated networks are left alone; an overlapping one is refused.
    assert alloc.network(done[1]) is None
    with pytest.raises(AllocationError, match="overlaps network mine"):
        alloc.network(network("clash", "10.9.128.0/17"))


def test_a_user_subnet_inside_the_overlay_pool_takes_its_24s() -> None:
    alloc = Allocator()
    (own,) = allocated(alloc, network("own", "10.214.0.0/23"))
    (auto,) = allocated(alloc, network("auto"))
    assert own.subnet == "10.214.0.0/23" and auto.subnet == "10.214.2.0/24"


def test_released_networks_free_their_subnet_and_vni_for_later() -> None:
    alloc = Allocator()
    (a,) = allocated(alloc, network("a"))
    alloc.release_network("a")
    (b,) = allocated(alloc, network("b"))
    assert b.subnet != a.subnet  # serial: a freed subnet is reused last
    assert not alloc.knows("a")


def test_one_vip_per_network_from_the_vip_pool_not_in_dnsrr_mode() -> None:
    alloc = Allocator()
    front, back = allocated(alloc, network("front"), network("back"))
    endpoint = alloc.service(service("web"), ["front", "back"])
    assert [v.network_id for v in endpoint.virtual_ips] == ["front", "back"]
    addrs = [ipaddress.IPv4Address(v.addr) for v in endpoint.virtual_ips]
    assert len(set(addrs)) == 2 and all(a in nets.VIP_POOL for a in addrs)
    assert not any(a in ipaddress.IPv4Network(n.subnet) for a in addrs for n in (front, back))
    assert endpoint.virtual_ip == endpoint.virtual_ips[0].addr
    # Same networks again: the same VIPs. One network dropped: its VIP freed.
    web = with_endpoint(service("web"), endpoint)
    assert alloc.service(web, ["front", "back"]) == endpoint
    again = alloc.service(web, ["front"])
    assert [v.addr for v in again.virtual_ips] == [endpoint.virtual_ips[0].addr]
    assert len(alloc.vips.pool) == 1
    assert not alloc.service(service("dns", mode="dnsrr"), ["front"]).virtual_ips
    alloc.release_service("web")
    assert len(alloc.vips.pool) == 0


def test_task_addresses_unique_freed_and_full_networks_refused() -> None:
    alloc = Allocator()
    (small,) = allocated(alloc, network("small", "10.9.9.0/29"))  # 5 usable (.1 is kept)
    tasks = [opb.Task(id=f"t{i}") for i in range(6)]
    addrs = [alloc.task(t, [(small, ["web"])])[0].addresses[0] for t in tasks[:5]]
    assert addrs == [f"10.9.9.{i}/29" for i in range(2, 7)]
    with pytest.raises(AllocationError, match="network small has no free address left"):
        alloc.task(tasks[5], [(small, [])])
    alloc.release_task("t2")
    (again,) = alloc.task(tasks[5], [(small, [])])
    assert again.addresses[0] == "10.9.9.4/29"  # the only free one
    # An address the task already has is kept (an allocation read back from the store).
    kept = opb.Task(id="t5")
    kept.networks.add(network_id="small", addresses=["10.9.9.4/29"])
    assert alloc.task(kept, [(small, [])])[0].addresses[0] == "10.9.9.4/29"


def test_a_failed_task_allocation_takes_nothing() -> None:
    alloc = Allocator()
    small, big = allocated(alloc, network("small", "10.9.9.0/30"), network("big"))
    # /30: network, gateway, broadcast reserved: one address.
    alloc.task(opb.Task(id="first"), [(small, [])])
    with pytest.raises(AllocationError):
        alloc.task(opb.Task(id="second"), [(big, []), (small, [])])
    assert len(alloc.spaces["big"].pool) == 0


def test_node_attachments_follow_the_wanted_networks() -> None:
    alloc = Allocator()
    allocated(alloc, network("ing", "10.255.0.0/16", ingress=True), network("ov"))
    node = opb.Node(id="n1")
    first = alloc.node(node, {"ing", "ov"})
    assert first is not None and [a.network_id for a in first] == ["ing", "ov"]
    node.attachments.extend(first)
    assert alloc.node(node, {"ing", "ov"}) is None  # unchanged: nothing to write
    fewer = alloc.node(node, {"ing"})
    assert fewer is not None and [a.addresses for a in fewer] == [first[0].addresses]
    assert len(alloc.spaces["ov"].pool) == 0


def test_ports_published_zero_get_one_from_the_dynamic_range_and_keep_it() -> None:
    alloc = Allocator()
    endpoint = alloc.service(service("web", (80, 0), (443, 8443)), [])
    ports = {p.target_port: p.published_port for p in endpoint.ports}
    assert ports[443] == 8443 and 30000 <= ports[80] <= 32767
    web = with_endpoint(service("web", (80, 0), (443, 8443)), endpoint)
    assert alloc.service(web, []) == endpoint
    with pytest.raises(AllocationError, match="port 8443/tcp is already published"):
        alloc.service(service("api", (1, 8443)), [])
    with pytest.raises(AllocationError, match=f"port {ports[80]}/tcp is already published"):
        alloc.service(service("api", (1, ports[80])), [])
    assert alloc.service(service("api", (1, 0)), []).ports[0].published_port != ports[80]
    alloc.release_service("web")
    assert alloc.service(service("other", (1, 8443)), []).ports[0].published_port == 8443


def test_pool_hands_out_serially_and_only_owners_release() -> None:
    pool = Pool(4, frozenset({0}))
    assert [pool.take("a"), pool.take("b"), pool.take("c"), pool.take("d")] == [1, 2, 3, None]
    pool.release(2, "someone else")
    assert pool.owner(2) == "b"
    pool.release(2, "b")
    pool.release_owner("a")
    assert pool.take("e") == 1 and pool.take("f") == 2


def test_a_pool_owner_holds_one_slot_or_many() -> None:
    """An owner's slots as it takes and gives them back one by one (pool.py keeps one slot
    as the slot itself, and a set from the second)."""
    pool = Pool(8)
    assert pool.claim(3, "a") and pool.claim(3, "a") and pool.held("a") == {3}
    assert pool.claim(5, "a") and pool.take("a") == 0 and pool.held("a") == {0, 3, 5}
    assert not pool.claim(5, "b") and pool.held("b") == set()
    pool.release(3, "a")
    pool.release(5, "a")
    assert pool.held("a") == {0} and pool.owner(5) is None
    pool.release(0, "a")
    assert pool.held("a") == set() and len(pool) == 0
    assert pool.claim(0, "b") and pool.claim(1, "a")
    pool.release_owner("a")
    assert pool.held("a") == set() and pool.owner(1) is None and pool.held("b") == {0}
    pool.release_owner("b")
    assert len(pool) == 0 and pool.free == 8
