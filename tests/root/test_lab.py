"""`pyswarm lab`: several real nodes on this machine, faults injected, and nothing left behind.

One 3-node lab serves the module (lab up takes seconds); tests that need a lab of another
shape, or that take one down, build their own with a name of their own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from pyswarm.cli.lab import procs
from pyswarm.cli.lab.layout import NodeLayout
from tests.engine_fixtures import PYSWARM, REPO
from tests.lab_fixtures import (  # noqa: F401  (lab_fixture: the `lab` fixture)
    Lab,
    lab_cli,
    lab_cluster,
    lab_fixture,
    lab_name,
    wait_for,
)

pytestmark = pytest.mark.root

PROVISION = REPO / "examples" / "virtualbox" / "provision.sh"
# No overlay network: these tests are about the lab's machines, not the cluster's networks.
GLOBAL_SLEEPER = """
services:
  app:
    image: busybox
    command: ["sleep", "100000"]
    networks: []
    deploy:
      mode: global
"""


def node_layout(lab: Lab, node: str) -> NodeLayout:
    return NodeLayout(lab.name, int(node.removeprefix("node")), lab.addresses[node])


def node_processes(lab: Lab, node: str) -> set[int]:
    return procs.node_processes(node_layout(lab, node))


def reaches(lab: Lab, node: str, address: str) -> bool:
    return lab.exec(node, "/bin/busybox", "ping", "-c", "1", "-W", "1", address,
                    check=False).returncode == 0


def no_trace(name: str, netns: list[str], pids: set[int]) -> list[str]:
    """What is left of lab ``name`` on the machine (empty: nothing)."""
    left = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left += [f"netns {n}" for n in netns if n in listed]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    key = name  # short names are their own key
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
             if f"psl-{key}-" in line or f"pslab-{key}" in line]
    for mount in procs.cgroup_mounts():
        left += [f"cgroup {d}" for d in mount.glob(f"pyswarm-lab-{name}-*")]
    for folder in (Path("/var/lib/pyswarm-lab") / name, Path("/run/pyswarm-lab") / name):
        if folder.exists():
            left.append(f"folder {folder}")
    left += [f"pid {p}" for p in pids if procs.alive(p)]
    mounts = Path("/proc/self/mountinfo").read_text()
    if f"pyswarm-lab/{name}/" in mounts:
        left.append("mounts under the lab's folders")
    return left


# ---- the shared lab --------------------------------------------------------------------


def test_up_builds_three_running_nodes_and_ls_describes_them(lab: Lab) -> None:
    nodes = lab.ls()
    assert sorted(nodes) == ["node1", "node2", "node3"]
    subnet = ipaddress.ip_network(lab.subnet)
    for k, (name, n) in enumerate(sorted(nodes.items()), start=1):
        assert set(n) == {"node", "address", "role", "pid", "state", "netns", "env"}
        assert n["address"] == str(subnet.network_address + k)
        assert n["role"] == ("manager" if k == 1 else "worker")
        assert n["state"] == "running" and procs.alive(n["pid"])
        assert n["netns"] == f"pslab-{lab.name}-{name}"
        assert n["env"]["PYSWARM_NODE_NAME"] == name
    table = lab.lab("ls").stdout.splitlines()
    assert table[0].split() == ["NODE", "ADDRESS", "ROLE", "DAEMON", "PID", "STATE"]
    for line in ("bridge pslab-", "node1: manager", "node3: joined as worker", "is up"):
        assert line in lab.up_output


def test_every_node_is_ready_in_the_manager_s_node_ls(lab: Lab) -> None:
    wait_for("3 ready nodes", lambda: sorted(h for h, n in lab.nodes().items()
                                            if n["status"] == "ready") == [
        "node1", "node2", "node3"])
    assert lab.nodes()["node1"]["manager_status"] == "leader"


def test_exec_runs_inside_the_node_and_passes_the_exit_code(lab: Lab) -> None:
    assert lab.exec("node2", "sh", "-c", "exit 7", check=False).returncode == 7
    assert lab.exec("node2", "no-such-command-here", check=False).returncode == 127
    out = lab.exec("node2", "sh", "-c", "echo $PYSWARM_NODE_NAME $PYSWARM_RUN; ip -4 -o addr")
    assert out.stdout.startswith(f"node2 /run/pyswarm-lab/{lab.name}/node2\n")
    assert f"{lab.addresses['node2']}/24" in out.stdout
    assert reaches(lab, "node2", lab.addresses["node3"])
    assert lab.cli("version", node="node3").returncode == 0
    bad = lab.lab("exec", "node9", "--", "true", check=False)
    assert bad.returncode != 0 and 'no node "node9"' in bad.stderr


def test_env_points_the_host_cli_at_the_manager(lab: Lab) -> None:
    script = f'eval "$({PYSWARM} lab env --name {lab.name})"; {PYSWARM} node ls --format json'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith("PYSWARM_")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"hostname"') == 3
    node2 = lab.lab("env", "node2").stdout
    assert f"export PYSWARM_RUN=/run/pyswarm-lab/{lab.name}/node2" in node2.splitlines()


def test_up_again_is_a_no_op_and_another_shape_is_refused(lab: Lab) -> None:
    again = lab_cli("up", "--name", lab.name, "--nodes", "3", "--subnet", lab.subnet)
    assert "already up" in again.stdout
    other = lab_cli("up", "--name", lab.name, "--nodes", "2", "--subnet", lab.subnet,
                    check=False)
    assert other.returncode != 0 and "already exists" in other.stderr


def test_kill_crashes_a_node_and_start_brings_it_back(lab: Lab, tmp_path: Path) -> None:
    stack = tmp_path / "stack.yml"
    stack.write_text(GLOBAL_SLEEPER)
    lab.cli("deploy", "-c", str(stack), "--name", "gl", "--timeout", "60")
    try:
        solo = lab.cli("run", "-d", "busybox", "sleep", "100000", node="node3").stdout.strip()
        container_pid = int(json.loads(lab.cli("inspect", solo, node="node3").stdout)[0]["pid"])
        before = node_processes(lab, "node3")
        daemon = lab.ls()["node3"]["pid"]
        assert {daemon, container_pid} <= before and len(before) >= 6  # + zygote, 2 shims, task

        lab.kill("node3")
        assert not any(procs.alive(p) for p in before)
        assert node_processes(lab, "node3") == set()
        assert procs.in_cgroups(f"pyswarm-lab-{lab.name}-node3") == set()
        assert lab.ls()["node3"]["state"] == "killed" and lab.ls()["node3"]["pid"] == 0
        lab.wait_status("node3", "down", timeout=15)
        assert lab.status("node2") == "ready"

        lab.start("node3")
        assert lab.ls()["node3"]["state"] == "running"
        lab.wait_status("node3", "ready", timeout=30)
    finally:
        lab.cli("stack", "rm", "gl", check=False)


def test_stop_shuts_a_node_down_cleanly(lab: Lab) -> None:
    lab.cli("run", "-d", "busybox", "sleep", "100000", node="node2")
    before = node_processes(lab, "node2")
    lab.stop("node2", grace=1)
    assert not any(procs.alive(p) for p in before)
    assert lab.ls()["node2"]["state"] == "stopped"
    lab.wait_status("node2", "down", timeout=15)
    lab.start("node2")
    lab.wait_status("node2", "ready", timeout=30)
    exited = lab.json_lines("ps", "-a", "--format", "json", node="node2")
    assert exited and all(c["state"] != "running" for c in exited if c["name"].count(".") < 2)


def test_partition_cuts_the_node_off_and_heal_restores_it(lab: Lab) -> None:
    manager = lab.addresses["node1"]
    daemon = lab.ls()["node2"]["pid"]
    lab.partition("node2")
    try:
        assert lab.ls()["node2"]["state"] == "partitioned"
        assert not reaches(lab, "node2", manager)
        assert procs.alive(daemon)  # the node keeps running
        lab.wait_status("node2", "down", timeout=15)  # the manager lost it, over the network
        assert "already partitioned" in lab.lab("partition", "node2").stdout
    finally:
        lab.heal("node2")
    assert lab.ls()["node2"]["state"] == "running"
    # A link back up: the first ARP exchange may still be on its way.
    wait_for("node2 to reach the manager", lambda: reaches(lab, "node2", manager), 10)
    lab.wait_status("node2", "ready", timeout=30)


# ---- labs of their own -------------------------------------------------------------------


def test_bad_input_is_refused_naming_the_field() -> None:
    name = lab_name(7)
    cases = {
        ("--nodes", "0"): "--nodes",
        ("--nodes", "2", "--managers", "2"): "--managers",
        ("--nodes", "2", "--subnet", "198.18.1.0/33"): "--subnet",
        ("--nodes", "2", "--subnet", "10.213.9.0/24"): "--subnet",
        ("--nodes", "2", "--standalone", "1"): "--standalone",
    }
    for args, field in cases.items():
        out = lab_cli("up", "--name", name, *args, check=False)
        assert out.returncode != 0 and field in out.stderr, (args, out.stderr)
    out = lab_cli("up", "--name", "Bad_Name", "--nodes", "1", check=False)
    assert out.returncode != 0 and "--name" in out.stderr
    assert not Path(f"/var/lib/pyswarm-lab/{name}").exists()


def test_a_failed_up_removes_what_it_made() -> None:
    name = lab_name(8)
    out = lab_cli("up", "--name", name, "--nodes", "2", "--subnet", "198.18.99.0/24",
                  "--image", "no-such-image:1", check=False)
    assert out.returncode != 0 and "no-such-image:1" in out.stderr
    assert "node2: namespace" in out.stdout  # it got that far before failing
    assert no_trace(name, [f"pslab-{name}-node1", f"pslab-{name}-node2"], set()) == []


def test_provision_join_path_makes_a_fresh_node_a_ready_worker(tmp_path: Path) -> None:
    with lab_cluster(2, index=1, extra=("--standalone", "2")) as fresh:
        assert "node2" not in fresh.nodes()
        token = tmp_path / "worker.token"
        token.write_text(fresh.cli("join-token", "-q", "worker").stdout.strip() + "\n")
        out = fresh.exec("node2", "bash", str(PROVISION), "join", fresh.addresses["node1"],
                         str(token), timeout=180)
        assert "joined" in out.stdout
        fresh.wait_status("node2", "ready", timeout=30)
        assert fresh.nodes()["node2"]["address"] == fresh.addresses["node2"]


def test_down_leaves_no_trace() -> None:
    with lab_cluster(2, index=2) as doomed:
        doomed.cli("run", "-d", "busybox", "sleep", "100000", node="node2")
        doomed.partition("node2")
        netns = [f"pslab-{doomed.name}-{n}" for n in doomed.addresses]
        pids = node_processes(doomed, "node1") | node_processes(doomed, "node2")
        assert len(pids) >= 5
        out = doomed.lab("down")
        assert f"lab {doomed.name} removed" in out.stdout
        assert no_trace(doomed.name, netns, pids) == []
        again = doomed.lab("down", check=False)
        assert again.returncode != 0 and "no lab named" in again.stderr
