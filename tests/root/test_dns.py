"""The node's service DNS and overlay attachments, end to end on the real kernel.

An in-process engine (runtime with its zygote, image store, node network; the daemon's
parts without its gRPC front) runs real busybox containers created as the agent creates a
task's: ``overlays`` (eth1 on an overlay of this node), ``dns`` (the node's service DNS on
the bridge gateway) and ``extra_hosts``. An ``OverlaySync`` fed a NetworkState made here
programs the overlay and the names; names that are not the cluster's go to a fake upstream
nameserver on 127.0.0.1. Traffic stays on loopback and this test's own namespaces.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from pyswarm.common.paths import EngineConfig
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import engine_pb2 as epb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.records import ContainerRecord, OverlayRecord
from pyswarm.worker.images.store import ImageStore
from pyswarm.worker.network.dns import Upstream
from pyswarm.worker.network.node import NodeNetwork
from pyswarm.worker.network.overlay import MTU
from pyswarm.worker.network.overlay_sync import OverlaySync
from pyswarm.worker.runtime.runtime import Runtime
from pyswarm.worker.runtime.spec import ProcessSpec
from tests.engine_fixtures import RUN_TOKEN
from tests.netns_fixtures import sh

pytestmark = pytest.mark.root

T = TypeVar("T")
TOK = f"{RUN_TOKEN:03x}"


def _slot_net(index: int) -> str:
    """A /24 of engine_env's scheme (slots 12-13 of this run: no daemon of the suite's)."""
    slot = (RUN_TOKEN * 16 + index) % 4096
    return f"10.{216 + slot // 256}.{slot % 256}"


BRIDGE_NET, OVERLAY_NET, OTHER_NET = _slot_net(12), _slot_net(13), "10.214.250"
NET_ID, OTHER_ID, VNI = "dnsnet", "othernet", 0x700000 + RUN_TOKEN
APPLETS = "sh cat sleep nslookup ip".split()
UPSTREAM_ANSWER = "203.0.113.7"  # only ever data in a DNS answer: nothing is sent there


@dataclass
class Node:
    cfg: EngineConfig
    runtime: Runtime
    engine: Engine
    network: NodeNetwork
    sync: OverlaySync
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


class FakeUpstream:
    """A nameserver on 127.0.0.1 answering every A question with UPSTREAM_ANSWER, except
    names starting with ``silent`` (no answer at all)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                wire, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(wire)
            name = q.question[0].name.to_text(omit_final_dot=True)
            self.asked.append(name)
            if name.startswith("silent"):
                continue
            reply = dns.message.make_response(q)
            reply.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A",
                                                    UPSTREAM_ANSWER))
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


def busybox_image(images: ImageStore, tmp: Path) -> None:
    layer = tmp / "layer"
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        (layer / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/busybox", layer / "bin/busybox")
    for applet in APPLETS:
        (layer / "bin" / applet).symlink_to("busybox")
    (layer / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (layer / "etc/group").write_text("root:x:0:\n")
    images.create_image(None, [layer], container_config={"Cmd": ["sh"]}, ref="dnsbox:latest")


def network_state(gateway_peer: str = "") -> cpb.NetworkState:
    s = cpb.NetworkState(version=1)
    s.networks.add(id=NET_ID, spec=opb.NetworkSpec(name="stack_default"),
                   subnet=f"{OVERLAY_NET}.0/24", vni=VNI)
    s.node_attachments.add(network_id=NET_ID, addresses=[f"{OVERLAY_NET}.2/24"])
    web = s.endpoints.add(service_id="s-web", service_name="stack_web", aliases=["web"],
                          mode="vip")
    web.vips.add(network_id=NET_ID, addr="10.215.0.42")
    for slot, ip in ((1, 5), (2, 6)):
        task = web.tasks.add(task_id=f"t{slot}", name=f"stack_web.{slot}")
        task.networks.add(network_id=NET_ID, addresses=[f"{OVERLAY_NET}.{ip}/24"])
    db = s.endpoints.add(service_id="s-db", service_name="stack_db", mode="dnsrr")
    db.tasks.add(task_id="d1", name="stack_db.1").networks.add(
        network_id=NET_ID, addresses=[f"{OVERLAY_NET}.7/24"])
    hidden = s.endpoints.add(service_id="s-h", service_name="hidden", mode="vip")
    hidden.vips.add(network_id=OTHER_ID, addr="10.215.0.43")
    return s


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("dns")
    cfg = EngineConfig(root=tmp / "root", run_dir=tmp / "run", bridge=f"pswd{TOK}",
                       subnet=f"{BRIDGE_NET}.0/24", nft_table=f"pyswarm_td{TOK}",
                       cgroup_parent=f"pyswarm-tdns{TOK}")
    runtime = Runtime()
    runtime.start()  # the zygote first, before this fixture's threads
    network = NodeNetwork(cfg)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    engine: Engine | None = None
    try:
        network.setup()
        images = ImageStore(cfg.images_dir)
        busybox_image(images, tmp)
        engine = Engine(cfg, runtime, images, network)
        loop_thread.start()

        async def make_sync() -> OverlaySync:
            return OverlaySync(network, upstreams=[Upstream("127.0.0.1", upstream.port)])

        sync = asyncio.run_coroutine_threadsafe(make_sync(), loop).result()
        yield Node(cfg, runtime, engine, network, sync, loop)
        loop.call_soon_threadsafe(sync.close)
    finally:
        if engine is not None:
            for record in engine.list(all=True):
                engine.remove(record.id, force=True, volumes=True)
        network.teardown()
        network.close()
        loop.call_soon_threadsafe(loop.stop)
        if loop_thread.is_alive():
            loop_thread.join(timeout=10)
        loop.close()
        runtime.close()
        for d in runtime.driver.dirs(cfg.cgroup_parent):
            try:
                os.rmdir(d)
            except OSError:
                pass


def applied(node: Node, state: cpb.NetworkState) -> None:
    async def go() -> None:
        node.sync.update(state)
        await node.sync.settled()

    node.run(go())
    assert node.sync.last_error == ""


def exec_in(node: Node, record: ContainerRecord, *args: str) -> tuple[int, str]:
    proc = node.runtime.exec(str(node.engine.bundle(record.id)), ProcessSpec(args=args),
                             stdin=False)
    try:
        out = b""
        while chunk := os.read(proc.stdout, 65536):
            out += chunk
        return proc.wait(), out.decode(errors="replace")
    finally:
        proc.close()


def resolve(node: Node, record: ContainerRecord, name: str) -> tuple[int, str]:
    """busybox nslookup inside the container, through its own /etc/resolv.conf."""
    return exec_in(node, record, "nslookup", name)


def create(node: Node, name: str, overlay_ip: int) -> ContainerRecord:
    return node.engine.create(epb.CreateContainerRequest(
        image="dnsbox:latest", name=name, cmd=["sleep", "300"], network="bridge",
        overlays=[epb.OverlayAttachment(network_id=NET_ID,
                                        address=f"{OVERLAY_NET}.{overlay_ip}/24")],
        dns=[node.network.service_dns], extra_hosts=["registry.local:192.0.2.10"]))


def test_task_container_on_an_overlay_resolves_service_names(
    node: Node, upstream: FakeUpstream
) -> None:
    applied(node, network_state())
    gateway = str(node.network.gateway.ip)
    assert node.network.service_dns == gateway
    record = create(node, "stack_web.1.t1", 5)
    assert record.overlays == [OverlayRecord(NET_ID, f"{OVERLAY_NET}.5/24", "eth1")]

    netns = node.network.attachment(record.id)
    assert netns is not None
    addr = sh("nsenter", f"--net={netns.netns_path}", "ip", "-o", "-4", "addr", "show",
              "eth1").stdout
    assert f"inet {OVERLAY_NET}.5/24" in addr
    link = sh("nsenter", f"--net={netns.netns_path}", "ip", "-o", "link", "show", "eth1").stdout
    assert f"mtu {MTU}" in link
    # The container reaches this node's own address on the overlay through eth1.
    code, _ = exec_in(node, record, "sh", "-c", f"ip route get {OVERLAY_NET}.2")
    assert code == 0

    code, resolv = exec_in(node, record, "cat", "/etc/resolv.conf")
    assert resolv.split() == ["nameserver", gateway]
    _, hosts = exec_in(node, record, "cat", "/etc/hosts")
    assert "192.0.2.10\tregistry.local" in hosts.splitlines()

    code, out = resolve(node, record, "stack_web")
    assert code == 0 and "10.215.0.42" in out, out
    code, out = resolve(node, record, "WEB")
    assert code == 0 and "10.215.0.42" in out, out
    code, out = resolve(node, record, "tasks.web")
    assert code == 0 and f"{OVERLAY_NET}.5" in out and f"{OVERLAY_NET}.6" in out, out
    code, out = resolve(node, record, "stack_db")
    assert code == 0 and f"{OVERLAY_NET}.7" in out, out
    code, out = resolve(node, record, "stack_web.2")
    assert code == 0 and f"{OVERLAY_NET}.6" in out, out
    code, out = resolve(node, record, "hidden")  # on a network this container is not on
    assert code != 0 and "10.215.0.43" not in out, out
    assert "hidden" not in upstream.asked

    code, out = resolve(node, record, "example.test")  # not the cluster's: forwarded
    assert code == 0 and UPSTREAM_ANSWER in out, out
    assert "example.test" in upstream.asked

    # A restarted daemon's engine finds the container with its overlay record.
    again = ContainerRecord.load(node.engine.bundle(record.id))
    assert again.overlays == record.overlays and again.dns == [gateway]

    node.engine.remove(record.id, force=True)
    node.network.settle()
    assert node.network.networks_of(record.ip_address) == ()
    links = sh("ip", "-o", "link", "show").stdout
    assert f"psv{record.id[:8]}1" not in links


def test_names_follow_the_state_and_silence_upstream_is_servfail(
    node: Node, upstream: FakeUpstream
) -> None:
    applied(node, network_state())
    record = create(node, "stack_web.2.t2", 6)
    gateway = str(node.network.gateway.ip)
    netns = node.network.attachment(record.id)
    assert netns is not None

    def ask(name: str, tcp: bool = False) -> dns.message.Message:
        """From the container's namespace (its eth0 address is what identifies it)."""
        q = dns.message.make_query(name, "A")
        mode = "tcp" if tcp else "udp"
        script = ("import sys, dns.message, dns.query; "
                  "q = dns.message.from_wire(bytes.fromhex(sys.argv[1])); "
                  f"r = dns.query.{mode}(q, sys.argv[2], timeout=8); "
                  "print(r.to_wire().hex())")
        done = subprocess.run(["nsenter", f"--net={netns.netns_path}", sys.executable, "-c",
                               script, q.to_wire().hex(), gateway],
                              capture_output=True, text=True, timeout=20, check=True)
        return dns.message.from_wire(bytes.fromhex(done.stdout.strip()))

    reply = ask("web", tcp=True)
    assert [r.to_text() for r in reply.answer[0]] == ["10.215.0.42"]
    assert reply.answer[0].ttl == 0

    # A new state: the service moved to another VIP; answers change at once.
    state = network_state()
    state.endpoints[0].vips[0].addr = "10.215.0.99"
    applied(node, state)
    assert [r.to_text() for r in ask("web").answer[0]] == ["10.215.0.99"]

    silent = ask("silent.example.test")
    assert silent.rcode() == dns.rcode.SERVFAIL and "silent.example.test" in upstream.asked
    node.engine.remove(record.id, force=True)
