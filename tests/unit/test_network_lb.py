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
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent import lb_sync
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


# ---- VIPs and overlays: nft text, reading back, checks ---------------------------------

VIP = lb_nft.VirtualIP("10.215.0.7", "web", "net1", (80,))
VKEY = lb_nft.vip_key("10.215.0.7")
OVERLAY_TASKS = [Backend("10.214.1.5", "task-a"), Backend("10.214.1.6", "task-b")]


def test_base_script_dispatches_vips_refuses_them_and_snats_into_overlays() -> None:
    script = lb_nft.base_script("t")
    assert "add rule ip t lb_prerouting ip daddr vmap @lb_vips" in script
    assert ("add rule ip t lb_forward ct status & dnat == 0 ip daddr @lb_vips_refused"
            " meta l4proto tcp reject with tcp reset") in script
    # What was DNATed into an overlay leaves with this node's address on it.
    assert "add rule ip t lb_postrouting ct status dnat snat to ip daddr map @lb_snat" in script
    assert "add map ip t lb_snat { type ipv4_addr : ipv4_addr; flags interval; }" in script


def test_vip_script_with_tasks_balances_every_port_of_tcp_and_udp() -> None:
    script = lb_nft.vip_script("t", VIP, OVERLAY_TASKS, None)
    assert (f"add rule ip t lbv_{VKEY} meta l4proto {{ tcp, udp }} dnat to numgen inc mod 2"
            f' map @lbvb_{VKEY} comment "vip web net1 10.215.0.7"') in script
    assert (f'add element ip t lbvb_{VKEY} {{ 0 comment "task-a" : 10.214.1.5,'
            f' 1 comment "task-b" : 10.214.1.6 }}') in script
    assert f"add element ip t lb_vips {{ 10.215.0.7 : goto lbv_{VKEY} }}" in script
    assert "lb_vips_refused" not in script and "delete" not in script


def test_vip_script_without_tasks_refuses_and_forgets_the_old_dispatch() -> None:
    script = lb_nft.vip_script("t", VIP, [], (VIP, OVERLAY_TASKS))
    assert "delete element ip t lb_vips { 10.215.0.7 }" in script
    assert "add element ip t lb_vips_refused { 10.215.0.7 }" in script
    assert " dnat to " not in script
    again = lb_nft.vip_script("t", VIP, OVERLAY_TASKS, (VIP, []))
    assert "delete element ip t lb_vips_refused { 10.215.0.7 }" in again


def test_remove_vip_script() -> None:
    assert lb_nft.remove_vip_script("t", (VIP, [])).splitlines() == [
        "delete element ip t lb_vips_refused { 10.215.0.7 }",
        f"flush chain ip t lbv_{VKEY}", f"delete chain ip t lbv_{VKEY}",
        f"delete map ip t lbvb_{VKEY}"]


def test_overlays_script_replaces_the_whole_map() -> None:
    assert lb_nft.overlays_script("t", {"10.255.0.0/16": "10.255.0.2"}) == (
        "flush map ip t lb_snat\nadd element ip t lb_snat { 10.255.0.0/16 : 10.255.0.2 }\n")
    assert lb_nft.overlays_script("t", {}) == "flush map ip t lb_snat\n"


def test_parse_vips_and_overlays_read_back_what_was_written() -> None:
    objects: list[dict[str, Any]] = [
        {"map": {"name": f"lbvb_{VKEY}", "elem": [
            [{"elem": {"val": 1, "comment": "task-b"}}, "10.214.1.6"],
            [{"elem": {"val": 0, "comment": "task-a"}}, "10.214.1.5"]]}},
        {"rule": {"chain": f"lbv_{VKEY}", "comment": "vip web net1 10.215.0.7"}},
        {"rule": {"chain": "lbv_0000", "comment": "vip web net1 10.215.0.8"}},  # wrong key
        {"map": {"name": "lb_snat", "elem": [
            ["10.9.9.9", "10.9.9.9"],
            [{"prefix": {"addr": "10.255.0.0", "len": 16}}, "10.255.0.2"]]}},
        *nft_objects("web", WEB, TWO),
    ]
    assert lb_nft.parse_vips(objects) == {"10.215.0.7": (VIP, OVERLAY_TASKS)}
    assert lb_nft.parse_overlays(objects) == {"10.9.9.9/32": "10.9.9.9",
                                              "10.255.0.0/16": "10.255.0.2"}
    assert lb_nft.parse_services(objects) == {"web": (WEB, TWO)}  # VIP maps are not services


@pytest.mark.parametrize(("vip", "message"), [
    (lb_nft.VirtualIP("10.215.0.300", "web", "n"), "invalid virtual IP"),
    (lb_nft.VirtualIP("10.215.0.7", "we b", "n"), "invalid service id"),
    (lb_nft.VirtualIP("10.215.0.7", "web", 'n"'), "invalid network id"),
    (lb_nft.VirtualIP("10.215.0.7", "w" * 60, "n" * 60), "too long"),
    (lb_nft.VirtualIP("10.215.0.7", "web", "n", (0,)), "invalid port 0"),
])
def test_check_vip(vip: lb_nft.VirtualIP, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        lb.check_vip(vip, [])


@pytest.mark.parametrize(("overlays", "message"), [
    ({"10.255.0.0/33": "10.255.0.2"}, "invalid overlay subnet"),
    ({"10.255.0.0/16": "10.254.0.2"}, "outside its overlay subnet"),
    ({"10.255.0.0/16": "x"}, "invalid address on overlay"),
    ({"10.255.0.0/16": "10.255.0.2", "10.255.3.0/24": "10.255.3.2"}, "overlap"),
])
def test_check_overlays(overlays: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        lb.check_overlays(overlays)


# ---- the cluster-wide wanted state: NetworkState merged with the local controllers ----

INGRESS, APP = "ingress-id", "app-id"
RUNNING, SHUTDOWN = opb.TaskState.TASK_STATE_RUNNING, opb.TaskState.TASK_STATE_SHUTDOWN


def local_task(task_id: str, bridge_ip: str, *, app_ip: str = "", desired: int = RUNNING,
               state: int = RUNNING, removed: bool = False, service: str = "web") -> Any:
    """A TaskController as LBSync reads it."""
    task = opb.Task(id=task_id, service_id=service, node_id="me", desired_state=desired)
    task.endpoint.ports.add(protocol="tcp", published_port=8080, target_port=80)
    if app_ip:
        task.networks.add(network_id=APP, addresses=[f"{app_ip}/24"])
    return SimpleNamespace(task=task, status=opb.TaskStatus(state=state), removed=removed,
                           container=SimpleNamespace(ip_address=bridge_ip))


def cluster_state(tasks: dict[str, str], *, mode: str = "vip",
                  ingress_label: bool = True) -> cpb.NetworkState:
    """Service "web" (8080 -> 80 ingress, 9000 host mode) with a VIP on "app"; ``tasks``:
    task id -> node id. Task "tN" has 10.255.0.N on ingress and 10.214.1.N on app."""
    state = cpb.NetworkState(version=3)
    state.peers.add(node_id="other", addr="198.18.0.3", ready=True)
    labels = {"pyswarm.network.ingress": "true"} if ingress_label else {}
    state.networks.add(id=INGRESS, spec=opb.NetworkSpec(
        name="ingress" if not ingress_label else "routing-mesh", labels=labels))
    state.networks.add(id=APP, spec=opb.NetworkSpec(name="app"), subnet="10.214.1.0/24")
    state.node_attachments.add(network_id=INGRESS, addresses=["10.255.0.2/16"])
    state.node_attachments.add(network_id=APP, addresses=["10.214.1.2/24"])
    ep = state.endpoints.add(service_id="web", service_name="web", mode=mode)
    ep.ports.add(protocol="tcp", target_port=80, published_port=8080)
    ep.ports.add(protocol="tcp", target_port=90, published_port=9000,
                 publish_mode=opb.PUBLISH_MODE_HOST)
    if mode == "vip":
        ep.vips.add(network_id=APP, addr="10.215.0.7")
        ep.vips.add(network_id="not-joined", addr="10.215.0.8")
    for task_id, node in tasks.items():
        n = task_id[1:]
        t = ep.tasks.add(task_id=task_id, node_id=node)
        t.networks.add(network_id=INGRESS, addresses=[f"10.255.0.{n}/16"])
        t.networks.add(network_id=APP, addresses=[f"10.214.1.{n}/24"])
    return state


WEB_PORTS = (ServicePort("tcp", 8080, 80),)


def test_wanted_without_network_state_is_the_local_balancer() -> None:
    controllers = {"t1": local_task("t1", "10.213.0.2"),
                   "t9": local_task("t9", "10.213.0.9", state=opb.TaskState.TASK_STATE_STARTING)}
    wanted = lb_sync.wanted_state(controllers)
    assert wanted == lb_sync.Wanted(
        services={"web": (WEB_PORTS, (Backend("10.213.0.2", "t1"),))})


def test_wanted_spreads_ingress_over_local_bridge_and_remote_ingress_addresses() -> None:
    controllers = {"t1": local_task("t1", "10.213.0.2", app_ip="10.214.1.1")}
    # The state still says t7 is on this node: the controllers know better (no such task).
    state = cluster_state({"t1": "me", "t3": "other", "t4": "other", "t7": "me"})
    wanted = lb_sync.wanted_state(controllers, state, "me")
    assert wanted.services == {"web": (WEB_PORTS, (
        Backend("10.213.0.2", "t1"), Backend("10.255.0.3", "t3"), Backend("10.255.0.4", "t4")))}
    assert wanted.vips == {"10.215.0.7": (
        lb_nft.VirtualIP("10.215.0.7", "web", APP, (80, 90)),
        (Backend("10.214.1.1", "t1"), Backend("10.214.1.3", "t3"),
         Backend("10.214.1.4", "t4")))}
    assert wanted.vips["10.215.0.7"][0].ports == (80, 90)  # for the userspace proxy
    assert wanted.overlays == {"10.255.0.0/16": "10.255.0.2", "10.214.1.0/24": "10.214.1.2"}
    # Without the node id: this node is the one that is no peer.
    assert lb_sync.wanted_state(controllers, state) == wanted


def test_wanted_drops_a_local_task_the_manager_wants_stopped_at_once() -> None:
    controllers = {"t1": local_task("t1", "10.213.0.2", app_ip="10.214.1.1", desired=SHUTDOWN),
                   "t2": local_task("t2", "10.213.0.3", app_ip="10.214.1.2", removed=True)}
    state = cluster_state({"t1": "me", "t2": "me", "t3": "other"})  # not updated yet
    wanted = lb_sync.wanted_state(controllers, state, "me")
    assert wanted.services == {"web": (WEB_PORTS, (Backend("10.255.0.3", "t3"),))}
    assert wanted.vips["10.215.0.7"][1] == (Backend("10.214.1.3", "t3"),)


def test_wanted_keeps_a_service_with_no_serving_task_published_so_it_refuses() -> None:
    wanted = lb_sync.wanted_state({}, cluster_state({}), "me")
    assert wanted.services == {"web": (WEB_PORTS, ())}
    assert wanted.vips["10.215.0.7"][1] == ()


def test_wanted_dnsrr_has_no_vip_and_the_ingress_is_found_by_name_too() -> None:
    state = cluster_state({"t3": "other"}, mode="dnsrr", ingress_label=False)
    wanted = lb_sync.wanted_state({}, state, "me")
    assert wanted.vips == {}
    assert wanted.services == {"web": (WEB_PORTS, (Backend("10.255.0.3", "t3"),))}


def test_wanted_skips_remote_tasks_without_an_ingress_address() -> None:
    state = cluster_state({"t3": "other"})
    del state.endpoints[0].tasks[0].networks[0]  # only on "app"
    assert lb_sync.wanted_state({}, state, "me").services == {"web": (WEB_PORTS, ())}


class RecordingLB:
    """A ServiceLB stand-in that records what LBSync asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def services(self) -> dict[str, Any]:
        return {"gone": ([ServicePort("tcp", 7000, 70)], [])}

    def vips(self) -> dict[str, Any]:
        return {}

    def overlays(self) -> dict[str, str]:
        return {}

    def overlays_pending(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def test_lb_sync_applies_the_merged_state_and_removes_what_is_gone() -> None:
    recording = RecordingLB()

    async def run() -> None:
        sync = lb_sync.LBSync(cast(ServiceLB, recording), node_id="me")
        sync.update({"t1": local_task("t1", "10.213.0.2", app_ip="10.214.1.1")})
        sync.update_network(cluster_state({"t3": "other"}))  # coalesced with the above
        await sync.settled()
        first = list(recording.calls)
        assert [name for name, _ in first] == ["set_overlays", "set_service", "remove_service",
                                               "set_vip"]
        assert first[1][1][2] == (Backend("10.213.0.2", "t1"), Backend("10.255.0.3", "t3"))
        recording.calls.clear()
        sync.update_network(cluster_state({"t3": "other"}))  # the same again: nothing to do
        await sync.settled()
        assert recording.calls == []
        sync.update_network(cpb.NetworkState(version=4))
        await sync.settled()
        assert [name for name, _ in recording.calls] == ["set_overlays", "set_service",
                                                         "remove_vip"]

    asyncio.run(run())


def test_lb_sync_waits_for_the_overlays_before_balancing_into_them() -> None:
    recording = RecordingLB()

    async def overlays_ready() -> None:
        recording.calls.append(("networks_ready", ()))

    async def run() -> None:
        sync = lb_sync.LBSync(cast(ServiceLB, recording), node_id="me",
                              networks_ready=overlays_ready)
        sync.update_network(cluster_state({"t3": "other"}))
        await sync.settled()

    asyncio.run(run())
    assert [name for name, _ in recording.calls][:2] == ["networks_ready", "set_overlays"]
