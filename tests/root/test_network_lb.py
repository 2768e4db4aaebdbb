"""The service load balancer on the real kernel: nftables numgen DNAT and the userspace proxy.

Three "containers" (namespaces attached to a test bridge) run ``busybox httpd`` serving a page
that names them. Traffic goes only to loopback and to namespaces these tests create: a
"client" namespace stands for another machine, reaching the host over a veth pair
(a /30 of 198.19.0.0/16 unique to the run).
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyswarm.common.errors import Conflict
from pyswarm.common.paths import EngineConfig
from pyswarm.worker.network.lb import Backend, ServiceLB, ServicePort
from pyswarm.worker.network.node import Attachment, NodeNetwork
from pyswarm.worker.network.ports import parse_publish
from tests.engine_fixtures import RUN_TOKEN
from tests.netns_fixtures import client_namespace, sh

pytestmark = pytest.mark.root

# Unique to this test run (two runs on one machine must not tear down each other's).
_SLOT = (RUN_TOKEN * 16 + 15) % 4096  # engine_env's slot 15, which no daemon of ours uses
BRIDGE, TABLE = f"pswtl{RUN_TOKEN:03x}", f"pyswarm_tlb{RUN_TOKEN:03x}"
SUBNET_PREFIX = f"10.{216 + _SLOT // 256}.{_SLOT % 256}."
SUBNET = SUBNET_PREFIX + "0/24"
CLIENT_NS, CLIENT_VETH = f"pswtl-client{RUN_TOKEN:03x}", f"pswtlc{RUN_TOKEN:03x}"
# test_lb_cluster.py takes .0/30 and .4/30 of the same /24.
HOST_SIDE, CLIENT_SIDE = f"198.19.{RUN_TOKEN % 256}.9", f"198.19.{RUN_TOKEN % 256}.10"
IDS = ["c0" * 32, "c1" * 32, "c2" * 32]
NAMES = ["backend-0", "backend-1", "backend-2"]
PORT = 18180
WEB = [ServicePort("tcp", PORT, 80)]
UPORT = 18190
UWEB = [ServicePort("tcp", UPORT, 80)]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NodeNetwork]:
    cfg = EngineConfig(root=tmp_path / "root", run_dir=tmp_path / "run", bridge=BRIDGE,
                       subnet=SUBNET, nft_table=TABLE)
    node = NodeNetwork(cfg)
    try:
        node.setup()
        yield node
    finally:
        node.teardown()  # deletes the whole table, the LB's chains with it
        node.close()


@pytest.fixture
def client() -> Iterator[str]:
    """A namespace wired to the host by a veth pair; yields its netns path."""
    with client_namespace(CLIENT_NS, CLIENT_VETH, HOST_SIDE, CLIENT_SIDE) as path:
        yield path


class Procs:
    """Processes started in namespaces, killed by their pids at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, netns: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["nsenter", f"--net={netns}", *argv], text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in self.started:
            self.stop(proc)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.stop_all()


# Run inside a namespace (or on the host): N sequential HTTP GETs, one JSON list of bodies
# ("" for a failed connection, "refused" for ECONNREFUSED); "raw": read what the server says.
_GET_MANY = """
import json, socket, sys
host, port, n, raw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "raw"
out = []
for _ in range(n):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            if not raw:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        out.append(data.decode() if raw else data.partition(b"\\r\\n\\r\\n")[2].decode())
    except ConnectionRefusedError:
        out.append("refused")
    except OSError:
        out.append("")
print(json.dumps(out))
"""

# Run inside a backend: answer each connection with the peer's address, then close.
_PEER_ECHO = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""


def get_many(
    host: str, port: int, n: int, netns: str | None = None, *, raw: bool = False
) -> list[str]:
    argv = [sys.executable, "-c", _GET_MANY, host, str(port), str(n), "raw" if raw else "get"]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def wait_until(ok: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_backends(net: NodeNetwork, procs: Procs, tmp_path: Path) -> list[Attachment]:
    atts = []
    for cid, name in zip(IDS, NAMES, strict=True):
        att = net.attach(cid)
        www = tmp_path / name
        www.mkdir()
        (www / "index.html").write_text(name)
        procs.start(att.netns_path, "busybox", "httpd", "-f", "-p", "80", "-h", str(www))

        def serving(a: Attachment = att, n: str = name) -> bool:
            return get_many("127.0.0.1", 80, 1, a.netns_path) == [n]

        wait_until(serving)
        atts.append(att)
    return atts


def backends_of(atts: list[Attachment]) -> list[Backend]:
    return [Backend(a.ip, f"task{i}") for i, a in enumerate(atts)]


def spread(answers: list[str]) -> Counter[str]:
    return Counter(answers)


def assert_spread(answers: list[str], names: list[str]) -> None:
    seen = spread(answers)
    assert set(seen) == set(names), seen  # only these answered, and each at least once
    assert sum(seen.values()) == len(answers)


MakeLB = Callable[..., ServiceLB]


@pytest.fixture
def make_lb(net: NodeNetwork) -> Iterator[MakeLB]:
    """ServiceLBs on the test network, closed (their held ports let go of) at the end."""
    made: list[ServiceLB] = []

    def make(**kwargs: object) -> ServiceLB:
        made.append(ServiceLB(net, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for lb in made:
        lb.close()


@pytest.fixture
def backends(net: NodeNetwork, procs: Procs, tmp_path: Path) -> list[Attachment]:
    return start_backends(net, procs, tmp_path)


# ---- nftables -----------------------------------------------------------------------


def test_spread_over_backends_from_everywhere(
    make_lb: MakeLB, net: NodeNetwork, backends: list[Attachment], client: str
) -> None:
    lb = make_lb(mode="nftables")
    assert lb.mode == "nftables"
    lb.set_service("web", WEB, backends_of(backends))
    gateway = backends[0].gateway
    origins = {
        "client netns -> host side": get_many(HOST_SIDE, PORT, 30, client),
        "host -> 127.0.0.1": get_many("127.0.0.1", PORT, 30),
        "host -> gateway": get_many(gateway, PORT, 30),
        # hairpin: backend-0 reaching the service is sometimes its own backend
        "container -> gateway": get_many(gateway, PORT, 30, backends[0].netns_path),
    }
    for origin, answers in origins.items():
        print(origin, dict(spread(answers)))
        assert_spread(answers, NAMES)
        # numgen inc: strict turns, 30 sequential connections over 3 backends = 10 each
        assert set(spread(answers).values()) == {10}, origin


def test_backend_sees_client_address_without_masquerade(
    make_lb: MakeLB, net: NodeNetwork, procs: Procs, client: str
) -> None:
    atts = [net.attach(cid) for cid in IDS[:2]]
    for att in atts:
        procs.start(att.netns_path, sys.executable, "-c", _PEER_ECHO, "80")
    lb = make_lb(mode="nftables")
    lb.set_service("echo", WEB, backends_of(atts))
    gateway = atts[0].gateway

    def peers(host: str, netns: str | None = None) -> set[str]:
        return set(get_many(host, PORT, 4, netns, raw=True))

    # Both echo servers listening (a refused connection means one is still starting).
    wait_until(lambda: all(p.startswith(SUBNET_PREFIX) for p in peers(gateway)))
    assert peers(HOST_SIDE, client) == {CLIENT_SIDE}  # the real client address: DNAT only
    assert peers("127.0.0.1") == {gateway}  # loopback is masqueraded
    assert peers(gateway, atts[0].netns_path) == {gateway}  # hairpin is masqueraded


def test_changing_backends_and_removing(
    make_lb: MakeLB, net: NodeNetwork, backends: list[Attachment], client: str
) -> None:
    lb = make_lb(mode="nftables")
    every = backends_of(backends)
    lb.set_service("web", WEB, every)
    lb.set_service("web", WEB, every[:2])
    assert lb.services() == {"web": (WEB, every[:2])}
    answers = get_many("127.0.0.1", PORT, 30) + get_many(HOST_SIDE, PORT, 30, client)
    assert_spread(answers, NAMES[:2])  # never backend-2
    # Zero backends: refused at once (a TCP reset), from the host and from outside.
    lb.set_service("web", WEB, [])
    assert lb.services() == {"web": (WEB, [])}
    started = time.monotonic()
    assert get_many("127.0.0.1", PORT, 3) == ["refused"] * 3
    assert get_many(HOST_SIDE, PORT, 3, client) == ["refused"] * 3
    assert get_many(backends[0].gateway, PORT, 3, backends[0].netns_path) == ["refused"] * 3
    assert time.monotonic() - started < 3  # no hang on a dropped SYN
    # Back again, then removed: the port is closed and nothing of the service is left.
    lb.set_service("web", WEB, every[2:])
    assert get_many("127.0.0.1", PORT, 3) == [NAMES[2]] * 3
    lb.remove_service("web")
    assert lb.services() == {}
    assert get_many("127.0.0.1", PORT, 2) == ["refused"] * 2
    assert "web" not in sh("nft", "list", "table", "ip", TABLE).stdout
    lb.remove_service("web")  # idempotent


def test_services_are_read_back_and_leave_others_alone(
    make_lb: MakeLB, net: NodeNetwork, backends: list[Attachment]
) -> None:
    lb = make_lb(mode="nftables")
    every = backends_of(backends)
    dns = [ServicePort("udp", 18153, 53), ServicePort("tcp", 18153, 53)]
    lb.set_service("web", WEB, every)
    lb.set_service("dns", dns, every[:1])
    # A container's -p next to the services.
    net.publish(IDS[2], backends[2].ip, [parse_publish("18181:80")])
    # A restarted daemon: setup() again and a new ServiceLB find everything in the kernel.
    lb.close()
    net.setup()
    again = make_lb(mode="nftables")
    assert again.services() == {"web": (WEB, every), "dns": (dns, every[:1])}
    assert_spread(get_many("127.0.0.1", PORT, 9), NAMES)
    assert get_many("127.0.0.1", 18181, 1) == [NAMES[2]]
    before = sh("nft", "list", "table", "ip", TABLE).stdout
    again.set_service("web", WEB, every)  # idempotent: nothing changes
    assert sh("nft", "list", "table", "ip", TABLE).stdout == before
    again.remove_service("dns")
    assert set(again.services()) == {"web"}
    assert net.published() == {IDS[2]: [parse_publish("18181:80")]}
    again.clear()
    assert again.services() == {}
    assert get_many("127.0.0.1", 18181, 1) == [NAMES[2]]  # the container's port still works


def test_conflicts_change_nothing(make_lb: MakeLB, net: NodeNetwork) -> None:
    att = net.attach(IDS[0])
    lb = make_lb(mode="nftables")
    net.publish(IDS[0], att.ip, [parse_publish("127.0.0.1:18181:80")])
    lb.set_service("web", WEB, [Backend(att.ip, "t")])
    before = sh("nft", "list", "table", "ip", TABLE).stdout
    with pytest.raises(Conflict, match=f"port 18181/tcp is already published by container "
                                        f"{IDS[0][:12]}"):
        lb.set_service("api", [ServicePort("tcp", 18182, 80), ServicePort("tcp", 18181, 80)],
                       [Backend(att.ip, "t")])
    with pytest.raises(Conflict, match=f"port {PORT}/tcp is already published by service web"):
        lb.set_service("api", [ServicePort("tcp", PORT, 80)], [])
    # A host process on the port: the DNAT would shadow it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 18183))
        held.listen()
        with pytest.raises(Conflict, match="port 18183/tcp is already in use on this node"):
            lb.set_service("api", [ServicePort("tcp", 18183, 80)], [])
    assert sh("nft", "list", "table", "ip", TABLE).stdout == before
    # The other way round: a container's -p on a service's port (the LB holds the port).
    with pytest.raises(Conflict, match=f"port {PORT}/tcp is already in use on this node"):
        net.publish(IDS[0], att.ip, [parse_publish(f"{PORT}:80")])
    lb.set_service("api", [ServicePort("udp", PORT, 80)], [])  # another protocol is free
    lb.remove_service("web")
    net.publish(IDS[0], att.ip, [parse_publish(f"{PORT}:80")])  # the port is free again


def test_udp_spread(make_lb: MakeLB, net: NodeNetwork, procs: Procs) -> None:
    echo = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 53))\n"
        "while True:\n"
        "    data, peer = s.recvfrom(100)\n"
        "    s.sendto(sys.argv[1].encode(), peer)\n"
    )
    atts = [net.attach(cid) for cid in IDS[:2]]
    for att, name in zip(atts, NAMES, strict=False):
        procs.start(att.netns_path, sys.executable, "-c", echo, name)
    lb = make_lb(mode="nftables")
    lb.set_service("dns", [ServicePort("udp", 18153, 53)], backends_of(atts))

    def ask(tries: int = 1) -> str:
        """One backend's name; a datagram lost on a loaded machine is asked again, in a new
        flow (a CI run once lost one of ten within its 0.5 s)."""
        for _ in range(tries):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new flow
                s.settimeout(0.5)
                s.sendto(b"?", ("127.0.0.1", 18153))
                try:
                    return s.recv(100).decode()
                except OSError:
                    continue
        return ""

    wait_until(lambda: ask() != "")
    assert_spread([ask(tries=3) for _ in range(10)], NAMES[:2])


def test_set_service_latency(make_lb: MakeLB) -> None:
    """Median time of set_service for 10 backends (the backend set changes each call)."""
    lb = make_lb(mode="nftables")
    ports = [ServicePort("tcp", PORT, 80), ServicePort("udp", PORT, 53)]
    times = []
    for i in range(30):
        backends = [Backend(f"{SUBNET_PREFIX}{10 + i + j}", f"task{i}-{j}") for j in range(10)]
        started = time.perf_counter()
        lb.set_service("web", ports, backends)
        times.append(time.perf_counter() - started)
    median_ms = statistics.median(times) * 1000
    print(f"set_service, 10 backends, 2 ports: median {median_ms:.2f} ms, "
          f"max {max(times) * 1000:.2f} ms")
    assert median_ms < 50


# ---- userspace ----------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as the agent's would."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_userspace_proxy(
    make_lb: MakeLB, backends: list[Attachment], procs: Procs, loop: asyncio.AbstractEventLoop
) -> None:
    # A port of its own: its connections' TIME_WAIT and conntrack leftovers stay apart.
    lb = make_lb(mode="userspace", loop=loop)
    assert lb.mode == "userspace"
    every = backends_of(backends)
    lb.set_service("web", UWEB, every)
    wait_until(lambda: get_many("127.0.0.1", UPORT, 1)[0] in NAMES)
    answers = get_many("127.0.0.1", UPORT, 30)
    assert_spread(answers, NAMES)
    assert set(spread(answers).values()) == {10}  # round robin
    assert_spread(get_many(backends[0].gateway, UPORT, 9, backends[0].netns_path), NAMES)
    # A backend that stopped answering is skipped: every connection still gets a page.
    for proc in procs.started[2:3]:
        procs.stop(proc)
    assert_spread(get_many("127.0.0.1", UPORT, 30), NAMES[:2])
    lb.set_service("web", UWEB, every[:1])
    assert get_many("127.0.0.1", UPORT, 5) == [NAMES[0]] * 5
    with pytest.raises(Conflict, match=f"port {UPORT}/tcp is already published by service web"):
        lb.set_service("api", UWEB, every)
    lb.set_service("web", UWEB, [])
    wait_until(lambda: get_many("127.0.0.1", UPORT, 1) == ["refused"])
    assert lb.services() == {"web": (UWEB, [])}
    lb.set_service("web", UWEB, every[1:2])
    wait_until(lambda: get_many("127.0.0.1", UPORT, 1) == [NAMES[1]])
    lb.remove_service("web")
    wait_until(lambda: get_many("127.0.0.1", UPORT, 1) == ["refused"])
    assert lb.services() == {}
    # A port held by another process.
    with socket.socket() as held:
        held.bind(("127.0.0.1", UPORT + 1))
        held.listen()
        with pytest.raises(Conflict, match=f"port {UPORT + 1}/tcp is already in use"):
            lb.set_service("api", [ServicePort("tcp", UPORT + 1, 80)], every)
    assert lb.services() == {}
