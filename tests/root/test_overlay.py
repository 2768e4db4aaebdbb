"""Overlay networks on the real kernel: two nodes, one VXLAN network between them.

Each "node" is a network namespace made here, wired to a test bridge on the host by a veth
(underlay addresses 198.19.<run>.1 and .2). In each, a node process (this module run under
``nsenter --net``, as the lab runs its daemons) drives a real ``NodeNetwork``: node bridge,
overlays from a NetworkState, containers as plain namespaces with eth0 and eth1. Traffic goes
only between these namespaces.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.network import firewall
from pyswarm.worker.network.overlay import MTU, link_prefix, plan_from_state
from tests.engine_fixtures import REPO, RUN_TOKEN
from tests.netns_fixtures import sh

pytestmark = pytest.mark.root

TOK = f"{RUN_TOKEN:03x}"
UNDERLAY_BRIDGE = f"psu{TOK}"
UNDERLAY = f"198.19.{RUN_TOKEN % 256}"  # only inside the node namespaces made here
NET_ID, VNI, SUBNET = "net1overlay", 4097, "10.214.77.0/24"
NODE_ADDR = {"a": "10.214.77.2/24", "b": "10.214.77.3/24"}
A_ID, B_ID, C_ID = "a1" * 32, "b2" * 32, "c3" * 32


# ---- the node process ------------------------------------------------------------------


def serve_node() -> None:
    """Run in a node's namespace: one JSON command per stdin line, one JSON reply each."""
    from pyroute2 import IPRoute

    from pyswarm.common.errors import PyswarmError
    from pyswarm.common.paths import EngineConfig
    from pyswarm.worker.network.node import NodeNetwork

    args = json.loads(sys.argv[1])
    cfg = EngineConfig(root=Path(args["base"]) / "root", run_dir=Path(args["base"]) / "run",
                       bridge=args["bridge"], subnet=args["subnet"], nft_table=args["table"])
    net = NodeNetwork(cfg)
    ipr = IPRoute()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the reply channel
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        reply: dict[str, Any] = {"ok": True}
        try:
            if op == "setup":
                net.setup()
            elif op == "apply":
                state = cpb.NetworkState.FromString(base64.b64decode(cmd["state"]))
                net.overlays.apply(state, cmd.get("local", ""))
            elif op == "attach":
                att = net.attach(cmd["id"])
                eps = net.attach_overlays(cmd["id"], [tuple(o) for o in cmd["overlays"]])
                reply.update(netns=att.netns_path, ip=att.ip, endpoints=[asdict(e) for e in eps])
            elif op == "detach":
                net.detach(cmd["id"])
                net.settle()
            elif op == "networks_of":
                reply["networks"] = list(net.networks_of(cmd["ip"]))
            elif op == "links":
                reply["links"] = sorted(str(link.get_attr("IFLA_IFNAME"))
                                        for link in ipr.get_links())
            elif op == "fdb":
                index = ipr.link_lookup(ifname=cmd["dev"])[0]
                reply["dst"] = sorted(str(e.get_attr("NDA_DST")) for e in ipr.fdb("dump")
                                      if e["ifindex"] == index and e.get_attr("NDA_DST"))
            elif op == "teardown":
                net.teardown()
                net.close()
        except PyswarmError as exc:
            reply = {"ok": False, "error": str(exc), "type": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - a bug: tell the test, keep serving
            reply = {"ok": False, "error": repr(exc), "type": "bug",
                     "trace": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    ipr.close()


class Node:
    """A node namespace with its node process."""

    def __init__(self, letter: str, base: Path, cleanup: contextlib.ExitStack) -> None:
        self.letter = letter
        self.ns = f"pswov{TOK}{letter}"
        self.netns = f"/run/netns/{self.ns}"
        self.underlay = f"{UNDERLAY}.{1 if letter == 'a' else 2}"
        self.host_veth = f"psu{TOK}{letter}"
        self.bridge = f"pswn{TOK}{letter}"
        self.proc: subprocess.Popen[str] | None = None
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "netns", "add", self.ns)
        cleanup.callback(self.close)
        sh("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0",
           "netns", self.ns)
        sh("ip", "link", "set", self.host_veth, "master", UNDERLAY_BRIDGE, "up")
        for cmd in (["addr", "add", f"{self.underlay}/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
            sh("ip", "-n", self.ns, *cmd)
        config = dict(base=str(base), bridge=self.bridge, table=f"pyswarm_ov{TOK}{letter}",
                      subnet=f"10.216.{1 if letter == 'a' else 2}.0/24")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c",
             "from tests.root.test_overlay import serve_node; serve_node()", json.dumps(config)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"node {self.letter} process died"
        return dict(json.loads(line))

    def ok(self, op: str, **kw: Any) -> dict[str, Any]:
        reply = self.call(op, **kw)
        assert reply["ok"], reply
        return reply

    def apply(self, state: cpb.NetworkState, local: str | None = None) -> dict[str, Any]:
        return self.call("apply", state=base64.b64encode(state.SerializeToString()).decode(),
                         local=self.underlay if local is None else local)

    def close(self) -> None:
        """Tear the node network down, stop the process, remove the namespace: whatever
        happens, everything goes."""
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                self.ok("teardown")
                assert proc.stdin is not None
                proc.stdin.close()  # the node process ends at the end of its input
                proc.wait(timeout=10)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            sh("ip", "link", "del", self.host_veth, check=False)
            sh("ip", "netns", "del", self.ns, check=False)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    with contextlib.ExitStack() as cleanup:  # every step undone, even after a failure
        sh("ip", "link", "del", UNDERLAY_BRIDGE, check=False)
        sh("ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
        cleanup.callback(firewall.remove, UNDERLAY_BRIDGE)
        cleanup.callback(sh, "ip", "link", "del", UNDERLAY_BRIDGE, check=False)
        sh("ip", "link", "set", UNDERLAY_BRIDGE, "up")
        firewall.install(UNDERLAY_BRIDGE)  # where Docker's FORWARD policy is DROP
        made: list[Node] = []
        for letter in "ab":
            node = Node(letter, tmp_path / letter, cleanup)
            node.ok("setup")
            made.append(node)
        yield made[0], made[1]


def state_for(me: Node, peers: list[Node], vni: int = VNI, networks: int = 1
              ) -> cpb.NetworkState:
    state = cpb.NetworkState(version=1)
    for p in peers:
        state.peers.add(node_id=f"node-{p.letter}", addr=p.underlay, ready=True)
    for i in range(networks):
        net_id = NET_ID if i == 0 else f"{NET_ID}{i}"
        state.networks.add(id=net_id, spec=opb.NetworkSpec(name=f"net{i}", driver="overlay"),
                           subnet=SUBNET if i == 0 else f"10.214.{78 + i}.0/24", vni=vni + i)
    state.node_attachments.add(network_id=NET_ID, addresses=[NODE_ADDR[me.letter]])
    return state


def ping(netns: str, ip: str) -> bool:
    done = subprocess.run(["nsenter", f"--net={netns}", "busybox", "ping", "-c", "1", "-W", "1",
                           ip], capture_output=True, timeout=5, check=False)
    return done.returncode == 0


def eventually(ok: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.1)
    return False


def addr_of(netns: str, ifname: str) -> dict[str, Any]:
    links = json.loads(sh("nsenter", f"--net={netns}", "ip", "-j", "addr", "show", ifname).stdout)
    return dict(links[0])


# ---- tests ---------------------------------------------------------------------------


def test_containers_on_two_nodes_reach_each_other_and_lose_a_removed_peer(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    assert a.apply(state_for(a, [a, b]))["ok"]  # its own address among the peers is skipped
    assert b.apply(state_for(b, [a]))["ok"]
    ca = a.ok("attach", id=A_ID, overlays=[[NET_ID, "10.214.77.10/24"]])
    cb = b.ok("attach", id=B_ID, overlays=[[NET_ID, "10.214.77.11/24"]])
    assert ca["endpoints"] == [dict(network_id=NET_ID, address="10.214.77.10/24", ifname="eth1",
                                    veth_host=f"psv{A_ID[:8]}1")]
    eth1 = addr_of(ca["netns"], "eth1")
    assert eth1["mtu"] == MTU == 1450
    assert [(i["local"], i["prefixlen"]) for i in eth1["addr_info"] if i["family"] == "inet"] \
        == [("10.214.77.10", 24)]
    # The default route stays on eth0 (the node bridge): VIPs leave by the host.
    route = sh("nsenter", f"--net={ca['netns']}", "ip", "route", "get", "10.215.0.7").stdout
    assert "dev eth0" in route

    assert eventually(lambda: ping(ca["netns"], "10.214.77.11"))
    assert ping(cb["netns"], "10.214.77.10")
    assert eventually(lambda: ping(a.netns, "10.214.77.11"))  # node A's own address routes in
    assert a.ok("networks_of", ip=ca["ip"])["networks"] == [NET_ID]
    # A container of node A that is not on the network cannot route into it.
    cc = a.ok("attach", id=C_ID, overlays=[])
    assert not ping(cc["netns"], "10.214.77.11") and not ping(cc["netns"], "10.214.77.10")
    assert ping(cc["netns"], "10.216.1.1")  # (its own bridge works)
    a.ok("detach", id=C_ID)

    # Node A forgets B: its flood entry and what it learned from B go; B is out of reach,
    # even while B, which still has A for a peer, keeps sending to A's container (A would
    # learn B back from any packet it let in after deleting B's entries).
    vxlan = f"{link_prefix(a.bridge)}x{VNI:x}"
    assert f"{b.underlay}" in a.ok("fdb", dev=vxlan)["dst"]
    sender = subprocess.Popen(["nsenter", f"--net={cb['netns']}", "busybox", "ping", "-i",
                               "0.002", "10.214.77.10"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        assert a.apply(state_for(a, []))["ok"]
        time.sleep(0.2)
    finally:
        sender.kill()
        sender.wait()
    assert a.ok("fdb", dev=vxlan)["dst"] == []
    assert not ping(ca["netns"], "10.214.77.11")
    assert not ping(cb["netns"], "10.214.77.10")
    assert a.apply(state_for(a, [b]))["ok"]  # and back
    assert eventually(lambda: ping(ca["netns"], "10.214.77.11"))

    a.ok("detach", id=A_ID)
    b.ok("detach", id=B_ID)
    assert a.ok("networks_of", ip=ca["ip"])["networks"] == []
    for node in (a, b):
        node.ok("teardown")
        assert node.ok("links")["links"] == ["eth0", "lo"]
        tables = sh("ip", "netns", "exec", node.ns, "nft", "list", "tables").stdout
        assert f"pyswarm_ov{TOK}" not in tables
    assert not Path(ca["netns"]).exists() and not Path(cb["netns"]).exists()


def test_apply_adds_changes_and_removes_networks(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    prefix = link_prefix(a.bridge)

    def ours() -> list[str]:
        return [n for n in a.ok("links")["links"] if n.startswith(prefix)]

    assert a.apply(state_for(a, [b], networks=2))["ok"]
    assert a.apply(state_for(a, [b], networks=2))["ok"]  # idempotent
    both = sorted(f"{prefix}{k}{v:x}" for k in "bx" for v in (VNI, VNI + 1))
    assert ours() == both
    addrs = addr_of(a.netns, f"{prefix}b{VNI:x}")
    assert addrs["mtu"] == MTU
    assert [i["local"] for i in addrs["addr_info"] if i["family"] == "inet"] == ["10.214.77.2"]
    assert [i["local"] for i in addr_of(a.netns, f"{prefix}b{VNI + 1:x}")["addr_info"]
            if i["family"] == "inet"] == []  # no node attachment on the second network
    details = json.loads(sh("ip", "-n", a.ns, "-d", "-j", "link", "show",
                            f"{prefix}x{VNI:x}").stdout)[0]
    vx = details["linkinfo"]["info_data"]
    assert (vx["id"], vx["port"], vx["local"]) == (VNI, 4789, a.underlay)
    assert details["master"] == f"{prefix}b{VNI:x}" and details["mtu"] == MTU

    # A new VNI for the first network: its links are made anew, the second is untouched.
    changed = state_for(a, [b], vni=VNI + 10, networks=1)
    changed.networks.append(state_for(a, [b], networks=2).networks[1])
    assert a.apply(changed)["ok"]
    assert ours() == sorted(f"{prefix}{k}{v:x}" for k in "bx" for v in (VNI + 10, VNI + 1))

    # A malformed state changes nothing and says which field is wrong.
    bad = state_for(a, [b])
    bad.networks[0].vni = 0
    reply = a.apply(bad)
    assert not reply["ok"] and reply["type"] == "InvalidArgument"
    assert "networks[0]" in reply["error"] and ".vni" in reply["error"]
    assert ours() == sorted(f"{prefix}{k}{v:x}" for k in "bx" for v in (VNI + 10, VNI + 1))

    # Attaching to a network the node does not have fails cleanly.
    reply = a.call("attach", id=A_ID, overlays=[["nope", "10.214.77.10/24"]])
    assert not reply["ok"] and "nope" in reply["error"]
    a.ok("detach", id=A_ID)

    assert a.apply(cpb.NetworkState(version=3))["ok"]  # no networks left
    assert ours() == []
    # The other engine in node B's namespace was never touched.
    assert b.ok("links")["links"] == ["eth0", "lo", b.bridge]


def test_attach_overlays_refuses_bad_addresses(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    assert a.apply(state_for(a, []))["ok"]
    for address, why in (("10.214.99.5/24", "not in the network's subnet"),
                         ("10.214.77.2/24", "this node's own address"),
                         ("10.214.77.255/24", "not a host address"),
                         ("banana", "not an IPv4 address")):
        reply = a.call("attach", id=A_ID, overlays=[[NET_ID, address]])
        assert not reply["ok"] and why in reply["error"] and "overlays[0]" in reply["error"]
    a.ok("detach", id=A_ID)


# ---- the state's checks, without a kernel -------------------------------------------------


def test_plan_names_the_bad_field() -> None:
    state = cpb.NetworkState()
    state.peers.add(node_id="n2", addr="198.19.0.2")
    state.peers.add(node_id="n3", addr="198.19.0.3:2377")
    state.networks.add(id="n", subnet="10.214.5.0/24", vni=7)
    state.node_attachments.add(network_id="n", addresses=["10.214.5.9/24"])
    state.peers.add(node_id="n4", addr="")  # registered, never in session: no endpoint yet
    plan = plan_from_state(state, local_addr="198.19.0.3")
    assert plan.peers == {"198.19.0.2"} and plan.local == "198.19.0.3"
    assert str(plan.networks[0].address) == "10.214.5.9/24"
    cases: list[tuple[Callable[[cpb.NetworkState], object], str]] = [
        (lambda s: setattr(s.peers[0], "addr", "node-2"), "peers[0].addr"),
        (lambda s: setattr(s.networks[0], "subnet", "10.214.5.1/24"), "networks[0] (n).subnet"),
        (lambda s: s.networks.add(id="m", subnet="10.214.6.0/24", vni=7), "networks[1] (m).vni"),
        (lambda s: s.node_attachments[0].addresses.__setitem__(0, "10.1.1.1/24"),
         "not in the subnet"),
        (lambda s: s.node_attachments[0].addresses.__setitem__(0, "10.214.5.9"),
         "node_attachments[0].addresses[0]"),
    ]
    for change, field in cases:
        broken = cpb.NetworkState()
        broken.CopyFrom(state)
        change(broken)
        with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)").replace("]", r"\]")):
            plan_from_state(broken)
