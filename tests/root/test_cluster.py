"""The cluster spine end to end on one node: `pyswarm init`, `deploy`, the manager's loops
and the agent, with real containers, driven through the CLI as a user does."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env, wait_for
from tests.etcd_fixtures import etcd_server  # noqa: F401  (a real etcd for the etcd store)

pytestmark = pytest.mark.root


def services(d: Daemon) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in d.json_lines("service", "ls", "--format", "json")}


def tasks(d: Daemon, service: str) -> list[dict[str, Any]]:
    return d.json_lines("service", "ps", service, "--format", "json")


def task_containers(d: Daemon, running_only: bool = True) -> list[dict[str, Any]]:
    args = ["ps", "--format", "json"] if running_only else ["ps", "-a", "--format", "json"]
    return [c for c in d.json_lines(*args) if c["name"].count(".") >= 2]


def running(d: Daemon, service: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        s = services(d).get(service)
        live = [t for t in tasks(d, service) if t["desired_state"] == "running"]
        return bool(s and s["replicas_running"] == n and len(live) == n
                    and all(t["state"] == "running" for t in live))
    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_args() -> list[str]:
    """A manager's TLS port on a loopback port of its own: daemons of concurrent test runs
    share this machine's network, so none may take the default 0.0.0.0:2377."""
    return ["--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}"]


def join_command(manager: Daemon) -> tuple[str, str]:
    """(token, manager address) from `join-token worker`, as a user copies them."""
    line = next(x for x in manager.cli("join-token", "worker").stdout.splitlines()
                if "pyswarm join --token" in x)
    *_, token, addr = line.split()
    return token, addr


def write_stack(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.yml"
    path.write_text(text)
    return path


SLEEPER = """
services:
  app:
    image: busybox
    command: ["sleep", "100000"]
    deploy:
      replicas: {replicas}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("cluster")
    d = Daemon(base, engine_env(base, index=1))
    try:
        d.start()
        build_base_image(d)
        out = d.cli("init", *init_args())
        assert "manager" in out.stdout
        yield d
    finally:
        cleanup(d)


def test_not_a_manager_before_init(daemon: Daemon) -> None:
    out = daemon.cli("service", "ls", check=False)
    assert out.returncode != 0
    assert "pyswarm init" in out.stderr


def test_node_ls_shows_this_node_as_leader(cluster: Daemon) -> None:
    nodes = cluster.json_lines("node", "ls", "--format", "json")
    assert len(nodes) == 1
    node = nodes[0]
    assert (node["role"], node["status"], node["availability"], node["manager_status"]) == (
        "manager", "ready", "active", "leader")


def test_deploy_scale_and_remove(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "scaling", SLEEPER.format(replicas=3))
    out = cluster.cli("deploy", "-c", str(stack), "--name", "sc", "--timeout", "60")
    assert "sc_app" in out.stdout
    row = services(cluster)["sc_app"]
    assert (row["mode"], row["replicas_desired"], row["replicas_running"]) == ("replicated", 3, 3)
    assert row["image"] == "busybox"
    assert sorted(t["slot"] for t in tasks(cluster, "sc_app")) == [1, 2, 3]

    cluster.cli("service", "scale", "sc_app=5")
    wait_for("5 running", running(cluster, "sc_app", 5))
    cluster.cli("service", "scale", "sc_app=2")
    wait_for("2 running", running(cluster, "sc_app", 2))
    wait_for("2 containers", lambda: len([c for c in task_containers(cluster)
                                          if c["name"].startswith("sc_app.")]) == 2)

    cluster.cli("stack", "rm", "sc")
    wait_for("no containers", lambda: not [c for c in task_containers(cluster, False)
                                           if c["name"].startswith("sc_app.")])
    assert "sc_app" not in services(cluster)


def test_redeploy_unchanged_is_a_no_op(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "same", SLEEPER.format(replicas=1))
    cluster.cli("deploy", "-c", str(stack), "--name", "same", "--timeout", "60")
    before = {t["id"] for t in tasks(cluster, "same_app")}
    cluster.cli("deploy", "-c", str(stack), "--name", "same", "--timeout", "60")
    assert {t["id"] for t in tasks(cluster, "same_app")} == before
    cluster.cli("stack", "rm", "same")


def test_exited_task_is_replaced_per_restart_policy(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "crashy", """
services:
  crash:
    image: busybox
    command: ["sh", "-c", "sleep 0.3; exit 3"]
    deploy:
      restart_policy: {condition: on-failure, delay: 0s, max_attempts: 2}
  once:
    image: busybox
    command: ["sh", "-c", "exit 0"]
    deploy:
      restart_policy: {condition: on-failure, delay: 0s}
""")
    cluster.cli("deploy", "-c", str(stack), "--name", "cr", "--detach")

    def three_failures() -> list[dict[str, Any]] | None:
        ts = tasks(cluster, "cr_crash")
        failed = [t for t in ts if t["state"] == "failed"]
        return ts if len(failed) == 3 else None

    history = wait_for("the first run and 2 restarts to fail", three_failures)
    assert all("non-zero exit (3)" in t["error"] for t in history)
    time.sleep(1.5)
    assert len(tasks(cluster, "cr_crash")) == 3  # max_attempts: no fourth task
    once = wait_for("the successful task to complete",
                    lambda: [t for t in tasks(cluster, "cr_once") if t["state"] == "complete"])
    time.sleep(1.0)
    assert len(tasks(cluster, "cr_once")) == len(once) == 1  # on-failure: exit 0 ends it
    cluster.cli("stack", "rm", "cr")


def test_drain_and_activate(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "drain", SLEEPER.format(replicas=2))
    cluster.cli("deploy", "-c", str(stack), "--name", "dr", "--timeout", "60")
    node = cluster.json_lines("node", "ls", "--format", "json")[0]["id"]
    cluster.cli("node", "update", "--availability", "drain", node)
    try:
        def pending_with_reason() -> bool:
            live = [t for t in tasks(cluster, "dr_app") if t["desired_state"] == "running"]
            return len(live) == 2 and all(t["state"] == "pending" and "no suitable node"
                                          in (t["error"] or t["message"]) for t in live)

        wait_for("tasks pending with a reason", pending_with_reason)
        wait_for("containers stopped", lambda: not [c for c in task_containers(cluster)
                                                    if c["name"].startswith("dr_app.")])
    finally:
        cluster.cli("node", "update", "--availability", "active", node)
    wait_for("2 running again", running(cluster, "dr_app", 2))
    cluster.cli("stack", "rm", "dr")


def test_global_service_runs_once_per_node(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "global", """
services:
  agent:
    image: busybox
    command: ["sleep", "100000"]
    deploy:
      mode: global
""")
    cluster.cli("deploy", "-c", str(stack), "--name", "gl", "--timeout", "60")
    row = services(cluster)["gl_agent"]
    assert (row["mode"], row["replicas_running"]) == ("global", 1)
    cluster.cli("stack", "rm", "gl")


def test_unsatisfiable_constraint_waits_pending_with_reason(cluster: Daemon,
                                                           tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "west", """
services:
  app:
    image: busybox
    command: ["sleep", "100000"]
    deploy:
      placement:
        constraints: ["node.labels.zone == west"]
""")
    cluster.cli("deploy", "-c", str(stack), "--name", "zw", "--detach")
    task = wait_for("a pending task with its reason", lambda: [
        t for t in tasks(cluster, "zw_app")
        if t["state"] == "pending" and "constraint" in (t["error"] or t["message"])])[0]
    assert "no suitable node" in (task["error"] or task["message"])
    node = cluster.json_lines("node", "ls", "--format", "json")[0]["id"]
    cluster.cli("node", "update", "--label-add", "zone=west", node)
    try:
        wait_for("the task to run once the label fits", running(cluster, "zw_app", 1))
    finally:
        cluster.cli("node", "update", "--label-rm", "zone", node)
        cluster.cli("stack", "rm", "zw")


def test_missing_image_is_rejected_with_the_reason(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "noimg", """
services:
  app:
    image: nosuch:1
""")
    out = cluster.cli("deploy", "-c", str(stack), "--name", "ni", "--timeout", "3", check=False)
    assert out.returncode == 1
    rejected = wait_for("a rejected task", lambda: [
        t for t in tasks(cluster, "ni_app") if t["state"] == "rejected"])
    assert "No such image" in rejected[0]["error"]
    cluster.cli("stack", "rm", "ni")


def test_bad_stack_file_changes_nothing(cluster: Daemon, tmp_path: Path) -> None:
    before = services(cluster)
    stack = write_stack(tmp_path / "bad", """
services:
  ok:
    image: busybox
  broken:
    image: busybox
    deploy:
      replicas: three
""")
    out = cluster.cli("deploy", "-c", str(stack), "--name", "bad", check=False)
    assert out.returncode == 1
    assert "stack.yml:8" in out.stderr and "replicas" in out.stderr
    assert services(cluster) == before


def test_daemon_restart_keeps_tasks_and_creates_no_replacements(cluster: Daemon,
                                                                tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "restart", SLEEPER.format(replicas=2))
    cluster.cli("deploy", "-c", str(stack), "--name", "rs", "--timeout", "60")
    before = {t["id"]: t for t in tasks(cluster, "rs_app")}
    containers = {c["id"] for c in task_containers(cluster) if c["name"].startswith("rs_app.")}
    cluster.kill()
    cluster.start()
    wait_for("2 running after the restart", running(cluster, "rs_app", 2))
    time.sleep(4)  # longer than the node-down window: a wrong DOWN would replace tasks
    after = {t["id"]: t for t in tasks(cluster, "rs_app")}
    assert after.keys() == before.keys()
    assert {c["id"] for c in task_containers(cluster)
            if c["name"].startswith("rs_app.")} == containers
    cluster.cli("stack", "rm", "rs")


def test_manager_kill_mid_deploy_loses_nothing(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "midway", SLEEPER.format(replicas=6))
    cluster.cli("deploy", "-c", str(stack), "--name", "mw", "--detach")
    cluster.kill()  # SIGKILL while tasks are being placed and started
    cluster.start()
    wait_for("6 running after the crash", running(cluster, "mw_app", 6), timeout=60)
    live = [t for t in tasks(cluster, "mw_app") if t["desired_state"] == "running"]
    assert sorted(t["slot"] for t in live) == [1, 2, 3, 4, 5, 6]
    wait_for("exactly 6 containers", lambda: len([
        c for c in task_containers(cluster) if c["name"].startswith("mw_app.")]) == 6)
    cluster.cli("stack", "rm", "mw")


def test_etcd_store(etcd_server: Any, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
                    tmp_path: Path) -> None:
    base = tmp_path_factory.mktemp("etcd-cluster")
    d = Daemon(base, engine_env(base, index=2))
    try:
        d.start()
        build_base_image(d)
        d.cli("init", "--store", f"etcd://{etcd_server.endpoint}/cluster-test/", *init_args())
        # init returns with this node in the store, as `docker swarm init` does (on etcd the
        # election comes first, and a `node ls` right after init found no node)
        nodes = d.json_lines("node", "ls", "--format", "json")
        assert [(n["status"], n["manager_status"]) for n in nodes] == [("ready", "leader")]
        stack = write_stack(tmp_path / "etcd", SLEEPER.format(replicas=2))
        d.cli("deploy", "-c", str(stack), "--name", "et", "--timeout", "60")
        ids = {t["id"] for t in tasks(d, "et_app")}
        d.kill()
        d.start()
        wait_for("2 running from etcd state", running(d, "et_app", 2))
        assert {t["id"] for t in tasks(d, "et_app")} == ids
        info = json.loads(d.cli("service", "inspect", "et_app").stdout)
        assert info
        d.cli("stack", "rm", "et")
    finally:
        cleanup(d)


def test_hello_example_spreads_requests_over_its_replicas(cluster: Daemon) -> None:
    import urllib.request

    port = free_port()
    stack = Path(__file__).resolve().parents[2] / "examples" / "hello" / "stack.yml"
    cluster.cli("deploy", "-c", str(stack), "--name", "hello", "--timeout", "60",
                extra_env={"HELLO_PORT": str(port)})
    try:
        answers = set()
        for _ in range(30):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                answers.add(reply.read().decode().strip())
        names = {t["name"] for t in tasks(cluster, "hello_web")}
        assert len(answers) == 3, answers
        assert all(a.startswith("hello from hello_web.") for a in answers), answers
        assert {a.removeprefix("hello from ").rsplit(".", 1)[0] for a in answers} <= names
    finally:
        cluster.cli("stack", "rm", "hello")


# ---- two nodes on one machine: a second daemon joined with the manager's worker token -----


@pytest.fixture(scope="module")
def node2(cluster: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("node2")
    d = Daemon(base, dict(engine_env(base, index=3), PYSWARM_NODE_NAME="node2"))
    try:
        d.start()
        build_base_image(d)  # images are not distributed by the cluster yet
        token, addr = join_command(cluster)
        d.cli("join", "--token", token, "--advertise-addr", "127.0.0.1", addr)
        wait_for("node2 ready", lambda: [n for n in cluster.json_lines(
            "node", "ls", "--format", "json") if n["hostname"] == "node2"
            and n["status"] == "ready"])
        yield d
    finally:
        cleanup(d)


def by_node(d: Daemon, service: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tasks(d, service):
        if t["desired_state"] == "running" and t["state"] == "running":
            counts[t["node"]] = counts.get(t["node"], 0) + 1
    return counts


def node_id(d: Daemon, hostname: str) -> str:
    return next(n["id"] for n in d.json_lines("node", "ls", "--format", "json")
                if n["hostname"] == hostname)


def test_a_member_cannot_join_again(cluster: Daemon, node2: Daemon) -> None:
    token, addr = join_command(cluster)
    out = node2.cli("join", "--token", token, addr, check=False)
    assert out.returncode == 125 and "already part of a swarm" in out.stderr


def test_tasks_spread_and_a_drained_node_s_tasks_move(cluster: Daemon, node2: Daemon,
                                                     tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "spread", SLEEPER.format(replicas=4))
    cluster.cli("deploy", "-c", str(stack), "--name", "sp", "--timeout", "60")
    assert sorted(by_node(cluster, "sp_app").values()) == [2, 2]
    n2 = node_id(cluster, "node2")
    cluster.cli("node", "update", "--availability", "drain", n2)
    try:
        wait_for("all 4 on the first node", lambda: list(by_node(cluster, "sp_app").values())
                 == [4] and "node2" not in by_node(cluster, "sp_app"))
        wait_for("node2's containers stopped", lambda: not task_containers(node2))
    finally:
        cluster.cli("node", "update", "--availability", "active", n2)
        cluster.cli("stack", "rm", "sp")


def test_a_dead_node_s_tasks_are_replaced_and_its_stale_ones_stop(cluster: Daemon,
                                                                  node2: Daemon,
                                                                  tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "failover", SLEEPER.format(replicas=4))
    cluster.cli("deploy", "-c", str(stack), "--name", "fo", "--timeout", "60")
    assert sorted(by_node(cluster, "fo_app").values()) == [2, 2]
    pids = [node2.inspect(c["id"])["pid"] for c in task_containers(node2)]
    assert len(pids) == 2
    node2.kill()  # the node's daemon dies; its containers keep running, unseen
    started = time.monotonic()
    wait_for("node2 down", lambda: [n for n in cluster.json_lines("node", "ls", "--format",
                                                                  "json")
                                    if n["hostname"] == "node2" and n["status"] == "down"])
    assert time.monotonic() - started < 10  # 3 missed 1 s heartbeats, and some slack
    wait_for("4 running on the live node", lambda: by_node(cluster, "fo_app").get(
        next(n["hostname"] for n in cluster.json_lines("node", "ls", "--format", "json")
             if n["hostname"] != "node2")) == 4)
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)  # stale copies still run
    node2.start()
    wait_for("node2's stale tasks stopped", lambda: not task_containers(node2))
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    time.sleep(2)
    live = [t for t in tasks(cluster, "fo_app") if t["desired_state"] == "running"]
    assert len(live) == 4 and sum(by_node(cluster, "fo_app").values()) == 4
    cluster.cli("stack", "rm", "fo")


def test_service_logs_and_prune(cluster: Daemon, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "logs", """
services:
  talker:
    image: busybox
    hostname: "{{.Task.Name}}"
    command: ["sh", "-c", "echo said by $$(hostname); sleep 100000"]
    deploy:
      replicas: 2
      placement:
        constraints: ["node.role == manager"]  # logs are read on the task's node
  extra:
    image: busybox
    command: ["sleep", "100000"]
""")
    cluster.cli("deploy", "-c", str(stack), "--name", "lg", "--timeout", "60")

    def both_spoke() -> list[str] | None:
        lines = cluster.cli("service", "logs", "lg_talker").stdout.splitlines()
        return lines if len([x for x in lines if "said by lg_talker." in x]) == 2 else None

    lines = wait_for("a line from each task", both_spoke)
    assert {x.split("|", 1)[0].split("@")[0].strip() for x in lines} == {
        "lg_talker.1", "lg_talker.2"}
    # Deploying without `extra` and with --prune removes it; without --prune keeps it.
    stack.write_text(stack.read_text().split("  extra:")[0])
    cluster.cli("deploy", "-c", str(stack), "--name", "lg", "--timeout", "60")
    assert "lg_extra" in services(cluster)
    cluster.cli("deploy", "-c", str(stack), "--name", "lg", "--prune", "--timeout", "60")
    assert "lg_extra" not in services(cluster)
    cluster.cli("stack", "rm", "lg")
