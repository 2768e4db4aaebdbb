"""IPAM: which addresses are leased, in which order, and what survives a restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pyswarm.common.errors import Conflict, InvalidArgument
from pyswarm.worker.network.ipam import IpamStore, IpPool, gateway_of


def test_gateway_is_first_host_with_prefix() -> None:
    assert str(gateway_of("10.213.0.0/16")) == "10.213.0.1/16"


def test_skips_network_gateway_and_broadcast() -> None:
    pool = IpPool("10.0.0.0/29")  # .0 network, .1 gateway, .7 broadcast
    got = [pool.allocate(f"c{i}") for i in range(5)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(Conflict, match="no free address left in 10.0.0.0/29"):
        pool.allocate("c5")


def test_same_owner_keeps_its_address() -> None:
    pool = IpPool("10.0.0.0/24")
    assert pool.allocate("a") == pool.allocate("a") == "10.0.0.2"


def test_released_address_is_not_reused_at_once() -> None:
    pool = IpPool("10.0.0.0/29")
    a = pool.allocate("a")
    pool.allocate("b")
    assert pool.release("a") == a
    assert pool.allocate("c") == "10.0.0.4"
    assert pool.release("nobody") is None


def test_round_robin_wraps_to_freed_addresses() -> None:
    pool = IpPool("10.0.0.0/29")
    for i in range(5):
        pool.allocate(f"c{i}")
    pool.release("c1")
    assert pool.allocate("new") == "10.0.0.3"


@pytest.mark.parametrize("subnet", ["10.0.0.0/30", "10.0.0.1/24", "nonsense", "::1/64"])
def test_bad_subnets(subnet: str) -> None:
    with pytest.raises(InvalidArgument):
        IpPool(subnet)


def test_store_persists_across_instances(tmp_path: Path) -> None:
    store = IpamStore(tmp_path, "10.0.0.0/24")
    assert store.allocate("a") == "10.0.0.2"
    assert store.allocate("b") == "10.0.0.3"
    store.release("a")
    again = IpamStore(tmp_path, "10.0.0.0/24")
    assert again.leases() == {"b": "10.0.0.3"}
    assert again.allocate("c") == "10.0.0.4"  # round-robin position survives too
    assert not list(tmp_path.glob("*.tmp"))


def test_store_drops_leases_of_another_subnet(tmp_path: Path) -> None:
    IpamStore(tmp_path, "10.0.0.0/24").allocate("a")
    assert IpamStore(tmp_path, "10.1.0.0/24").leases() == {}


def test_store_refuses_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="ipam.json is not valid JSON"):
        IpamStore(tmp_path, "10.0.0.0/24").allocate("a")


def test_store_is_safe_across_threads(tmp_path: Path) -> None:
    stores = [IpamStore(tmp_path, "10.0.0.0/24") for _ in range(4)]
    results: list[str] = []

    def work(i: int) -> None:
        for j in range(10):
            results.append(stores[i].allocate(f"{i}-{j}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 40
    assert len(json.loads((tmp_path / "ipam.json").read_text())["leases"]) == 40
