"""A real 3-node swarm on this machine (`pyswarm lab`): placement, the routing mesh on every
node, service names across nodes, and recovery from a crashed or cut-off node.

node1 is the manager (and runs tasks too), node2 and node3 are workers; every node is a
network namespace with its own real daemon, joined with a token over mutual TLS. The tests
share one lab and run in file order: the fault tests come last and leave the lab whole.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_fixtures import PYSWARM
from tests.lab_fixtures import Lab, lab_cluster, wait_for

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HELLO = (REPO / "examples" / "hello" / "stack.yml").read_text().replace(
    "replicas: 3", "replicas: 6")
# Placed off the manager: a container there must cross the overlay to reach it.
API = """
services:
  api:
    image: busybox
    hostname: "{{.Task.Name}}"
    command:
      - sh
      - -c
      - mkdir -p /www && echo api $$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www
    deploy:
      replicas: 2
      placement:
        constraints: ["node.hostname != node1"]
        max_replicas_per_node: 1
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_cluster(3, index=1) as cluster:
        folder = tmp_path_factory.mktemp("stacks")
        (folder / "hello.yml").write_text(HELLO)
        cluster.cli("deploy", "-c", str(folder / "hello.yml"), "--name", "hello",
                    timeout=180)
        yield cluster


def tasks(lab: Lab, service: str = "hello_web") -> list[dict[str, object]]:
    return lab.json_lines("service", "ps", service, "--format", "json")


def running(lab: Lab, service: str = "hello_web") -> list[dict[str, object]]:
    return [t for t in tasks(lab, service)
            if t["state"] == "running" and t["desired_state"] == "running"]


def containers(lab: Lab, node: str, prefix: str = "hello_web.") -> list[str]:
    """The running containers of the service on ``node``, from that node's own engine."""
    rows = lab.json_lines("ps", "--format", "json", node=node)
    return [str(r["name"]) for r in rows if str(r["name"]).startswith(prefix)]


def curl(address: str, port: int = 8080) -> str:
    """One HTTP request from the host, as a client outside the cluster."""
    out = subprocess.run(["curl", "-s", "-m", "3", f"http://{address}:{port}/"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def test_six_replicas_spread_two_per_node(lab: Lab) -> None:
    rows = running(lab)
    assert len(rows) == 6
    assert collections.Counter(str(r["node"]) for r in rows) == {
        "node1": 2, "node2": 2, "node3": 2}
    for node in ("node1", "node2", "node3"):
        assert len(containers(lab, node)) == 2  # what each node's engine really runs


def test_every_node_routes_the_published_port_to_all_replicas(lab: Lab) -> None:
    # Each task answers with its hostname, the task name "hello_web.<slot>.<task id>".
    expected = {f"hello from {t['name']}" for t in running(lab)}
    assert len(expected) == 6
    for node, address in lab.addresses.items():
        answers = [curl(address) for _ in range(30)]
        assert {a.rsplit(".", 1)[0] for a in answers} == expected, (node, answers)


def test_a_container_reaches_a_service_by_name_on_other_nodes(lab: Lab, tmp_path: Path) -> None:
    stack = tmp_path / "api.yml"
    stack.write_text(API)
    lab.cli("deploy", "-c", str(stack), "--name", "hello", timeout=180)
    placed = running(lab, "hello_api")
    assert sorted(str(t["node"]) for t in placed) == ["node2", "node3"]
    client = containers(lab, "node1")[0]  # a hello_web task on the manager's node

    def ask(*args: str) -> str:
        return lab.cli("exec", client, *args, node="node1").stdout

    # The service name is its virtual IP, spread over both tasks on the other nodes.
    seen = {ask("wget", "-qO-", "http://api/").strip().rsplit(".", 1)[0] for _ in range(12)}
    assert seen == {f"api {t['name']}" for t in placed}
    # tasks.NAME lists the tasks' own addresses (Docker's DNS behaviour).
    out = ask("nslookup", "tasks.api.")
    assert out.count("Address:") - 1 == 2  # the first Address line is the server's
    lab.cli("service", "rm", "hello_api")


def test_a_worker_cannot_change_the_cluster(lab: Lab, tmp_path: Path) -> None:
    stack = tmp_path / "x.yml"
    stack.write_text("services:\n  x:\n    image: busybox\n")
    out = lab.cli("deploy", "-c", str(stack), "--name", "x", node="node2", check=False)
    assert out.returncode != 0
    assert "worker" in out.stderr.lower()
    assert "x_x" not in lab.cli("service", "ls").stdout


def test_join_with_a_bad_token_is_refused() -> None:
    with lab_cluster(2, index=2, extra=("--standalone", "2")) as small:
        good = small.cli("join-token", "-q", "worker").stdout.strip()
        bad = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
        out = small.cli("join", "--token", bad, "--advertise-addr", small.addresses["node2"],
                        f"{small.addresses['node1']}:2377", node="node2", check=False)
        assert out.returncode != 0
        assert "token" in out.stderr.lower()
        assert "node2" not in small.nodes()


def test_a_killed_node_s_tasks_run_on_the_others(lab: Lab) -> None:
    lab.kill("node3")
    lab.wait_status("node3", "down", 15)
    wait_for("6 replicas on node1 and node2",
             lambda: collections.Counter(str(t["node"]) for t in running(lab)) == {
                 "node1": 3, "node2": 3}, 30)
    for address in (lab.addresses["node1"], lab.addresses["node2"]):
        assert curl(address).startswith("hello from hello_web.")
    lab.start("node3")
    lab.wait_status("node3", "ready", 30)
    assert len(running(lab)) == 6
    # The crashed node's containers died with it; nothing of them comes back.
    wait_for("node3 to run no stale task", lambda: containers(lab, "node3") == [], 30)


def test_a_partitioned_node_converges_to_exactly_six_after_healing(lab: Lab) -> None:
    before = {n: containers(lab, n) for n in ("node1", "node2", "node3")}
    victim = "node2"  # a worker with tasks (node3 came back empty from the crash test)
    assert before[victim], before
    lab.partition(victim)
    try:
        lab.wait_status(victim, "down", 15)
        others = [n for n in before if n != victim]
        wait_for("6 running elsewhere",
                 lambda: len([t for t in running(lab) if t["node"] in others]) == 6, 30)
        # Cut off, the node keeps serving what it has.
        assert containers(lab, victim) == before[victim]
    finally:
        lab.heal(victim)
    lab.wait_status(victim, "ready", 30)

    def settled() -> bool:
        total = sum(len(containers(lab, n)) for n in ("node1", "node2", "node3"))
        return total == 6 and len(running(lab)) == 6

    wait_for("exactly 6 containers in the cluster", settled, 30)


def test_drain_moves_tasks_off_and_pause_keeps_them(lab: Lab) -> None:
    lab.cli("node", "update", "--availability", "pause", "node2")
    lab.cli("service", "scale", "hello_web=8")
    wait_for("8 running", lambda: len(running(lab)) == 8, 30)
    assert not [t for t in running(lab) if t["node"] == "node2" and
                str(t["name"]) in ("hello_web.7", "hello_web.8")]
    lab.cli("node", "update", "--availability", "drain", "node2")
    wait_for("nothing on node2", lambda: not [t for t in running(lab) if t["node"] == "node2"]
             and len(running(lab)) == 8, 30)
    wait_for("node2's containers stopped", lambda: containers(lab, "node2") == [], 30)
    lab.cli("node", "update", "--availability", "active", "node2")
    lab.cli("service", "scale", "hello_web=6")
    wait_for("6 running", lambda: len(running(lab)) == 6, 30)


def test_cli_on_the_host_targets_the_lab_manager(lab: Lab) -> None:
    env = lab.env("node1")
    out = subprocess.run([PYSWARM, "node", "ls", "--format", "json"], capture_output=True,
                         text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    hosts = {json.loads(line)["hostname"] for line in out.stdout.splitlines()}
    assert hosts == {"node1", "node2", "node3"}
