#!/usr/bin/env python3
"""How the manager's cost grows with its cluster: simulated nodes against a real manager.

For each store (sqlite, etcd with a real `etcd` server started here) and each cluster size,
a fresh manager daemon (`pyswarm daemon` + `pyswarm init`, its own node drained so it runs
nothing) is joined by N simulated workers (worker/sim.py: the real join with a token and a
CSR, then mutual-TLS sessions, a heartbeat every second, task status reports; no
containers). Then, through the CLI as a user does:

    deploy     a stack of services totalling T replicas on two overlay networks, each
               service with a VIP (`pyswarm deploy --detach`), timed until the manager counts every
               task RUNNING, then until every node has its network states (no session
               of the manager behind on its NetworkState for 2 s); the scheduler's own
               placements per second of its busy time (manager counters from
               `Control.Info`) and end to end (deploy → every task assigned on the
               simulated nodes)
    rest       the manager daemon's CPU (cores, from /proc) over --rest seconds with every
               node heartbeating, its memory at the end, at its peak over the window
               (VmRSS sampled every REST_SAMPLE_S) and over its life (VmHWM), and what
               it did meanwhile (`..._rest_<counter>`: commits, passes, sessions, bytes;
               all near zero at rest)
    failure    10% of the nodes die at once (connections dropped, no more heartbeats): time
               until the manager marks them DOWN, until all their tasks are assigned to
               surviving nodes, and until they all run again; `..._dead_down_extra_s` is
               the extra wait before DOWN the manager had at that moment (it grows when
               nodes it marked DOWN come straight back, as in an overloaded deploy)

With --json the last line is one JSON object; keys are `<store>_<nodes>_<figure>`. The peer
here is the issue's targets, stated as ratios (`..._ratio`, below 1 meets the target):
placements/s against 10,000/s (inverted: target / measured), memory at rest (the window's
peak) against 300 MB, CPU against half a core, failure re-placement against 5 s.
`--profile DIR` records py-spy flame graphs of the manager during the deploy and at rest
(pip install py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.engine_fixtures import Daemon, cleanup, engine_env, router_pids  # noqa: E402

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
TICK = os.sysconf("SC_CLK_TCK")
TARGET_PLACEMENTS = 10_000.0
TARGET_MEMORY_MB = 300.0
TARGET_CPU = 0.5
TARGET_REPLACE_S = 5.0
REST_SAMPLE_S = 0.5  # seconds between samples of the manager's memory at rest
# Manager counters (Control.Info) reported for the rest window as `<label>_rest_<key>`.
REST_COUNTERS = ("store_commits", "store_writes", "dispatcher_sessions",
                 "dispatcher_marked_down", "dispatcher_false_downs", "netpush_bytes",
                 "orchestrator_passes", "orchestrator_services", "orchestrator_seconds",
                 "orchestrator_wakes_task", "orchestrator_wakes_node",
                 "orchestrator_wakes_service")


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the manager process ---------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, together."""
    total = 0.0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of these processes, summed."""
    rss = hwm = 0.0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "VmRSS":
                rss += int(rest.split()[0]) / 1024
            elif key == "VmHWM":
                hwm += int(rest.split()[0]) / 1024
    return rss, hwm


class Etcd:
    def __init__(self, base: Path) -> None:
        self.client = f"127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.log = open(base / "etcd.log", "wb")  # noqa: SIM115 - closed in stop()
        # etcd's defaults (128 ops per txn, 1.5 MiB requests), as a user runs it.
        self.proc = subprocess.Popen(
            [ETCD, "--name", "scale", "--data-dir", str(base / "etcd"),
             "--listen-client-urls", f"http://{self.client}",
             "--advertise-client-urls", f"http://{self.client}",
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"scale={peer}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: see {base / 'etcd.log'}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.client}/health", timeout=1) as r:
                return bool(json.load(r).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def stack_file(folder: Path, services: int, tasks: int) -> Path:
    """`services` services totalling `tasks` replicas, on two overlay networks with VIPs.

    The networks get /18 subnets: a /24 (the default, as Docker's) holds 254 addresses, and
    every task and every node taking part needs one."""
    lines = ["services:"]
    base, extra = divmod(tasks, services)
    for i in range(services):
        replicas = base + (1 if i < extra else 0)
        lines += [f"  s{i}:", "    image: busybox", "    command: sleep 1d",
                  "    deploy:", f"      replicas: {replicas}",
                  f"    networks: [{'backend' if i % 2 == 0 else 'frontend'}]"]
    lines += ["networks:"]
    for name, subnet in (("backend", "10.96.0.0/18"), ("frontend", "10.96.64.0/18")):
        lines += [f"  {name}:", "    driver: overlay", "    ipam:", "      config:",
                  f"        - subnet: {subnet}"]
    path = folder / "stack.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Profiler:
    """py-spy flame graphs of the manager daemon, one per phase (optional)."""

    def __init__(self, folder: Path | None, pid: int, label: str) -> None:
        self.folder, self.pid, self.label = folder, pid, label
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def start(self, phase: str) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / f"{self.label}-{phase}.txt"
        self.proc = subprocess.Popen(
            [self.spy, "record", "-p", str(self.pid), "-r", "50", "-f", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


# ---- one run ------------------------------------------------------------------------------


QUIET_S = 2.0  # seconds with no session behind: the deploy's states are delivered


async def states_delivered(control: Any, started: float, timeout: float) -> float:
    """Seconds from `started` until every session has its node's newest NetworkState on
    its way out of the manager (no store change waiting for a round, no session told and
    not yet sent; netpush.py's gauges), seen in two polls QUIET_S apart; RuntimeError past
    `timeout`. (Watching the bytes sent for a quiet spell was fooled by a round paced a few
    seconds later.)"""
    from pyswarm.proto import cluster_pb2 as cpb

    since: float | None = None
    while True:
        metrics = dict((await control.Info(cpb.InfoRequest())).metrics)
        now = time.monotonic()
        if metrics.get("netpush_sessions_behind", 0) or metrics.get("netpush_changes_waiting", 0):
            since = None
        elif since is None:
            since = now
        elif now - since >= QUIET_S:
            return since - started
        if now - started > timeout:
            raise RuntimeError(f"network states still flowing after {timeout:g} s")
        await asyncio.sleep(0.25)


async def poll(check: Callable[[], Any], timeout: float, every: float = 0.02) -> float:
    """Seconds until check() is true (polled); TimeoutError past `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout:g} s")
        await asyncio.sleep(every)


async def run_one(store: str, nodes: int, tasks: int, args: argparse.Namespace,
                  index: int) -> dict[str, float]:
    import grpc

    from pyswarm.proto import cluster_pb2 as cpb
    from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
    from pyswarm.proto import objects_pb2 as opb
    from pyswarm.worker.sim import Fleet

    label = f"{store}_{nodes}"
    base = Path(tempfile.mkdtemp(prefix=f"pyswarm-scale-{label}-"))
    etcd = Etcd(base) if store == "etcd" else None
    daemon = Daemon(base, engine_env(base, index))
    fleet: Fleet | None = None
    out: dict[str, float] = {}
    try:
        daemon.start()
        port = free_port()
        url = f"etcd://{etcd.client}" if etcd else "sqlite"
        daemon.cli("init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                   f"127.0.0.1:{port}", "--store", url)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        channel = grpc.aio.insecure_channel(f"unix://{daemon.run_dir / 'pyswarm.sock'}")
        control = cpb_grpc.ControlStub(channel)
        info = await control.Info(cpb.InfoRequest())
        daemon.cli("node", "update", "--availability", "drain", info.node_id)
        token = (await control.JoinTokens(cpb.JoinTokensRequest())).worker
        profiler = Profiler(args.profile, pid, label)

        async def marked_down() -> float:
            metrics = (await control.Info(cpb.InfoRequest())).metrics
            return metrics.get("dispatcher_marked_down", 0.0)

        async def ready_nodes() -> int:
            listed = await control.ListNodes(cpb.ListNodesRequest())
            return sum(1 for n in listed.nodes if n.status.state == opb.NODE_STATE_READY)

        # Join.
        log(f"{label}: joining {nodes} simulated nodes")
        # The nodes check their NetworkState version chain but keep no views: a thousand
        # views in this process would compete with the manager for the same two cores.
        fleet = Fleet(f"127.0.0.1:{port}", token, start_delay=args.start_delay,
                      track_network=False)
        started = time.monotonic()
        await fleet.join(nodes, concurrency=args.join_concurrency)
        await fleet.connected(timeout=300)
        while await ready_nodes() < nodes + 1:
            await asyncio.sleep(0.1)
        out[f"{label}_join_s"] = round(time.monotonic() - started, 2)

        # Deploy.
        log(f"{label}: deploying {tasks} tasks in {args.services} services")
        before = dict((await control.Info(cpb.InfoRequest())).metrics)
        path = stack_file(base, args.services, tasks)
        profiler.start("deploy")
        started = time.monotonic()
        deploy = await asyncio.create_subprocess_exec(
            *_cli(), "deploy", "--detach", "-c", str(path), "scale", env=daemon.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assigned_s_task = asyncio.create_task(poll(
            lambda: sum(len(n.tasks) for n in fleet.nodes) >= tasks, args.timeout))
        # (polled every 20 ms: the figure is at most that much late)
        _, err = await deploy.communicate()
        if deploy.returncode != 0:
            raise RuntimeError(f"deploy failed: {err.decode()}")
        assigned_s = await assigned_s_task

        async def manager_running() -> int:
            listed = await control.ListServices(cpb.ListServicesRequest(stack="scale"))
            return sum(s.running for s in listed.services)

        shown = started
        while (running := await manager_running()) < tasks:
            now = time.monotonic()
            if now - started > args.timeout:
                raise RuntimeError(f"{label}: not every task ran within {args.timeout} s")
            if now - shown >= 5:
                shown = now
                log(f"{label}: {now - started:.0f} s: {running}/{tasks} running on the "
                    f"manager, {fleet.running()} on the nodes; {await ready_nodes() - 1}/"
                    f"{nodes} nodes ready; sessions opened {fleet.stats.sessions}, ended "
                    f"{dict(fleet.stats.ended) or 'none'}; the simulator's loop was late "
                    f"{fleet.stats.worst_loop_lag:.2f} s at worst")
            # Each answer counts every task: poll gently, and more so once it takes long.
            await asyncio.sleep(0.2 if now - started < 5 else 1.0)
        running_s = time.monotonic() - started
        # The deploy is over once the nodes also have its network states (service
        # discovery): no session of the manager is behind on its NetworkState.
        quiet_s = await states_delivered(control, started, args.timeout)
        profiler.stop()
        log(f"{label}: network states delivered at {quiet_s:.0f} s; sessions opened "
            f"{fleet.stats.sessions}, ended {dict(fleet.stats.ended) or 'none'}; the "
            f"simulator's loop was late {fleet.stats.worst_loop_lag:.2f} s at worst")
        out[f"{label}_deploy_sessions_reopened"] = fleet.stats.sessions - nodes
        after = dict((await control.Info(cpb.InfoRequest())).metrics)
        placed = after.get("scheduler_placed", 0) - before.get("scheduler_placed", 0)
        busy = after.get("scheduler_seconds", 0) - before.get("scheduler_seconds", 0)
        out[f"{label}_tasks"] = tasks
        out[f"{label}_all_assigned_s"] = round(assigned_s, 3)
        out[f"{label}_all_running_s"] = round(running_s, 3)
        out[f"{label}_states_delivered_s"] = round(quiet_s, 3)
        out[f"{label}_placements_per_s_end_to_end"] = round(tasks / assigned_s, 1)
        if busy > 0:
            rate = placed / busy
            out[f"{label}_scheduler_placements_per_s"] = round(rate, 1)
            out[f"{label}_scheduler_passes"] = after.get("scheduler_passes", 0) - before.get(
                "scheduler_passes", 0)
            out[f"{label}_placements_target_ratio"] = round(TARGET_PLACEMENTS / rate, 3)
        for key in ("store_commits", "store_writes", "store_commit_seconds",
                    "dispatcher_status_commits", "netpush_rounds", "netpush_bytes"):
            out[f"{label}_deploy_{key}"] = round(after.get(key, 0) - before.get(key, 0), 3)

        # Rest.
        await asyncio.sleep(args.settle)
        log(f"{label}: measuring the manager at rest for {args.rest:g} s")
        profiler.start("rest")
        counters_before = dict((await control.Info(cpb.InfoRequest())).metrics)
        # What the manager costs is its daemon's and its port router's (a process of its own).
        routers = router_pids(pid)
        manager = [pid, *routers]
        router_before = cpu_seconds(routers)
        cpu_before, wall_before = cpu_seconds(manager), time.monotonic()
        # The memory target is the peak at rest: VmRSS sampled through the window
        # (VmHWM, reported as peak_rss_mb, is the peak of the daemon's whole life).
        rest_peak = memory_mb(manager)[0]
        while (left := wall_before + args.rest - time.monotonic()) > 0:
            await asyncio.sleep(min(REST_SAMPLE_S, left))
            rest_peak = max(rest_peak, memory_mb(manager)[0])
        wall = time.monotonic() - wall_before
        cpu = (cpu_seconds(manager) - cpu_before) / wall
        router_cpu = (cpu_seconds(routers) - router_before) / wall
        profiler.stop()
        # What the manager did while "at rest": a cluster at rest writes and reconciles
        # nothing, and the figures above are only a rest's if these stay near zero.
        counters = dict((await control.Info(cpb.InfoRequest())).metrics)
        # heartbeats the manager heard (answers to them may be merged: servicers.py)
        beats = (counters.get("dispatcher_heartbeats", 0)
                 - counters_before.get("dispatcher_heartbeats", 0)) / wall
        for key in REST_COUNTERS:
            out[f"{label}_rest_{key}"] = round(
                counters.get(key, 0) - counters_before.get(key, 0), 3)
        rss, peak = memory_mb(manager)
        router_rss, router_peak = memory_mb(routers)
        out[f"{label}_router_rss_mb"] = round(router_rss, 1)
        out[f"{label}_router_peak_rss_mb"] = round(router_peak, 1)
        out[f"{label}_rest_cpu_cores"] = round(cpu, 3)
        out[f"{label}_rest_router_cpu_cores"] = round(router_cpu, 3)  # included above
        out[f"{label}_rest_heartbeats_per_s"] = round(beats, 1)
        rest_peak = max(rest_peak, rss)
        out[f"{label}_rss_mb"] = round(rss, 1)
        out[f"{label}_rest_peak_rss_mb"] = round(rest_peak, 1)
        out[f"{label}_peak_rss_mb"] = round(peak, 1)
        out[f"{label}_cpu_target_ratio"] = round(cpu / TARGET_CPU, 3)
        out[f"{label}_memory_target_ratio"] = round(rest_peak / TARGET_MEMORY_MB, 3)

        # Failure: a tenth of the nodes die at once.
        dead_count = max(1, nodes // 10)
        victims = sorted(fleet.nodes, key=lambda n: -len(n.tasks))[:dead_count]
        lost = sum(len(n.running()) for n in victims)
        survivors = [n for n in fleet.nodes if n not in victims]
        # The manager waits longer before DOWN for a while after nodes it marked DOWN came
        # straight back (a deploy that overloaded it): detection is 3 periods plus this.
        extra = dict((await control.Info(cpb.InfoRequest())).metrics).get(
            "dispatcher_down_extra_seconds", 0.0)
        out[f"{label}_dead_down_extra_s"] = round(extra, 2)
        log(f"{label}: killing {dead_count} nodes holding {lost} tasks (the manager's extra "
            f"wait before DOWN after false ones: {extra:g} s)")
        down_before = await marked_down()
        profiler.start("failure")
        started = time.monotonic()
        await asyncio.gather(*(n.die() for n in victims))

        def assigned_live() -> int:
            return sum(1 for n in survivors for t in n.tasks.values()
                       if t.desired_state == opb.TASK_STATE_RUNNING)

        async def detect() -> float:
            # By the dispatcher's counter (a node is counted as its DOWN is written): 20
            # `node ls` of 1,000 nodes a second were a tenth of the manager's loop here.
            while await marked_down() < down_before + dead_count:
                await asyncio.sleep(0.05)
            return time.monotonic() - started

        detect_task = asyncio.create_task(detect())
        replaced_s = await poll(lambda: assigned_live() >= tasks, args.timeout)
        rerun_s = replaced_s + await poll(
            lambda: sum(len(n.running()) for n in survivors) >= tasks, args.timeout)
        detect_s = await detect_task
        profiler.stop()
        out[f"{label}_dead_nodes"] = dead_count
        out[f"{label}_dead_tasks"] = lost
        out[f"{label}_dead_detected_s"] = round(detect_s, 3)
        out[f"{label}_dead_replaced_s"] = round(replaced_s, 3)
        out[f"{label}_dead_running_again_s"] = round(rerun_s, 3)
        out[f"{label}_replace_target_ratio"] = round(replaced_s / TARGET_REPLACE_S, 3)
        out[f"{label}_sim_refused_updates"] = fleet.stats.refused
        out[f"{label}_sim_worst_heartbeat_gap_s"] = round(fleet.stats.worst_heartbeat_gap, 2)
        out[f"{label}_sim_worst_loop_lag_s"] = round(fleet.stats.worst_loop_lag, 2)
        out[f"{label}_sim_sessions_reopened"] = fleet.stats.sessions - nodes
        final = dict((await control.Info(cpb.InfoRequest())).metrics)
        out[f"{label}_manager_stall_s"] = round(final.get("dispatcher_stall_seconds", 0), 2)
        out[f"{label}_manager_worst_heartbeat_gap_s"] = round(
            final.get("dispatcher_heartbeat_gap_seconds", 0), 2)
        out[f"{label}_manager_ingress_lag_max_s"] = round(
            final.get("dispatcher_ingress_lag_seconds", 0), 2)
        if fleet.stats.errors:
            log(f"{label}: simulated nodes saw errors: {fleet.stats.errors[:5]}")
        await channel.close()
        return out
    finally:
        if fleet is not None:
            await fleet.close()
        cleanup(daemon)
        if out.get(f"{label}_all_running_s") is None and daemon.log_path.exists():
            kept = Path(tempfile.gettempdir()) / f"pyswarm-scale-{label}-daemon.log"
            shutil.copyfile(daemon.log_path, kept)
            log(f"{label}: the manager's log is kept in {kept}")
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(base, ignore_errors=True)


def _cli() -> list[str]:
    return [str(Path(sys.executable).parent / "pyswarm")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="100,300,1000",
                        help="cluster sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--tasks", type=int, default=10000,
                        help="tasks at the largest size; smaller sizes get as many per node")
    parser.add_argument("--services", type=int, default=10, help="services in the stack")
    parser.add_argument("--stores", default="sqlite,etcd", help="sqlite, etcd or both")
    parser.add_argument("--start-delay", type=float, default=0.1,
                        help="seconds a simulated node takes to start a task (default 0.1)")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the deploy before measuring at rest")
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument("--join-concurrency", type=int, default=16)
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record py-spy profiles of the manager into DIR")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/scale.py needs root (it starts a pyswarm daemon)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.nodes.split(",") if x]
    stores = [s for s in args.stores.split(",") if s]
    figures: dict[str, Any] = {"nodes": sizes, "stores": stores}
    if "etcd" in stores and not os.path.exists(ETCD):
        figures["etcd_skipped"] = f"{ETCD} is absent: apt-get install etcd-server"
        stores.remove("etcd")
    largest = max(sizes)
    index = 0
    for store in stores:
        for nodes in sizes:
            tasks = max(1, round(args.tasks * nodes / largest))
            index += 1
            result: dict[str, Any]
            try:
                result = asyncio.run(run_one(store, nodes, tasks, args, index))
            except Exception as exc:  # noqa: BLE001 - one size failing is a result too
                log(f"{store}_{nodes}: {exc!r}")
                result = {f"{store}_{nodes}_error": repr(exc)}
            for key, value in result.items():
                log(f"  {key} = {value}")
            figures.update(result)
    if args.json:
        print(json.dumps(figures))
    # A size that failed is a failed benchmark (bench/run_all.py keeps the figures).
    return 1 if any(key.endswith("_error") for key in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
