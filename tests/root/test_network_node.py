"""The node network on the real kernel: namespaces, the bridge, NAT and published ports.

Traffic goes only to loopback and to namespaces these tests create. A "client" namespace
stands for another machine: it reaches the host over its own veth pair (198.18.99.0/30), and
serves as an outside destination for the containers' egress NAT.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyswarm.common.errors import Conflict
from pyswarm.common.paths import EngineConfig
from pyswarm.worker.network.node import Attachment, NodeNetwork
from pyswarm.worker.network.ports import PortBinding, parse_publish
from tests.netns_fixtures import client_namespace, sh

pytestmark = pytest.mark.root

BRIDGE, TABLE, SUBNET = "pswtn0", "pyswarm_tnet", "10.213.250.0/24"
CLIENT_NS, CLIENT_VETH = "pswtn-client", "pswtnc0"
HOST_SIDE, CLIENT_SIDE = "198.18.99.1", "198.18.99.2"
A_ID, B_ID = "a1" * 32, "b2" * 32


@pytest.fixture
def cfg(tmp_path: Path) -> EngineConfig:
    return EngineConfig(
        root=tmp_path / "root", run_dir=tmp_path / "run", bridge=BRIDGE, subnet=SUBNET,
        nft_table=TABLE,
    )


@pytest.fixture
def net(cfg: EngineConfig) -> Iterator[NodeNetwork]:
    node = NodeNetwork(cfg)
    try:
        node.setup()
        yield node
    finally:
        node.teardown()
        node.close()


@pytest.fixture
def client() -> Iterator[str]:
    """A namespace wired to the host by a veth pair; yields its netns path."""
    with client_namespace(CLIENT_NS, CLIENT_VETH, HOST_SIDE, CLIENT_SIDE) as path:
        yield path


class Background:
    """A process started in a namespace, killed by its pid."""

    def __init__(self, netns: str, *argv: str) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=5)
        return out


Spawn = Callable[..., Background]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[Background] = []

    def start(netns: str, *argv: str) -> Background:
        started.append(Background(netns, *argv))
        return started[-1]

    yield start
    for bg in started:
        bg.stop()


def httpd(spawn: Spawn, att: Attachment, docroot: Path, text: str) -> None:
    docroot.mkdir(exist_ok=True)
    (docroot / "index.html").write_text(text)
    spawn(att.netns_path, "busybox", "httpd", "-f", "-p", "80", "-h", str(docroot))
    wait_until(lambda: fetch_in(att.netns_path, "127.0.0.1", 80) == text)


def wait_until(ok: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def fetch(host: str, port: int) -> str:
    """HTTP GET / from the host's own namespace; "" on failure."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return ""
    return data.partition(b"\r\n\r\n")[2].decode()


def fetch_in(netns: str, host: str, port: int) -> str:
    """HTTP GET / from inside a namespace ("" on failure). No wget -T: it crashes busybox 1.35."""
    try:
        done = subprocess.run(
            ["nsenter", f"--net={netns}", "busybox", "wget", "-q", "-O", "-",
             f"http://{host}:{port}/"],
            capture_output=True, text=True, timeout=3, check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout


def table_json() -> str:
    return sh("nft", "-j", "list", "table", "ip", TABLE).stdout


# ---- attach / reachability ----------------------------------------------------------


def test_containers_reach_each_other_across_the_bridge(
    net: NodeNetwork, spawn: Spawn, tmp_path: Path
) -> None:
    a, b = net.attach(A_ID), net.attach(B_ID)
    assert a.ip != b.ip and a.gateway == "10.213.250.1" and a.prefixlen == 24
    assert a.veth_host == "pswa1a1a1a1" and os.path.exists(f"/sys/class/net/{a.veth_host}")
    assert Path(a.netns_path) == net.cfg.network_dir / "netns" / A_ID[:12]
    httpd(spawn, b, tmp_path / "www", "hello from b")
    assert fetch_in(a.netns_path, b.ip, 80) == "hello from b"
    links = sh("nsenter", f"--net={a.netns_path}", "ip", "-j", "addr").stdout
    eth0 = next(i for i in json.loads(links) if i["ifname"] == "eth0")
    assert eth0["address"] == a.mac
    assert net.attach(A_ID) == a  # attaching again returns what exists


def test_state_survives_a_new_instance(net: NodeNetwork, cfg: EngineConfig) -> None:
    a = net.attach(A_ID)
    net.publish(A_ID, a.ip, [parse_publish("18080:80")])
    again = NodeNetwork(cfg)
    try:
        again.setup()  # a restarted daemon: idempotent, keeps published ports
        assert again.attach(A_ID) == a
        assert again.published() == {A_ID: [PortBinding(80, 18080)]}
    finally:
        again.close()


def test_attach_and_detach_from_many_threads(net: NodeNetwork) -> None:
    """The daemon calls in from asyncio's thread pool: no forking, no namespace leaks."""
    ids = [f"{i:02x}" * 32 for i in range(8)]
    host_ns = os.stat("/proc/thread-self/ns/net").st_ino
    with ThreadPoolExecutor(8) as pool:
        attachments = list(pool.map(net.attach, ids))
    assert len({a.ip for a in attachments}) == 8
    for att in attachments:
        assert fetch_raw(att.netns_path, att.gateway, 1) == ""  # runs: eth0 and route exist
        addrs = sh("nsenter", f"--net={att.netns_path}", "ip", "-4", "-o", "addr").stdout
        assert f"eth0    inet {att.ip}/24" in addrs

    async def detach_all() -> None:
        await asyncio.gather(*(asyncio.to_thread(net.detach, i) for i in ids))

    asyncio.run(detach_all())
    net.settle()
    assert net.ipam.leases() == {}
    assert not any(os.path.exists(f"/sys/class/net/{a.veth_host}") for a in attachments)
    # Every thread of this process, the netns thread included, is back in the host's namespace.
    threads = {os.stat(f"/proc/self/task/{t}/ns/net").st_ino for t in os.listdir("/proc/self/task")}
    assert threads == {host_ns}


# ---- published ports ----------------------------------------------------------------


def test_published_port_reachable_from_host_and_outside(
    net: NodeNetwork, spawn: Spawn, client: str, tmp_path: Path
) -> None:
    a = net.attach(A_ID)
    httpd(spawn, a, tmp_path / "www", "hello from a")
    assert net.publish(A_ID, a.ip, [parse_publish("18080:80")]) == [PortBinding(80, 18080)]
    assert fetch("127.0.0.1", 18080) == "hello from a"  # route_localnet + masquerade
    assert fetch(a.gateway, 18080) == "hello from a"
    assert fetch(HOST_SIDE, 18080) == "hello from a"  # a node address, from the node
    assert fetch_in(client, HOST_SIDE, 18080) == "hello from a"  # from "another machine"
    b = net.attach(B_ID)
    assert fetch_in(b.netns_path, a.gateway, 18080) == "hello from a"  # hairpin
    assert net.published() == {A_ID: [PortBinding(80, 18080)]}


def test_conflicts_add_nothing(net: NodeNetwork) -> None:
    a, b = net.attach(A_ID), net.attach(B_ID)
    net.publish(A_ID, a.ip, [parse_publish("18080:80")])
    before = table_json()
    taken = f"port 18080/tcp is already published by container {A_ID[:12]}"
    with pytest.raises(Conflict, match=taken):
        net.publish(B_ID, b.ip, [parse_publish("18090:80"), parse_publish("127.0.0.1:18080:81")])
    assert table_json() == before  # all or nothing: 18090 was not added either
    with socket.socket() as held:
        held.bind(("127.0.0.1", 18081))
        held.listen()
        with pytest.raises(Conflict, match="port 18081/tcp is already in use on this node"):
            net.publish(B_ID, b.ip, [parse_publish("18081:80")])
    assert table_json() == before
    # Same port over UDP, or republishing the same binding, is fine.
    udp = net.publish(B_ID, b.ip, [parse_publish("18080:80/udp")])
    assert udp == [PortBinding(80, 18080, "udp")]
    assert net.publish(A_ID, a.ip, [parse_publish("18080:80")]) == [PortBinding(80, 18080)]
    assert len(net.published()[A_ID]) == 1


def test_udp_and_port_zero(net: NodeNetwork, spawn: Spawn) -> None:
    a = net.attach(A_ID)
    echo = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 53))\n"
        "while True:\n"
        "    data, peer = s.recvfrom(100)\n"
        "    s.sendto(data.upper(), peer)\n"
    )
    spawn(a.netns_path, sys.executable, "-c", echo)
    [udp, anyport] = net.publish(A_ID, a.ip, [parse_publish("127.0.0.1::53/udp"),
                                              parse_publish("80")])
    assert udp.host_port > 0 and udp.proto == "udp" and udp.host_ip == "127.0.0.1"
    assert anyport.host_port > 0 and anyport.proto == "tcp"

    def ask() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(b"ping", ("127.0.0.1", udp.host_port))
            try:
                return s.recv(100) == b"PING"
            except OSError:
                return False

    wait_until(ask)


# ---- NAT ----------------------------------------------------------------------------


def test_egress_is_masqueraded(net: NodeNetwork, spawn: Spawn, client: str) -> None:
    a = net.attach(A_ID)
    server = (
        "import socket\n"
        "s = socket.create_server(('0.0.0.0', 9000))\n"
        "c, peer = s.accept()\n"
        "c.sendall(peer[0].encode())\n"
        "c.close()\n"
    )
    spawn(client, sys.executable, "-c", server)
    seen = ""

    def connect() -> bool:
        nonlocal seen
        seen = fetch_raw(a.netns_path, CLIENT_SIDE, 9000)
        return bool(seen)

    wait_until(connect)
    assert seen == HOST_SIDE  # not the container's 10.213.250.x


def fetch_raw(netns: str, host: str, port: int) -> str:
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    c = socket.create_connection(({host!r}, {port}), timeout=1)\n"
        "    print(c.recv(100).decode(), end='')\n"
        "except OSError:\n"
        "    pass\n"
    )
    done = subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=10, check=False)
    return done.stdout


# ---- removal ------------------------------------------------------------------------


def test_detach_removes_everything_of_the_container(net: NodeNetwork) -> None:
    a = net.attach(A_ID)
    net.publish(A_ID, a.ip, [parse_publish("18080:80"), parse_publish("18053:53/udp")])
    net.detach(A_ID)
    net.settle()
    assert not os.path.exists(f"/sys/class/net/{a.veth_host}")
    assert not os.path.exists(a.netns_path)
    assert A_ID not in table_json()
    assert A_ID not in net.ipam.leases()
    assert net.published() == {}
    net.detach(A_ID)  # idempotent
    b = net.attach(B_ID)
    net.publish(B_ID, b.ip, [parse_publish("18080:80")])  # the port is free again


def test_teardown_leaves_nothing(cfg: EngineConfig) -> None:
    node = NodeNetwork(cfg)
    try:
        node.setup()
        a = node.attach(A_ID)
        node.publish(A_ID, a.ip, [parse_publish("18080:80")])
    finally:
        node.teardown()
        node.close()
    assert not os.path.exists(f"/sys/class/net/{BRIDGE}")
    assert not os.path.exists(f"/sys/class/net/{a.veth_host}")
    assert sh("nft", "list", "table", "ip", TABLE, check=False).returncode != 0
    assert not (cfg.network_dir / "netns").exists()
    assert str(cfg.network_dir) not in Path("/proc/self/mountinfo").read_text()
