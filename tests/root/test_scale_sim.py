"""A real manager daemon with a fleet of simulated workers (worker/sim.py): each joins with
the worker token and its own CSR, keeps a mutual-TLS session, heartbeats and reports task
states, but runs no containers. What a user relies on at any size: every replica placed
once, spread evenly, and put back when nodes die or tasks fail."""

from __future__ import annotations

import asyncio
import collections
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engine_fixtures import Daemon, cleanup, engine_env, router_pids
from tests.root.test_cluster import init_args

pytestmark = pytest.mark.root

NODES, SERVICES, REPLICAS = 30, 3, 40


@pytest.fixture
def manager() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="pyswarm-sim-") as base:
        daemon = Daemon(Path(base), engine_env(Path(base), 11))
        try:
            daemon.start()
            daemon.cli("init", *init_args())
            # The manager's own node runs nothing: only simulated nodes hold tasks.
            daemon.cli("node", "update", "--availability", "drain", daemon.json_lines(
                "node", "ls", "--format", "json")[0]["id"])
            yield daemon
        finally:
            cleanup(daemon)


async def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_fleet_of_simulated_nodes_runs_every_replica_once(manager: Daemon) -> None:
    from pyswarm.proto import objects_pb2 as opb
    from pyswarm.worker.sim import Fleet, SimNode

    token = manager.cli("join-token", "-q", "worker").stdout.strip()
    addr = manager.cli("join-token", "worker").stdout.split()[-1]
    stack = manager.base / "stack.yml"
    stack.write_text("services:\n" + "".join(
        f"  s{i}:\n    image: busybox\n    command: sleep 1d\n"
        f"    deploy:\n      replicas: {REPLICAS}\n" for i in range(SERVICES)))

    async def cli(*args: str) -> str:  # blocking: off the loop the fleet heartbeats on
        return (await asyncio.to_thread(manager.cli, *args)).stdout

    def slots(nodes: list[SimNode]) -> collections.Counter[tuple[str, int]]:
        """(service, slot) -> how many tasks run for it on these nodes."""
        return collections.Counter(
            (n.tasks[t].service_name, n.tasks[t].slot) for n in nodes for t in n.running()
            if n.tasks[t].desired_state <= opb.TASK_STATE_RUNNING)

    def every_slot_once(nodes: list[SimNode]) -> bool:
        seen = slots(nodes)
        wanted = {(f"stack_s{i}", k) for i in range(SERVICES) for k in range(1, REPLICAS + 1)}
        return set(seen) == wanted and max(seen.values()) == 1

    assert manager.proc is not None
    # The daemon, and the router of its TLS port (a process of its own: router.py).
    pids = [manager.proc.pid, *router_pids(manager.proc.pid)]
    assert len(pids) == 2

    def open_files() -> int:
        return sum(len(list(Path(f"/proc/{pid}/fd").iterdir())) for pid in pids)

    async def manager_metric(name: str) -> float:
        import grpc

        from pyswarm.proto import cluster_pb2 as cpb
        from pyswarm.proto import cluster_pb2_grpc as cpb_grpc

        async with grpc.aio.insecure_channel(f"unix://{manager.run_dir / 'pyswarm.sock'}") as ch:
            info = await cpb_grpc.ControlStub(ch).Info(cpb.InfoRequest())
        return float(dict(info.metrics).get(name, 0.0))

    async def scenario() -> None:
        fleet = Fleet(addr, token, start_delay=0.05)
        before = open_files()
        try:
            await fleet.join(NODES)
            await fleet.connected(timeout=30)
            listed = [line for line in (await cli("node", "ls")).splitlines()[1:]]
            assert sum(" Ready " in line for line in listed) == NODES + 1

            await cli("deploy", "--detach", "-c", str(stack), "stack")
            await until("every replica running once",
                        lambda: every_slot_once(fleet.nodes), timeout=60)
            per_node = [len(n.running()) for n in fleet.nodes]
            assert max(per_node) - min(per_node) <= 1, per_node  # spread evenly
            services = await cli("service", "ls")
            assert services.count(f"{REPLICAS}/{REPLICAS}") == SERVICES, services

            # Three nodes die at once: their tasks come back on the others, once each.
            dead = fleet.nodes[:3]
            alive = fleet.nodes[3:]
            await asyncio.gather(*(n.die() for n in dead))
            await until("the dead nodes' replicas running elsewhere",
                        lambda: every_slot_once(alive), timeout=60)
            down = [line for line in (await cli("node", "ls")).splitlines()
                    if " Down " in line]
            assert sorted(line.split()[1] for line in down) == sorted(n.name for n in dead)

            # A task fails: its slot gets a new task, on a live node.
            victim = next(n for n in alive if n.running())
            failed = victim.running()[0]
            slot = (victim.tasks[failed].service_name, victim.tasks[failed].slot)
            victim.fail(failed)
            await until("a replacement for the failed task",
                        lambda: every_slot_once(alive) and not any(
                            failed in n.running() for n in alive), timeout=30)
            assert slots(alive)[slot] == 1

            # Every node's network view (a whole state, then deltas) lists exactly the
            # tasks that run, and every other node with its readiness.
            def views_agree() -> bool:
                running = {t for n in alive for t in n.running()
                           if n.tasks[t].desired_state <= opb.TASK_STATE_RUNNING}
                dead_ids = {n.node_id for n in dead}
                for n in alive:
                    view = n.network
                    listed = {t for sid in view.endpoints for t in view.task_ids(sid)}
                    peers = view.peers
                    if (listed != running or len(peers) != NODES
                            or any(p.ready == (p.node_id in dead_ids) for p in peers.values())):
                        return False
                return True

            await until("every node's network view to match the cluster", views_agree)
            assert fleet.stats.refused == 0 and not fleet.stats.errors, fleet.stats

            # The manager measures its heartbeats' delay by probing its own TLS port (the
            # health check, with its own node certificate, through the router): it gets
            # an answer, and a few milliseconds' worth, not a stuck probe.
            lag = await manager_metric("dispatcher_ingress_lag_seconds")
            assert 0 < lag < 5, lag
        finally:
            await fleet.close()
        # Every connection the nodes made (joins, sessions, reconnections) is closed on the
        # manager's side too: a relay holding half-closed pairs ran out of files at scale.
        await until("the manager to close the nodes' connections",
                    lambda: open_files() <= before + 2, timeout=20)

    asyncio.run(scenario())
