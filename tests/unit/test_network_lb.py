"""The load balancer's nft text, reading it back, its checks; the userspace proxy on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pyswarm.common.errors import Conflict, InvalidArgument
from pyswarm.worker.network import lb, lb_nft
from pyswarm.worker.network.lb import Backend, ServiceLB, ServicePort
from pyswarm.worker.network.nft import NftError
from pyswarm.worker.network.node import NodeNetwork
from pyswarm.worker.network.ports import PortBinding

WEB = [ServicePort("tcp", 8080, 80), ServicePort("udp", 8053, 53)]
TWO = [Backend("10.213.0.2", "task-a"), Backend("10.213.0.3", "task-b")]
KEY = lb_nft.service_key("web")


def test_base_script_creates_own_chains_and_leaves_node_chains_alone() -> None:
    script = lb_nft.base_script("t")
    assert "add map ip t lb_ports { type inet_proto . inet_service : verdict; }" in script
    for chain in ("lb_prerouting", "lb_output", "lb_input"):
        assert f"flush chain ip t {chain}\n" in script
    for chain in ("prerouting", "output", "postrouting", "forward", "ports"):
        assert f"flush chain ip t {chain}\n" not in script
    assert "fib daddr type local meta l4proto . th dport vmap @lb_ports" in script
    assert "meta l4proto tcp reject with tcp reset" in script
    assert "ct status & dnat == 0" in script  # only what no DNAT took is refused


def test_service_script_with_backends() -> None:
    script = lb_nft.service_script("t", "web", WEB, TWO, None)
    chain, bmap = f"lbs_{KEY}", f"lbb_{KEY}"
    assert f"flush chain ip t {chain}\n" in script and f"flush map ip t {bmap}\n" in script
    assert (f'add element ip t {bmap} {{ 0 comment "task-a" : 10.213.0.2,'
            f' 1 comment "task-b" : 10.213.0.3 }}') in script
    assert (f"add rule ip t {chain} tcp dport 8080 dnat to numgen inc mod 2 map @{bmap} : 80"
            ' comment "web tcp 8080 80"') in script
    assert f"add element ip t lb_ports {{ tcp . 8080 : goto {chain}, udp . 8053 : goto" in script
    assert "lb_refused" not in script
    assert "delete" not in script  # nothing was there before


def test_service_script_without_backends_refuses() -> None:
    script = lb_nft.service_script("t", "web", WEB, [], (WEB, TWO))
    assert " dnat to " not in script and "add element ip t lb_ports" not in script
    assert 'tcp dport 8080 return comment "web tcp 8080 80"' in script
    assert "add element ip t lb_refused { tcp . 8080, udp . 8053 }" in script
    # The old state had backends: its dispatch elements go, in the same transaction.
    assert "delete element ip t lb_ports { tcp . 8080, udp . 8053 }" in script


def test_remove_script_deletes_elements_before_the_chain() -> None:
    script = lb_nft.remove_script("t", "web", (WEB[:1], []))
    lines = script.splitlines()
    assert lines[0] == "delete element ip t lb_refused { tcp . 8080 }"
    assert lines[1:] == [f"flush chain ip t lbs_{KEY}", f"delete chain ip t lbs_{KEY}",
                         f"delete map ip t lbb_{KEY}"]


def nft_objects(service_id: str, ports: list[ServicePort],
                backends: list[Backend]) -> list[dict[str, Any]]:
    """What ``nft -j -a list table`` prints for a service (the parts the parser reads)."""
    key = lb_nft.service_key(service_id)
    objects: list[dict[str, Any]] = [{"map": {
        "name": f"lbb_{key}", "type": "integer", "map": "ipv4_addr",
        # listed out of order on purpose: the index decides
        "elem": [[{"elem": {"val": i, "comment": b.task_id}}, b.ip]
                 for i, b in reversed(list(enumerate(backends)))],
    }}] if backends else [{"map": {"name": f"lbb_{key}"}}]
    for handle, p in enumerate(ports):
        objects.append({"rule": {"chain": f"lbs_{key}", "handle": handle,
                                 "comment": f"{service_id} {p.proto} {p.published} {p.target}"}})
    return objects


def test_parse_services_reads_back_what_was_written() -> None:
    objects = [
        *nft_objects("web", WEB, TWO),
        *nft_objects("idle", [ServicePort("tcp", 9000, 90)], []),
        {"rule": {"chain": "ports", "handle": 1, "comment": "c tcp * 1 1"}},
        {"rule": {"chain": "lbs_0000", "handle": 9, "comment": "web tcp 1 1"}},  # wrong key
        {"rule": {"chain": f"lbs_{KEY}", "handle": 8, "comment": "added by hand"}},
        {"chain": {"name": f"lbs_{KEY}"}},
    ]
    assert lb_nft.parse_services(objects) == {
        "web": (WEB, TWO),
        "idle": ([ServicePort("tcp", 9000, 90)], []),
    }


@pytest.mark.parametrize(("sid", "ports", "backends", "message"), [
    ("bad id", WEB, TWO, "invalid service id"),
    ('x"y', WEB, TWO, "invalid service id"),
    ("s" * 101, WEB, TWO, "invalid service id"),
    ("web", [ServicePort("sctp", 1, 1)], TWO, "invalid protocol"),
    ("web", [ServicePort("tcp", 0, 1)], TWO, "must be 1-65535"),
    ("web", [ServicePort("tcp", 1, 65536)], TWO, "must be 1-65535"),
    ("web", [ServicePort("tcp", 1, 1), ServicePort("tcp", 1, 2)], TWO, "published twice"),
    ("web", WEB, [Backend("10.0.0.300", "t")], "invalid backend address"),
    ("web", WEB, [Backend("10.0.0.3", "t a")], "invalid task id"),
    ("web", WEB, [Backend("10.0.0.3", "a"), Backend("10.0.0.3", "b")], "listed twice"),
])
def test_check_service_refuses_what_would_reach_nft_badly(
    sid: str, ports: list[ServicePort], backends: list[Backend], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        lb.check_service(sid, ports, backends)


def fake_network(published: dict[str, list[PortBinding]] | None = None,
                 nft_fails: bool = False) -> NodeNetwork:
    def run(script: str) -> None:
        raise NftError("nftables refused the change: no nftables here")

    nft = SimpleNamespace(run=run) if nft_fails else None
    return cast(NodeNetwork, SimpleNamespace(
        cfg=SimpleNamespace(nft_table="t"), _nft=nft, _lock=threading.RLock(),
        published=lambda: published or {}))


def test_check_owner() -> None:
    net = fake_network({"c" * 64: [PortBinding(80, 8080, "tcp", "127.0.0.1")]})
    others: dict[str, lb.ServiceState] = {"api": ([ServicePort("udp", 8053, 53)], [])}
    with pytest.raises(Conflict, match="port 8080/tcp is already published by container cccc"):
        lb.check_owner(net, {}, "web", WEB[:1])
    with pytest.raises(Conflict, match="port 8053/udp is already published by service api"):
        lb.check_owner(net, others, "web", WEB[1:])
    lb.check_owner(net, others, "api", WEB[1:])  # its own port
    lb.check_owner(net, others, "web", [ServicePort("tcp", 8053, 53)])


def test_mode() -> None:
    with pytest.raises(InvalidArgument, match="invalid load balancer mode 'ipvs'"):
        ServiceLB(fake_network(), mode="ipvs")


# ---- the userspace proxy, on loopback (no root needed) ------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstreams:
    """Servers on 127.0.0.x:port, each answering its own name, on the test's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop, self.port = loop, port
        self.servers: dict[str, asyncio.Server] = {}

    def start(self, ip: str) -> None:
        async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(ip.encode())
            await writer.drain()
            writer.close()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(answer, ip, self.port, reuse_address=True)

        self.servers[ip] = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)

    def stop(self, ip: str) -> None:
        async def close(server: asyncio.Server) -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(self.servers.pop(ip)), self.loop).result(5)


def ask(port: int) -> str:
    """What the service answers; "refused" when the connection is."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            data = b""
            while chunk := s.recv(100):
                data += chunk
            return data.decode()
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return ""


def test_userspace_proxy_round_robin_skips_dead_backends(
    loop: asyncio.AbstractEventLoop,
) -> None:
    published, target = free_port(), free_port()
    ups = Upstreams(loop, target)
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    for ip in ips:
        ups.start(ip)
    balancer = ServiceLB(fake_network(), mode="userspace", loop=loop)
    backends = [Backend(ip, f"t{i}") for i, ip in enumerate(ips)]
    ports = [ServicePort("tcp", published, target)]
    balancer.set_service("web", ports, backends)
    assert Counter(ask(published) for _ in range(30)) == {ip: 10 for ip in ips}
    ups.stop(ips[1])
    assert Counter(ask(published) for _ in range(20)) == {ips[0]: 10, ips[2]: 10}
    balancer.set_service("web", ports, backends[2:])
    assert {ask(published) for _ in range(5)} == {ips[2]}
    with pytest.raises(Conflict, match=f"{published}/tcp is already published by service web"):
        balancer.set_service("api", ports, backends)
    balancer.set_service("web", ports, [])  # no backends: refused
    assert _eventually(lambda: ask(published) == "refused")
    assert balancer.services() == {"web": (ports, [])}
    balancer.set_service("web", ports, backends[:1])
    assert _eventually(lambda: ask(published) == ips[0])
    balancer.clear()
    assert _eventually(lambda: ask(published) == "refused")
    assert balancer.services() == {}
    balancer.set_service("web", ports, backends[:1])
    assert _eventually(lambda: ask(published) == ips[0])
    balancer.close()  # the agent shuts down: the proxies stop
    assert _eventually(lambda: ask(published) == "refused")
    for ip in list(ups.servers):
        ups.stop(ip)


def test_userspace_all_or_nothing_on_a_held_port(loop: asyncio.AbstractEventLoop) -> None:
    balancer = ServiceLB(fake_network(), mode="userspace", loop=loop)
    free, taken = free_port(), free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        with pytest.raises(Conflict, match=f"port {taken}/tcp is already in use"):
            balancer.set_service("web", [ServicePort("tcp", free, 80),
                                         ServicePort("tcp", taken, 80)], TWO)
    assert balancer.services() == {}
    assert ask(free) == "refused"  # the first port was let go of


def test_falls_back_to_userspace_without_nftables(loop: asyncio.AbstractEventLoop) -> None:
    assert ServiceLB(fake_network(nft_fails=True), loop=loop).mode == "userspace"
    with pytest.raises(NftError):
        ServiceLB(fake_network(nft_fails=True), mode="nftables")


def test_userspace_from_the_environment(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYSWARM_LB", "userspace")
    assert ServiceLB(fake_network(), loop=loop).mode == "userspace"


def _eventually(ok: Any, tries: int = 100) -> bool:
    for _ in range(tries):
        if ok():
            return True
        threading.Event().wait(0.02)
    return False
