"""Failure recovery: a node dies, how long until every replica runs again?

    python bench/recovery.py [--rounds 10] [--replicas 30] [--peer-rounds 1] [--json]

pyswarm: a 3-node lab (`pyswarm lab up`: node1 the manager, node2 and node3 workers, each a
network namespace with its own real daemon), one service of N replicas (`sleep`, unpublished,
the same workload as the Docker side). Each round `lab kill`s a worker — SIGKILL of its
daemon and every container of it, a crashed machine — and times:

- down: from the kill until the manager shows the node down;
- recovery: from the kill until N tasks of the service are RUNNING on the nodes still alive.

Then `lab start` brings the node back (it rejoins; its stale tasks are stopped), the service
is scaled to 0 and back so that every round starts evenly spread (as the Docker side does),
and the next round kills the other worker. Docker Swarm, three dockerds in three namespaces on a lab
bridge (bench/peers/docker_lab.py), runs the same rounds in the same run; its rounds are few
because each takes over a minute. Ratios are pyswarm / Docker (lower is better); a peer that
cannot run here is reported as skipped, never as a pass.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lab_fixtures import Lab, lab_cluster, wait_for  # noqa: E402

STACK = """\
services:
  sleeper:
    image: busybox
    command: ["sleep", "1d"]
    stop_grace_period: 1s
    deploy:
      replicas: {replicas}
"""


class Manager:
    """The lab manager's Control API on its Unix socket: polls cost milliseconds, not the
    few hundred of a CLI process, so the figures resolve to the poll interval (20 ms)."""

    def __init__(self, lab: Lab) -> None:
        import grpc

        from pyswarm.proto import cluster_pb2 as cpb
        from pyswarm.proto import cluster_pb2_grpc
        from pyswarm.proto import objects_pb2 as opb

        self.cpb, self.opb = cpb, opb
        sock = Path(lab.env("node1")["PYSWARM_RUN"]) / "pyswarm.sock"
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        self.stub = cluster_pb2_grpc.ControlStub(self.channel)

    def hostnames(self) -> dict[str, str]:
        nodes = self.stub.ListNodes(self.cpb.ListNodesRequest(), timeout=10).nodes
        return {n.id: n.description.hostname for n in nodes}

    def down(self, hostname: str) -> bool:
        nodes = self.stub.ListNodes(self.cpb.ListNodesRequest(), timeout=10).nodes
        return any(n.description.hostname == hostname and
                   n.status.state == self.opb.NODE_STATE_DOWN for n in nodes)

    def running_by_node(self, hostnames: dict[str, str]) -> collections.Counter[str]:
        """Tasks of the service RUNNING (observed and desired), per node hostname."""
        tasks = self.stub.ListTasks(self.cpb.ListTasksRequest(service="bench_sleeper"),
                                    timeout=10).tasks
        running = self.opb.TASK_STATE_RUNNING
        return collections.Counter(hostnames.get(t.node_id, t.node_id) for t in tasks
                                   if t.status.state == running and t.desired_state == running)

    def close(self) -> None:
        self.channel.close()


def bench_pyswarm(rounds: int, replicas: int, progress: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pyswarm-bench-recovery-") as tmp, \
            lab_cluster(3, index=7) as lab:
        stack = Path(tmp) / "stack.yml"
        stack.write_text(STACK.format(replicas=replicas))
        # The lab's nodes read files through the host's filesystem: same path.
        start = time.perf_counter()
        lab.cli("deploy", "-c", str(stack), "--name", "bench", "--detach")
        manager = Manager(lab)
        names = manager.hostnames()

        def total() -> int:
            return sum(manager.running_by_node(names).values())

        wait_for(f"{replicas} replicas", lambda: total() == replicas, 300)
        converge = time.perf_counter() - start
        progress(f"pyswarm: {replicas} replicas running in {converge:.2f} s")
        downs: list[float] = []
        recoveries: list[float] = []
        for i in range(rounds):
            if i:  # a revived node comes back empty: spread the service evenly again
                lab.cli("service", "scale", "bench_sleeper=0")
                wait_for("0 replicas", lambda: total() == 0, 120)
                lab.cli("service", "scale", f"bench_sleeper={replicas}")
                wait_for(f"{replicas} replicas", lambda: total() == replicas, 120)
            spread = manager.running_by_node(names)
            victim = max(("node2", "node3"), key=lambda n: spread[n])
            t0 = time.perf_counter()
            lab.kill(victim)
            down_at = recovered_at = 0.0
            deadline = t0 + 120
            while time.perf_counter() < deadline and not (down_at and recovered_at):
                now = time.perf_counter()
                if not down_at and manager.down(victim):
                    down_at = now
                if not recovered_at:
                    by_node = manager.running_by_node(names)
                    if sum(c for n, c in by_node.items() if n != victim) == replicas:
                        recovered_at = now
                time.sleep(0.02)
            if not recovered_at:
                raise SystemExit(f"round {i + 1}: {replicas} replicas were not running again "
                                 f"120 s after killing {victim}")
            downs.append((down_at or float("nan")) - t0)
            recoveries.append(recovered_at - t0)
            progress(f"pyswarm round {i + 1}/{rounds}: {victim} killed with {spread[victim]} "
                     f"of {replicas} tasks, down after {downs[-1]:.2f} s, all running again "
                     f"after {recoveries[-1]:.2f} s")
            lab.start(victim)
            lab.wait_status(victim, "ready", 60)
            # Its stale containers go; the service settles at exactly `replicas`.
            wait_for("the service to settle", lambda: total() == replicas, 60)
        manager.close()
        return {
            "pyswarm_converge_seconds": round(converge, 2),
            "pyswarm_recovery_median_s": round(statistics.median(recoveries), 3),
            "pyswarm_recovery_max_s": round(max(recoveries), 3),
            "pyswarm_down_detect_median_s": round(statistics.median(downs), 3),
            "pyswarm_rounds": rounds,
        }


def bench_docker(rounds: int, replicas: int, progress: Any) -> dict[str, Any]:
    try:
        from bench.peers.docker_lab import docker_recovery, with_host_busybox
    except ImportError as exc:
        return {"docker_skipped": f"bench/peers/docker_lab.py unavailable: {exc}"}
    return with_host_busybox(docker_recovery, nodes=3, replicas=replicas, rounds=rounds,
                             progress=progress)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pyswarm rounds (default 10)")
    parser.add_argument("--peer-rounds", type=int, default=1,
                        help="Docker Swarm rounds (default 1: each takes over a minute); "
                        "0 skips the peer")
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = parser.parse_args()

    def progress(line: str) -> None:
        print(line, file=sys.stderr if opts.json else sys.stdout, flush=True)

    figures: dict[str, Any] = {"replicas": opts.replicas}
    figures.update(bench_pyswarm(opts.rounds, opts.replicas, progress))
    if opts.peer_rounds > 0:
        figures.update(bench_docker(opts.peer_rounds, opts.replicas, progress))
    else:
        figures["docker_skipped"] = "--peer-rounds 0"
    docker = figures.get("docker_recovery_median_s")
    if isinstance(docker, (int, float)) and docker > 0:
        figures["recovery_ratio"] = round(figures["pyswarm_recovery_median_s"] / docker, 4)
    docker_down = figures.get("docker_down_detect_s")
    if isinstance(docker_down, (int, float)) and docker_down > 0:
        figures["down_detect_ratio"] = round(
            figures["pyswarm_down_detect_median_s"] / docker_down, 4)
    if opts.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
