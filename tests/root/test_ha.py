"""High availability in a lab: three managers on a three-member etcd, and a worker.

Real daemons, real etcd members (one in each manager's namespace), real SIGKILLs and cut
links, driven through the CLI. The tests share one lab and leave it whole: a killed node is
started again and a cut one healed before the next test. About 3 minutes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab_fixtures import Lab, lab_cluster, wait_for

MANAGERS = ("node1", "node2", "node3")


KEEP_LOGS = Path("/tmp/pyswarm-ha-logs")


@pytest.fixture(scope="module")
def ha(request: pytest.FixtureRequest) -> Iterator[Lab]:
    failed = request.session.testsfailed
    with lab_cluster(4, index=3, extra=("--managers", "3", "--store", "etcd")) as cluster:
        yield cluster
        if request.session.testsfailed > failed:  # keep every log for whoever looks
            shutil.rmtree(KEEP_LOGS, ignore_errors=True)
            for log in Path(f"/var/lib/pyswarm-lab/{cluster.name}").glob("node*/*.log"):
                (KEEP_LOGS / log.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(log, KEEP_LOGS / log.parent.name / log.name)
            print(f"the lab's daemon and etcd logs are kept in {KEEP_LOGS}")


def _managers(lab: Lab, via: str) -> dict[str, dict[str, Any]]:
    out = lab.cli("node", "ls", "--format", "json", node=via, check=False, timeout=30)
    if out.returncode != 0:
        return {}
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return {r["hostname"]: r for r in rows if r["manager_status"]}


def _leader(lab: Lab, via: str) -> str:
    """The leader as manager `via` sees it, or ""."""
    return next((h for h, r in _managers(lab, via).items()
                 if r["manager_status"] == "leader"), "")


def _new_leader(lab: Lab, via: str, old: str, what: str = "a new leader") -> str:
    def other() -> str:
        lead = _leader(lab, via)
        return lead if lead not in ("", old) else ""
    return str(wait_for(what, other, 30))


def _live(exclude: str) -> str:
    return next(m for m in MANAGERS if m != exclude)


def _wait_whole(lab: Lab, timeout: float = 60) -> str:
    """Every manager reachable, one leader, every node ready: the leader's name."""
    seen: list[str] = []

    def whole() -> str:
        via = next((m for m in MANAGERS if lab.ls()[m]["state"] == "running"), "node1")
        listed = lab.nodes_via(via)
        rows = {h: r for h, r in listed.items() if r["manager_status"]}
        nodes = {n: str(listed.get(n, {}).get("status")) for n in ("node1", "node2", "node3",
                                                                    "node4")}
        leaders = [h for h, r in rows.items() if r["manager_status"] == "leader"]
        seen[:] = [f"via {via}: {nodes} {({h: r['manager_status'] for h, r in rows.items()})}"]
        if (len(rows) == 3 and len(leaders) == 1 and all(s == "ready" for s in nodes.values())
                and all(r["manager_status"] in ("leader", "reachable") for r in rows.values())):
            return leaders[0]
        return ""
    try:
        return str(wait_for("every manager reachable, one leader, every node ready", whole,
                            timeout))
    except AssertionError:
        raise AssertionError(f"not whole after {timeout:.0f}s: {seen}\n"
                             f"{_etcd_view(lab)}") from None


def _etcd_view(lab: Lab) -> str:
    """What etcd itself holds about the managers (election key, roster, leases), read in
    each running manager's namespace from its own member: for a failure message."""
    lines = []
    for node in MANAGERS:
        if lab.ls()[node]["state"] != "running":
            continue
        out = lab.exec(node, "etcdctl", "--endpoints", "http://127.0.0.1:2379",
                       "--command-timeout", "3s", "get", "--prefix", "/pyswarm/v1.",
                       check=False, timeout=10)
        leases = lab.exec(node, "etcdctl", "--endpoints", "http://127.0.0.1:2379",
                          "--command-timeout", "3s", "lease", "list", check=False, timeout=10)
        lines.append(f"etcd via {node} ({time.strftime('%H:%M:%S', time.gmtime())}Z): "
                     f"{(out.stdout + out.stderr).strip()!r}; "
                     f"{(leases.stdout + leases.stderr).strip()!r}")
    return "\n".join(lines)


def _stack(tmp: Path, name: str, replicas: int) -> Path:
    path = tmp / f"{name}-{replicas}.yml"
    path.write_text("services:\n  web:\n    image: busybox\n    command: sleep 3600\n"
                    f"    deploy:\n      replicas: {replicas}\n")
    return path


def _running(lab: Lab, service: str, via: str) -> list[dict[str, Any]]:
    out = lab.cli("service", "ps", service, "--format", "json", node=via, check=False)
    if out.returncode != 0:
        return []
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [r for r in rows if r["desired_state"] == "running" and r["state"] == "running"]


def _exactly(lab: Lab, service: str, replicas: int, via: str, timeout: float = 60) -> None:
    def right() -> bool:
        rows = _running(lab, service, via)
        slots = Counter(r["slot"] for r in rows)
        return len(rows) == replicas and set(slots) == set(range(1, replicas + 1))
    wait_for(f"{service}: exactly {replicas} running, one per slot", right, timeout)


def test_node_ls_shows_each_managers_status(ha: Lab) -> None:
    leader = _wait_whole(ha)
    assert leader in MANAGERS
    for via in MANAGERS:  # every manager serves the API and sees the same leader
        assert _leader(ha, via) == leader
    rows = _managers(ha, leader)
    assert set(rows) == set(MANAGERS)
    assert {r["manager_status"] for h, r in rows.items() if h != leader} == {"reachable"}


def test_kill_the_leader_mid_deploy(ha: Lab, tmp_path: Path) -> None:
    old = _wait_whole(ha)
    via = _live(old)
    ha.cli("deploy", "-c", str(_stack(tmp_path, "mid", 3)), "mid", node=via)
    ha.kill(old)
    killed = time.monotonic()
    # the deploy goes on during the failover, through a follower; retrying is what the
    # CLI's error says to do when the store could not take it
    stack = _stack(tmp_path, "mid", 6)
    for _ in range(10):
        out = ha.cli("deploy", "-c", str(stack), "mid", node=via, check=False)
        if out.returncode == 0:
            break
        assert "retry" in out.stderr, out.stderr
        time.sleep(0.5)
    else:
        raise AssertionError(f"deploy never succeeded: {out.stderr}")
    new = _new_leader(ha, via, old)
    took = time.monotonic() - killed
    print(f"new leader {new} seen {took:.1f}s after the kill")
    _exactly(ha, "mid_web", 6, via)
    ha.start(old)
    _wait_whole(ha)
    _exactly(ha, "mid_web", 6, via)
    ha.cli("stack", "rm", "mid", node=via)


def test_kill_an_etcd_member_and_the_cluster_keeps_working(ha: Lab, tmp_path: Path) -> None:
    leader = _wait_whole(ha)
    member = f"etcd{_live(leader)[-1]}"  # a follower's member: the etcd side alone
    ha.kill(member)
    ha.cli("deploy", "-c", str(_stack(tmp_path, "em", 4)), "em", node=leader)
    _exactly(ha, "em_web", 4, leader)
    assert _leader(ha, leader), "a leader throughout (if the member was etcd's own leader, " \
        "the managers' lease may lapse during etcd's election: another term, same cluster)"
    ha.lab("start", member)
    ha.cli("stack", "rm", "em", node=leader)


def test_partition_the_leader(ha: Lab, tmp_path: Path) -> None:
    old = _wait_whole(ha)
    via = _live(old)
    ha.cli("deploy", "-c", str(_stack(tmp_path, "part", 4)), "part", node=via)
    _exactly(ha, "part_web", 4, via)
    ha.partition(old)
    try:
        new = _new_leader(ha, via, old, "the majority elects a new leader")
        # the old leader steps down on its own: it cannot keep its lease alive
        wait_for(f"{old} steps down", lambda: "this manager no longer leads" in
                 _daemon_log(ha, old), 30)
        ha.cli("service", "scale", "part_web=5", node=new)
        _exactly(ha, "part_web", 5, new, timeout=90)
    finally:
        ha.heal(old)
    leader = _wait_whole(ha, 90)
    assert leader == new, "after healing there is one leader, the majority's"
    _exactly(ha, "part_web", 5, leader)
    ha.cli("stack", "rm", "part", node=leader)


def test_twenty_leader_kills_in_a_scaling_loop_never_run_a_slot_twice(
        ha: Lab, tmp_path: Path) -> None:
    leader = _wait_whole(ha)
    ha.cli("deploy", "-c", str(_stack(tmp_path, "loop", 4)), "loop", node=leader)
    _exactly(ha, "loop_web", 4, leader)
    watch = SlotWatch(ha, "loop_web")
    watch.start()
    failovers: list[float] = []
    replicas = 4
    try:
        for round_ in range(20):
            old = _leader(ha, _live(leader)) or leader
            via = _live(old)
            watch.dead = {old}  # before the kill: a sample never reads a dying node
            ha.kill(old)
            killed = time.monotonic()
            new = _new_leader(ha, via, old, f"round {round_}: a new leader")
            failovers.append(time.monotonic() - killed)
            replicas = 3 + round_ % 4
            scale_until_done(ha, f"loop_web={replicas}", new)
            ha.start(old)
            watch.dead = set()
            leader = _wait_whole(ha, 90)
        _exactly(ha, "loop_web", replicas, leader, timeout=90)
    finally:
        watch.stop()
    print(f"failovers: median {sorted(failovers)[len(failovers) // 2]:.1f}s, "
          f"max {max(failovers):.1f}s; {watch.samples} samples of every node's containers")
    assert watch.samples > 20, "the watch looked"
    assert not watch.twice, f"a slot ran twice at once: {watch.twice[:3]}"
    ha.cli("stack", "rm", "loop", node=leader)


def scale_until_done(lab: Lab, what: str, via: str) -> None:
    """`service scale`, retried while the CLI says to (a failover in progress)."""
    for _ in range(20):
        out = lab.cli("service", "scale", what, "--detach", node=via, check=False)
        if out.returncode == 0:
            return
        assert "retry" in out.stderr, out.stderr
        time.sleep(0.5)
    raise AssertionError(f"scale {what} never succeeded: {out.stderr}")


def _daemon_log(lab: Lab, node: str) -> str:
    path = Path(f"/var/lib/pyswarm-lab/{lab.name}/{node}/daemon.log")
    return path.read_text(errors="replace") if path.exists() else ""


class SlotWatch:
    """Samples the containers that really run on every live node (each node's own engine)
    and records any sample in which one slot of the service runs on two nodes at once."""

    def __init__(self, lab: Lab, service: str) -> None:
        self.lab = lab
        self.service = service
        self.dead: set[str] = set()
        self.samples = 0
        self.twice: list[dict[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            where: dict[str, list[str]] = {}
            for node in ("node1", "node2", "node3", "node4"):
                if node in self.dead:
                    continue
                out = self.lab.exec(node, "pyswarm", "ps", "--format", "json", check=False,
                                    timeout=30)
                if out.returncode != 0 or node in self.dead:
                    continue
                for line in out.stdout.splitlines():
                    c = json.loads(line) if line.strip() else {}
                    name = str(c.get("name", ""))
                    if c.get("state") == "running" and name.startswith(self.service + "."):
                        slot = name.split(".")[1]
                        where.setdefault(slot, []).append(node)
            self.samples += 1
            doubled = {s: n for s, n in where.items() if len(n) > 1}
            if doubled:
                self.twice.append(doubled)
            self._stop.wait(0.3)
