"""The routing mesh and service VIPs across two nodes, on the real kernel.

Two nodes are two network namespaces made here, each running the real node network, load
balancer and ``LBSync`` in a driver process of its own (``_NODE``), fed the local tasks and
a ``NetworkState`` built by the test. The overlay is someone else's work: here a plain
bridge in each node (``ovbr``, holding the node's ingress address, as the overlay's bridge
does) joined to the other node's by a veth pair stands in for VXLAN. The rules only rely on
a route to the remote task's address and on the node's own address on the overlay.

::

    host (the client) 198.19.X.1 ── eth0 198.19.X.2  node A           node B  198.19.X.6 eth0
                                     pswnode 10.213.9.1/24             pswnode 10.213.9.1/24
                                       ├─ task-a eth0 .2                 └─ task-b eth0 .2
                                       └─ container eth0 .3 (VIP client)
                                     ovbr 10.255.9.2/24 ══ veth ══ ovbr 10.255.9.3/24
                                       └─ task-a eth1 .10                └─ task-b eth1 .11

Each task runs a responder that answers "<its name> <the peer address it sees>".
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from tests.engine_fixtures import RUN_TOKEN
from tests.netns_fixtures import client_namespace, sh

pytestmark = pytest.mark.root

TOKEN = f"{RUN_TOKEN:03x}"
OCTET = RUN_TOKEN % 256
A_HOST, A_ADDR = f"198.19.{OCTET}.1", f"198.19.{OCTET}.2"
B_HOST, B_ADDR = f"198.19.{OCTET}.5", f"198.19.{OCTET}.6"
INGRESS_ID, SUBNET = "ingressnet", "10.255.9.0/24"
NODE_OVERLAY = {"A": "10.255.9.2", "B": "10.255.9.3"}
TASK_OVERLAY = {"task-a": "10.255.9.10", "task-b": "10.255.9.11"}
VIP = "10.215.0.9"
PORT = 18280  # published; the tasks listen on 80

# The node: a NodeNetwork + ServiceLB + LBSync, driven by JSON lines on stdin.
_NODE = r"""
import asyncio, base64, json, sys
from pathlib import Path
from types import SimpleNamespace
from pyswarm.common.paths import EngineConfig
from pyswarm.proto import cluster_pb2 as cpb, objects_pb2 as opb
from pyswarm.worker.agent.lb_sync import LBSync
from pyswarm.worker.network.lb import ServiceLB
from pyswarm.worker.network.node import NodeNetwork

base, node_id, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
S = opb.TaskState

def controller(t):
    task = opb.Task(id=t["id"], service_id=t["service"], node_id=node_id,
                    desired_state=S.Value("TASK_STATE_" + t["desired"].upper()))
    for proto, published, target in t["ports"]:
        task.endpoint.ports.add(protocol=proto, published_port=published, target_port=target)
    for net, cidr in t["networks"].items():
        task.networks.add(network_id=net, addresses=[cidr])
    return SimpleNamespace(task=task, status=opb.TaskStatus(state=S.TASK_STATE_RUNNING),
                           removed=False, container=SimpleNamespace(ip_address=t["ip"]))

def show(lb):
    return {"services": {k: repr(v) for k, v in lb.services().items()},
            "vips": {k: repr(v) for k, v in lb.vips().items()}, "overlays": lb.overlays()}

async def main():
    cfg = EngineConfig(root=base / "root", run_dir=base / "run", bridge="pswnode",
                       subnet="10.213.9.0/24", nft_table="pyswarm")
    net = NodeNetwork(cfg)
    await asyncio.to_thread(net.setup)
    lb = ServiceLB(net, mode=mode)
    sync = LBSync(lb, node_id=node_id)
    loop = asyncio.get_running_loop()
    print(json.dumps({"mode": lb.mode}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        if cmd["op"] == "attach":
            att = await asyncio.to_thread(net.attach, cmd["id"])
            out = {"ip": att.ip, "netns": att.netns_path}
        elif cmd["op"] == "sync":
            sync.update({t["id"]: controller(t) for t in cmd["tasks"]})
            if cmd["state"] is not None:
                sync.update_network(cpb.NetworkState.FromString(base64.b64decode(cmd["state"])))
            await sync.settled()
            out = show(lb)
        else:
            break
        print(json.dumps(out), flush=True)
    try:
        lb.close()
    finally:
        await asyncio.to_thread(net.teardown)
        net.close()

asyncio.run(main())
"""

# In a task: answer each connection with "<name> <peer address>", then close.
_RESPONDER = """
import socket, sys
s = socket.create_server(("0.0.0.0", 80))
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[1]} {peer[0]}".encode())
    c.close()
"""

# N sequential connections; one JSON list of answers ("refused" for ECONNREFUSED, "" for
# anything else, e.g. a timeout).
_ASK = """
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            data = b""
            while chunk := s.recv(100):
                data += chunk
        out.append(data.decode())
    except ConnectionRefusedError:
        out.append("refused")
    except OSError:
        out.append("")
print(json.dumps(out))
"""


def ask(host: str, port: int, n: int, netns: str | None = None) -> list[str]:
    argv = [sys.executable, "-c", _ASK, host, str(port), str(n)]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(done.stdout))


@dataclass
class Node:
    name: str  # "A" | "B"
    netns: str  # path
    proc: subprocess.Popen[str]
    mode: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    container: str = ""  # a container's netns path, on node A

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"node {self.name} driver died (exit {self.proc.poll()})"
        return dict(json.loads(line))

    def sync(self, state: cpb.NetworkState | None) -> dict[str, Any]:
        encoded = base64.b64encode(state.SerializeToString()).decode() if state else None
        return self.call(op="sync", tasks=list(self.tasks.values()), state=encoded)


def network_state(node: str, tasks: dict[str, str], *, vip: bool = True) -> cpb.NetworkState:
    """What the manager would send ``node``: service "web" with the tasks named (task ->
    node), on the ingress overlay, published on PORT, with VIP on it."""
    other = "B" if node == "A" else "A"
    state = cpb.NetworkState(version=1)
    state.peers.add(node_id=other, addr=A_ADDR if other == "A" else B_ADDR, ready=True)
    state.networks.add(id=INGRESS_ID, spec=opb.NetworkSpec(name="ingress", driver="overlay"),
                       subnet=SUBNET)
    state.node_attachments.add(network_id=INGRESS_ID, addresses=[f"{NODE_OVERLAY[node]}/24"])
    ep = state.endpoints.add(service_id="web", service_name="web", mode="vip")
    ep.ports.add(protocol="tcp", target_port=80, published_port=PORT,
                 publish_mode=opb.PUBLISH_MODE_INGRESS)
    if vip:
        ep.vips.add(network_id=INGRESS_ID, addr=VIP)
    for task, on in tasks.items():
        t = ep.tasks.add(task_id=task, node_id=on, name=f"web.{task}")
        t.networks.add(network_id=INGRESS_ID, addresses=[f"{TASK_OVERLAY[task]}/24"])
    return state


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Node]]:
    mode = request.param
    started: list[subprocess.Popen[str]] = []
    nodes: dict[str, Node] = {}
    with (client_namespace(f"pswlbA{TOKEN}", f"pswla{TOKEN}", A_HOST, A_ADDR) as ns_a,
          client_namespace(f"pswlbB{TOKEN}", f"pswlb{TOKEN}", B_HOST, B_ADDR) as ns_b):
        try:
            # The overlay stand-in: a bridge per node holding its address, joined by a veth.
            sh("ip", "-n", f"pswlbA{TOKEN}", "link", "add", "ovlink", "type", "veth", "peer",
               "name", "ovlink", "netns", f"pswlbB{TOKEN}")
            for name, path in (("A", ns_a), ("B", ns_b)):
                n = ["ip", "-n", f"pswlb{name}{TOKEN}"]
                sh(*n, "link", "add", "ovbr", "type", "bridge")
                sh(*n, "addr", "add", f"{NODE_OVERLAY[name]}/24", "dev", "ovbr")
                sh(*n, "link", "set", "ovlink", "master", "ovbr", "up")
                sh(*n, "link", "set", "ovbr", "up")
                proc = subprocess.Popen(
                    ["nsenter", f"--net={path}", sys.executable, "-c", _NODE,
                     str(tmp_path / name), name, mode],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                started.append(proc)
                node = Node(name, path, proc, mode)
                assert proc.stdout is not None
                assert json.loads(proc.stdout.readline()) == {"mode": mode}
                nodes[name] = node
            # VIP traffic that no rule takes must still have somewhere to go (as a default
            # route would give it), so that only the refusal rule stands between a client
            # and a hang: a veth pair in node A where nothing answers.
            n = ["ip", "-n", f"pswlbA{TOKEN}"]
            sh(*n, "link", "add", "vipsink", "type", "veth", "peer", "name", "vipsink1")
            sh(*n, "link", "set", "vipsink", "up")
            sh(*n, "link", "set", "vipsink1", "up")
            sh(*n, "route", "add", "10.215.0.0/16", "dev", "vipsink")
            for task, node, cid in (("task-a", nodes["A"], "a1" * 32),
                                    ("task-b", nodes["B"], "b1" * 32)):
                att = node.call(op="attach", id=cid)
                # eth1 on the node's overlay bridge, as the overlay driver would add it.
                sh("nsenter", f"--net={att['netns']}", "ip", "link", "add", "eth1", "type",
                   "veth", "peer", "name", f"v{task}", "netns", f"pswlb{node.name}{TOKEN}")
                sh("ip", "-n", f"pswlb{node.name}{TOKEN}", "link", "set", f"v{task}",
                   "master", "ovbr", "up")
                for cmd in (["addr", "add", f"{TASK_OVERLAY[task]}/24", "dev", "eth1"],
                            ["link", "set", "eth1", "up"]):
                    sh("nsenter", f"--net={att['netns']}", "ip", *cmd)
                started.append(subprocess.Popen(
                    ["nsenter", f"--net={att['netns']}", sys.executable, "-c", _RESPONDER,
                     task], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
                node.tasks[task] = {
                    "id": task, "service": "web", "ip": att["ip"], "desired": "running",
                    "networks": {INGRESS_ID: f"{TASK_OVERLAY[task]}/24"},
                    "ports": [["tcp", PORT, 80]]}
                _wait_listening(att["netns"], task)
            container = nodes["A"].call(op="attach", id="c1" * 32)
            nodes["A"].container = container["netns"]
            yield nodes
        finally:
            for node in nodes.values():
                if node.proc.poll() is None:
                    assert node.proc.stdin is not None
                    node.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    node.proc.stdin.close()
                    try:
                        node.proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        node.proc.kill()
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            _unmount_under(tmp_path)  # should a driver have died before its teardown


def _unmount_under(base: Path) -> None:
    """Unmount what is left under ``base`` (namespace files, the netns folder), deepest first."""
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounted if m.startswith(f"{base}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _wait_listening(netns: str, name: str) -> None:
    deadline = time.monotonic() + 10
    while not ask("127.0.0.1", 80, 1, netns)[0].startswith(name):
        assert time.monotonic() < deadline, f"{name} does not answer"
        time.sleep(0.05)


def names(answers: list[str]) -> Counter[str]:
    return Counter(a.split()[0] if a and a != "refused" else a for a in answers)


@pytest.mark.parametrize("cluster", ["nftables", "userspace"], indirect=True)
def test_routing_mesh_and_vips_across_two_nodes(cluster: dict[str, Node]) -> None:
    a, b = cluster["A"], cluster["B"]
    mode = a.mode
    both = {"task-a": "A", "task-b": "B"}
    a.sync(network_state("A", both))
    b.sync(network_state("B", both))

    # Every node accepts the published port and spreads over the tasks of both nodes.
    via_a = ask(A_ADDR, PORT, 20)
    via_b = ask(B_ADDR, PORT, 20)
    assert names(via_a) == {"task-a": 10, "task-b": 10}, via_a
    assert names(via_b) == {"task-a": 10, "task-b": 10}, via_b
    peers_a = {a.split()[0]: a.split()[1] for a in via_a}
    # The remote task sees node A's ingress address (the only way its answer comes back).
    assert peers_a["task-b"] == NODE_OVERLAY["A"]
    assert {a.split()[0]: a.split()[1] for a in via_b}["task-a"] == NODE_OVERLAY["B"]
    if mode == "nftables":
        # The local task sees the client's own address: DNAT only.
        assert peers_a["task-a"] == A_HOST
        assert {a.split()[0]: a.split()[1] for a in via_b}["task-b"] == B_HOST
        # From the host itself, through 127.0.0.1 in node A, both tasks answer too.
        assert names(ask("127.0.0.1", PORT, 4, a.netns)) == {"task-a": 2, "task-b": 2}

    # The VIP, from a container of node A: spread over the tasks' overlay addresses.
    container = a.container
    from_container = ask(VIP, 80, 20, container)
    assert names(from_container) == {"task-a": 10, "task-b": 10}, from_container
    assert {x.split()[1] for x in from_container} == {NODE_OVERLAY["A"]}

    # task-b leaves the NetworkState (stopping or gone on node B): no new connection to it.
    only_a = {"task-a": "A"}
    a.sync(network_state("A", only_a))
    assert names(ask(A_ADDR, PORT, 10)) == {"task-a": 10}
    assert names(ask(VIP, 80, 10, container)) == {"task-a": 10}

    # task-a is wanted stopped: it leaves at once, whatever the (stale) NetworkState says.
    a.tasks["task-a"]["desired"] = "shutdown"
    a.sync(network_state("A", both))
    assert names(ask(A_ADDR, PORT, 6)) == {"task-b": 6}
    assert names(ask(VIP, 80, 6, container)) == {"task-b": 6}

    # Zero serving tasks: refused at once, on the published port and on the VIP.
    a.sync(network_state("A", {}))
    started = time.monotonic()
    assert ask(A_ADDR, PORT, 3) == ["refused"] * 3
    assert ask(VIP, 80, 3, container) == ["refused"] * 3
    assert time.monotonic() - started < 5  # a refusal, not three 3 s timeouts

    # Back, then the service gone from the cluster: nothing of it is left on node A.
    a.tasks["task-a"]["desired"] = "running"
    shown = a.sync(network_state("A", both))
    assert set(shown["services"]) == {"web"} and set(shown["vips"]) == {VIP}
    assert shown["overlays"] == {SUBNET: NODE_OVERLAY["A"]}
    assert names(ask(A_ADDR, PORT, 4)) == {"task-a": 2, "task-b": 2}
    a.tasks.clear()
    gone = a.sync(cpb.NetworkState(version=2))
    assert gone == {"services": {}, "vips": {}, "overlays": {}}
    assert ask(A_ADDR, PORT, 1) == ["refused"]
