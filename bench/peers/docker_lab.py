"""Docker Swarm as a multi-node peer on one machine: the Docker side of bench/recovery.py
(a crashed worker) and of bench/failover.py (a crashed manager, the raft leader).

`docker_recovery()` builds a lab of `nodes` Docker engines (Debian's docker.io), each in a
network namespace of its own on a lab bridge in 198.18.200.0/24 (clear of the pyswarm lab's
198.18.0.0/24), with its own containerd, data/exec roots, sockets, pid files, containerd
namespace and cgroup parent. Node 1 runs `swarm init`, the others join over the lab
addresses; pyswarm's busybox rootfs is `docker import`ed on every node (nothing can be
pulled here) and a service of `replicas` unpublished replicas of `sleep 1d` is created
(Docker's ingress needs IPVS, which this kernel lacks).

Each round crashes one worker the way a machine crashes: SIGKILL of its dockerd first (so
that it reports nothing), then its containerd, every containerd-shim and every container
process, all found by pid through the node's pid files and cgroup tree, never by name.
The clock runs from that kill until the manager's API (what `docker service ps` and `docker
node ls` read) shows `replicas` tasks RUNNING on live nodes again; the moment the killed node
shows Down is taken on the way. The node is then restarted (it rejoins), the lab settles,
and before the next round the service is scaled to 0 and back so that every round starts
from an even spread.

`docker_failover()` (`--failover`) builds the same lab with every node a manager (node 1
inits, the others join with the manager token; `--nodes` managers, 3 by default) and a
service of `replicas` replicas. Each round crashes the raft leader (read from GET /nodes,
ManagerStatus.Leader) the same way, and from that kill polls a surviving manager for three
times: `leader`, until it names a leader other than the killed node (API errors while
there is none mean not yet); `scale`, until `docker service scale --detach` against it
exits 0 (tried every 0.25 s from the kill; the target alternates between replicas+1 and
replicas so that each round is a real change); `converged`, until that many tasks run on
live nodes and no more are wanted. The leader is then restarted, rejoins as a manager, and
the next round starts once every manager is reachable in the raft again. Swarm's own
timing is kept: its raft election timeout (10 ticks of 1 s, drawn from 10-20 s by etcd's
raft) is what is measured, untuned.

Everything started here is stopped by pid at the end, and every trace is removed:
namespaces, bridge, veths, mounts under the lab folder, cgroups, the shims' sockets of
killed containers, and the one iptables rule added here (the FORWARD accept for the lab
bridge: the bridge's frames cross iptables through br_netfilter, and a dockerd on the host
sets the FORWARD policy to DROP). The lab's dockerds change only their own namespaces'
iptables (checked: each runs in its namespace), so that rule, tagged, is removed exactly;
`iptables-save` (FORWARD policy included) is then compared with its state before the run.
Differences made meanwhile by other runs on this machine are reported, not overwritten:
restoring the old rule set wholesale would delete rules that live runs rely on. The result
says whether the host came back clean (`docker_cleanup`, `docker_failover_cleanup`).

    python bench/peers/docker_lab.py --rounds 1 --json
    python bench/peers/docker_lab.py --failover --rounds 2 --replicas 4 --json

builds pyswarm's busybox image in a throw-away engine first (or takes --layers) and prints
the figures, the dict as JSON on the last line of stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.converge import (  # noqa: E402
    DOCKER_IMAGE,
    busybox_tar,
    docker_import,
    docker_missing,
    unmount_under,
    wait_until,
)

LAB_PREFIX = "198.18.200"  # node i gets .1<i>; the pyswarm lab uses 198.18.0.0/24
SERVICE = "dlab"
CGROUP = Path("/sys/fs/cgroup")
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts every shim's socket here
API = "/v1.41"  # dockerd 20.10

TERMINAL = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}

Progress = Callable[[str], None]


# ---- the Engine API over a node's unix socket (cheaper to poll than the docker CLI) ---------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def api_get(sock: Path, path: str, timeout: float = 10) -> Any:
    conn = _UnixConnection(str(sock), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return json.loads(body) if resp.getheader("Content-Type", "").startswith(
            "application/json") else body.decode(errors="replace")
    finally:
        conn.close()


# ---- cgroups ------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (the one root on pure v2)."""
    if (CGROUP / "cgroup.controllers").exists():
        return [CGROUP]
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2") and fields[1].startswith(f"{CGROUP}/"):
            found.append(Path(fields[1]))
    return found


def tracking_hierarchy() -> Path:
    """Where a node's processes are counted: the pids hierarchy on v1, the root on v2."""
    if (CGROUP / "cgroup.controllers").exists():
        return CGROUP
    return CGROUP / "pids" if (CGROUP / "pids").is_dir() else cgroup_hierarchies()[0]


def cgroup_pids(top: Path) -> set[int]:
    pids: set[int] = set()
    if not top.is_dir():
        return pids
    for procs in top.rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def remove_cgroup_tree(top: Path) -> bool:
    if not top.exists():
        return True
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()),
                         key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            folder.rmdir()
        except OSError:
            pass
    return not top.exists()


# ---- one node -----------------------------------------------------------------------------


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()}")
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class LabNode:
    index: int
    name: str  # network namespace, cgroup parent, containerd namespace
    root: Path
    addr: str
    containerd: subprocess.Popen[bytes] | None = None
    dockerd: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    try_pull: bool = False
    pids_seen: set[int] = field(default_factory=set)

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def containerd_sock(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def task_dir(self) -> Path:
        return self.root / "containerd-state" / "io.containerd.runtime.v2.task" / self.name

    @property
    def cgroup(self) -> Path:
        return tracking_hierarchy() / self.name

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")

    def cli(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"node {self.index}: docker {' '.join(args)}: "
                               f"{out.stderr.strip()}")
        return out.stdout

    def api(self, path: str, timeout: float = 10) -> Any:
        return api_get(self.sock, API + path, timeout)

    def write_configs(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "containerd.toml").write_text(
            "version = 2\n"
            f'root = "{self.root / "containerd"}"\n'
            f'state = "{self.root / "containerd-state"}"\n'
            # dockerd needs none of CRI; without it containerd starts lighter
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.containerd_sock}"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.root / "opt"}"\n')
        # dockerd 20.10 keeps its engine key in /etc/docker unless told otherwise
        (self.root / "daemon.json").write_text(json.dumps(
            {"deprecated-key-path": str(self.root / "key.json")}))

    def _spawn(self, what: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        daemons = self.cgroup / "daemons"
        daemons.mkdir(parents=True, exist_ok=True)
        procs = str(daemons / "cgroup.procs")

        def enter_cgroup() -> None:  # in the child, before exec: shims inherit it
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        with open(self.root / "logs" / f"{what}.log", "ab") as log:
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.name}", *argv],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=enter_cgroup, start_new_session=True)
        self.pids_seen.add(proc.pid)
        return proc

    def start(self, timeout: float = 120) -> None:
        self.containerd = self._spawn(
            "containerd", ["containerd", "--config", str(self.root / "containerd.toml")],
            dict(os.environ))
        (self.root / "containerd.pid").write_text(str(self.containerd.pid))
        if not wait_until(lambda: self.containerd_sock.exists(), 30, 0.1):
            raise RuntimeError(f"node {self.index}: containerd did not start: "
                               f"{self.log('containerd')}")
        self.dockerd = self._spawn("dockerd", [
            "dockerd", "-H", f"unix://{self.sock}",
            "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--config-file", str(self.root / "daemon.json"),
            "--containerd", str(self.containerd_sock),
            "--containerd-namespace", self.name,
            "--containerd-plugins-namespace", f"{self.name}p",
            "--cgroup-parent", f"/{self.name}",
        ],  # no registry can be reached: a worker would try (and fail) to pull for each task
            dict(os.environ, **({} if self.try_pull else
                                {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"})))

        def up() -> bool:
            assert self.dockerd is not None
            if self.dockerd.poll() is not None:
                raise RuntimeError(f"node {self.index}: dockerd exited "
                                   f"{self.dockerd.returncode}: {self.log('dockerd')}")
            try:
                return bool(api_get(self.sock, "/_ping", 2) == "OK")
            except OSError:
                return False

        if not wait_until(up, timeout, 0.2):
            raise RuntimeError(f"node {self.index}: dockerd did not answer in {timeout:.0f} s: "
                               f"{self.log('dockerd')}")
        for proc in (self.containerd, self.dockerd):  # its iptables are its namespace's
            if proc and os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                raise RuntimeError(f"node {self.index}: pid {proc.pid} is in the host's "
                                   "network namespace")

    def log(self, what: str) -> str:
        path = self.root / "logs" / f"{what}.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def shim_sockets(self) -> set[Path]:
        """The sockets of this node's shims: a SIGKILLed shim leaves its socket behind."""
        found = set()
        for bundle in self.task_dir.glob("*/") if self.task_dir.is_dir() else []:
            try:
                sock = Path((bundle / "address").read_text().strip().removeprefix("unix://"))
            except OSError:
                sock = _shim_socket(str(self.containerd_sock), self.name, bundle.name)
            if sock.parent == SHIM_SOCKETS:
                found.add(sock)
        return found

    def crash(self) -> float:
        """SIGKILL the whole node as a crashed machine; returns the monotonic time of the
        first kill. dockerd dies first so that it reports nothing to the managers."""
        mine = cgroup_pids(self.cgroup)  # a pid file's pid is killed only if it is the node's
        bundles = list(self.task_dir.glob("*/")) if self.task_dir.is_dir() else []
        pids = [_read_pid(self.root / "dockerd.pid"), _read_pid(self.root / "containerd.pid")]
        pids += [_read_pid(b / name) for b in bundles for name in ("shim.pid", "init.pid")]
        start = time.monotonic()
        for pid in pids:
            if pid in mine:
                _kill(pid)
        self.kill_rest()
        return start

    def kill_rest(self, timeout: float = 15) -> None:
        """Kill every process left in the node's cgroup tree (shims, containers) by pid,
        until it is empty, and reap the daemons started here."""
        def empty() -> bool:
            pids = cgroup_pids(self.cgroup)
            for pid in pids:
                _kill(pid)
            self.pids_seen.update(pids)
            return not pids

        wait_until(empty, timeout, 0.05)
        for proc in (self.dockerd, self.containerd):
            if proc is not None:
                proc.kill()
                proc.wait(10)
        self.dockerd = self.containerd = None

    def stop(self, timeout: float = 40) -> None:
        """The polite stop at the end: dockerd first (it stops its containers), containerd
        after; whatever remains is killed."""
        for proc in (self.dockerd, self.containerd):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.kill_rest()


# ---- the lab ------------------------------------------------------------------------------


def _normalized_rules(text: str) -> list[str]:
    """iptables-save without its comments and packet counters."""
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
            if line and not line.startswith("#")]


def _shim_socket(containerd_address: str, namespace: str, task_id: str) -> Path:
    """Where containerd 1.6's shim for a task listens (runtime/v2/shim SocketAddress)."""
    digest = hashlib.sha256(os.path.join(containerd_address, namespace, task_id).encode())
    return SHIM_SOCKETS / digest.hexdigest()


class DockerLab:
    """`count` Docker engines on a lab bridge, one network namespace each, in one swarm:
    node 1 runs `swarm init`, nodes 2..`managers` join with the manager token, the rest
    with the worker token (managers=1: one manager, every other node a worker)."""

    def __init__(self, base: Path, count: int, progress: Progress,
                 try_pull: bool = False, managers: int = 1) -> None:
        if not 1 <= managers <= count:
            raise ValueError(f"managers must be 1..{count}, not {managers}")
        existing = set(os.listdir("/sys/class/net"))
        existing |= set(_run("ip", "netns", "list").stdout.split())
        while True:
            token = secrets.token_hex(2)[:3]
            if not any(name.startswith(f"dlab{token}") for name in existing):
                break
        self.token = token
        self.base = base
        self.progress = progress
        self.bridge = f"dlab{token}br"
        self.tag = f"docker-lab {self.bridge}"  # names the rule: remove exactly that one
        self.forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment",
                             "--comment", self.tag, "-j", "ACCEPT"]
        self.nodes = [LabNode(i, f"dlab{token}n{i}", base / f"n{i}", f"{LAB_PREFIX}.{10 + i}",
                              try_pull=try_pull) for i in range(1, count + 1)]
        self.saved_rules = _run("iptables-save").stdout
        self.shims_before = set(os.listdir(SHIM_SOCKETS)) if SHIM_SOCKETS.is_dir() else set()
        self.shim_sockets: set[Path] = set()
        self.made: list[str] = []  # what exists, for the teardown
        self.managers = self.nodes[:managers]

    @property
    def manager(self) -> LabNode:
        """Node 1, which ran `swarm init`: the node asked unless another is named (in a
        failover it may be the one that is down)."""
        return self.nodes[0]

    def up(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append("bridge")
        _run("ip", "link", "set", self.bridge, "up")
        _run("iptables", "-w", "-I", *self.forward_rule)
        self.made.append("rule")
        for node in self.nodes:
            _run("ip", "netns", "add", node.name)
            self.made.append(f"netns:{node.name}")
            host_end = f"dlab{self.token}v{node.index}"
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                 "netns", node.name)
            _run("ip", "link", "set", host_end, "master", self.bridge, "up")
            _run("ip", "-n", node.name, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            _run("ip", "-n", node.name, "link", "set", "eth0", "up")
            _run("ip", "-n", node.name, "link", "set", "lo", "up")
            node.write_configs()
        for node in self.nodes:
            node.start()
        self.progress(f"{len(self.nodes)} dockerd up (lab {self.token})")
        m = self.manager
        m.cli("swarm", "init", "--advertise-addr", m.addr, "--listen-addr", f"{m.addr}:2377")
        tokens = {role: m.cli("swarm", "join-token", "-q", role).strip()
                  for role in ("manager", "worker")}
        for node in self.nodes[1:]:
            role = "manager" if node in self.managers else "worker"
            node.cli("swarm", "join", "--token", tokens[role], "--advertise-addr", node.addr,
                     "--listen-addr", f"{node.addr}:2377", f"{m.addr}:2377")
        for node in self.nodes:
            node.node_id = node.api("/info")["Swarm"]["NodeID"]

    def import_image(self, layer_dirs: list[str]) -> None:
        tar = busybox_tar(self.base, layer_dirs)
        for node in self.nodes:
            docker_import(tar, node.env)

    def census(self, exclude: LabNode | None = None, via: LabNode | None = None,
               ) -> tuple[int, dict[str, int], dict[str, str]]:
        """Running tasks of the service on ready nodes (never on `exclude`), per node, and
        every node's state, as manager `via` (default node 1) sees them."""
        ask = via or self.manager
        states = {n["ID"]: n["Status"]["State"] for n in ask.api("/nodes")}
        filters = urllib.parse.quote(json.dumps({"service": [SERVICE],
                                                 "desired-state": ["running"]}))
        per_node: dict[str, int] = {}
        for task in ask.api(f"/tasks?filters={filters}"):
            node_id = task.get("NodeID", "")
            if (task["Status"]["State"] == "running" and states.get(node_id) == "ready"
                    and (exclude is None or node_id != exclude.node_id)):
                per_node[node_id] = per_node.get(node_id, 0) + 1
        return sum(per_node.values()), per_node, states

    def wait_running(self, replicas: int, timeout: float, via: LabNode | None = None) -> bool:
        return wait_until(_safe(lambda: self.census(via=via)[0] >= replicas), timeout, 0.25)

    def leader(self, via: LabNode | None = None, timeout: float = 10) -> str:
        """The node ID of the raft leader as manager `via` (default node 1) reports it in
        GET /nodes (ManagerStatus.Leader), "" when none is listed; an API error is raised.
        While no leader is elected dockerd holds the request (up to its 20 s swarm request
        timeout) and answers once one is."""
        listed = (via or self.manager).api("/nodes", timeout)
        if not isinstance(listed, list):
            raise RuntimeError(f"GET /nodes: {str(listed)[:200]}")
        return next((n["ID"] for n in listed if (n.get("ManagerStatus") or {}).get("Leader")),
                    "")

    def managers_reachable(self, via: LabNode | None = None) -> bool:
        """Every manager of the lab is ready and reachable in the raft, as `via` sees it."""
        listed = {n["ID"]: n for n in (via or self.manager).api("/nodes")}
        for node in self.managers:
            entry = listed.get(node.node_id, {})
            if (entry.get("Status", {}).get("State") != "ready"
                    or (entry.get("ManagerStatus") or {}).get("Reachability") != "reachable"):
                return False
        return True

    def containers(self, node: LabNode, stopped: bool = False) -> int:
        return len(node.api(f"/containers/json?all={int(stopped)}"))

    def settled(self, node: LabNode, via: LabNode | None = None) -> bool:
        """A revived node is ready, runs no container, and manager `via` (default node 1)
        sees none of its old tasks in a live state any more (they stay listed, shut down,
        as task history)."""
        if self.census(via=via)[2].get(node.node_id) != "ready" or self.containers(node):
            return False
        filters = urllib.parse.quote(json.dumps({"service": [SERVICE], "node": [node.node_id]}))
        return all(t["Status"]["State"] in TERMINAL for t in
                   (via or self.manager).api(f"/tasks?filters={filters}"))

    def crash(self, node: LabNode) -> float:
        self.shim_sockets |= node.shim_sockets()
        return node.crash()

    def revive(self, node: LabNode, timeout: float, via: LabNode | None = None) -> str:
        """Restart a crashed node (it rejoins with its old role) and wait until manager `via`
        (default node 1) sees it ready and settled; returns what did not happen, or ""."""
        node.start()
        if not wait_until(_safe(lambda: self.census(via=via)[2].get(node.node_id) == "ready"),
                          timeout, 0.5):
            return f"node {node.index} not ready {timeout:.0f} s after its restart"
        if not wait_until(_safe(lambda: self.settled(node, via)), timeout, 0.5):
            return f"node {node.index} not settled {timeout:.0f} s after its restart"
        return ""

    def take_down(self, logs: Path) -> str:
        """down(), saying so; the daemons' logs are kept in `logs` and the lab's folder
        removed. What down() returns."""
        self.progress("tearing the lab down")
        cleanup = self.down()
        self.progress(f"cleanup: {cleanup}")
        for node in self.nodes:
            if (node.root / "logs").is_dir():
                shutil.copytree(node.root / "logs", logs / f"n{node.index}", dirs_exist_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return cleanup

    def down(self) -> str:
        """Stop everything by pid and remove every trace; returns what could not be."""
        problems: list[str] = []
        alive = [n for n in self.nodes if n.dockerd is not None and n.dockerd.poll() is None]
        asked = next((n for n in self.managers if n in alive), None)
        if asked is not None:
            try:
                asked.cli("service", "rm", SERVICE, timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            wait_until(_safe(lambda: all(self.containers(n, stopped=True) == 0 for n in alive)),
                       60, 0.5)
        for node in self.nodes:  # tasks a polite stop may not get to: their shims' sockets
            self.shim_sockets |= node.shim_sockets()
        for node in reversed(self.nodes):
            node.stop()
        for node in self.nodes:
            left = [pid for pid in node.pids_seen if Path(f"/proc/{pid}").exists()
                    and not _is_zombie(pid)]
            if left:
                problems.append(f"node {node.index} processes still alive: {left}")
        for sock in self.shim_sockets:
            if sock.exists():
                sock.unlink()
        unmount_under(self.base)
        for node in self.nodes:
            for hierarchy in cgroup_hierarchies():
                if not remove_cgroup_tree(hierarchy / node.name):
                    problems.append(f"cgroup {hierarchy / node.name} left")
        for node in self.nodes:
            if f"netns:{node.name}" in self.made:
                _run("ip", "netns", "delete", node.name, check=False)
            host_end = f"dlab{self.token}v{node.index}"
            if Path(f"/sys/class/net/{host_end}").exists():
                _run("ip", "link", "delete", host_end, check=False)
        if "bridge" in self.made:
            _run("ip", "link", "delete", self.bridge, check=False)
        if "rule" in self.made:
            for _ in range(16):
                if _run("iptables", "-w", "-D", *self.forward_rule, check=False).returncode:
                    break
        rules = self.iptables_check()
        problems += self.leftovers()
        if rules.startswith("iptables:"):
            problems.append(rules)
        return "; ".join(problems or ["clean"] + ([rules] if rules else []))

    def leftovers(self) -> list[str]:
        found = []
        netns = _run("ip", "netns", "list").stdout
        links = os.listdir("/sys/class/net")
        found += [f"netns {n.name}" for n in self.nodes if n.name in netns]
        found += [f"link {link}" for link in links if link.startswith(f"dlab{self.token}")]
        found += [f"mount {line.split()[1]}" for line in
                  Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.base))]
        if SHIM_SOCKETS.is_dir():
            new = set(os.listdir(SHIM_SOCKETS)) - self.shims_before
            if new:
                found.append(f"{len(new)} new socket(s) in {SHIM_SOCKETS}")
        return found

    def iptables_check(self) -> str:
        """iptables-save before and after, FORWARD policy included. The lab's dockerds run
        in their own network namespaces (checked at their start), so the host's only change
        of ours is the tagged FORWARD rule. Other differences are other runs' on this
        machine (pyswarm engines add tagged FORWARD accepts as they start, a dockerd on the
        host sets FORWARD to DROP): reported, never overwritten, since restoring the old
        set would delete rules that live runs rely on."""
        before = _normalized_rules(self.saved_rules)
        after = _normalized_rules(_run("iptables-save").stdout)
        if before == after:
            return ""
        ours = [line for line in after if self.bridge in line or self.tag in line]
        if ours:
            return f"iptables: the lab's rule is still there: {ours}"
        policy_before = [line for line in before if line.startswith(":FORWARD")]
        policy_after = [line for line in after if line.startswith(":FORWARD")]
        gone = [line for line in before if line not in after]
        new = [line for line in after if line not in before]
        note = (f"other runs changed iptables meanwhile ({len(new)} lines added, {len(gone)} "
                "removed; left alone)")
        if policy_before != policy_after:
            note += f"; FORWARD policy {policy_after} (was {policy_before}), not by this lab"
        return note


def _safe(check: Callable[[], bool]) -> Callable[[], bool]:
    """A wait_until check for which an unanswered API call means not yet."""
    def safe() -> bool:
        try:
            return check()
        except (OSError, RuntimeError, http.client.HTTPException, KeyError):
            return False
    return safe


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ---- the benchmark ------------------------------------------------------------------------


def _figure(values: Iterable[float | None], how: Callable[[list[float]], float]) -> float:
    done = [v for v in values if v is not None]
    return round(how(done), 2) if done else float("nan")


def _cannot_run() -> str | None:
    """Why the lab cannot run here, or None."""
    missing = docker_missing() or next(
        (f"{tool} is not installed" for tool in ("nsenter", "ip", "iptables", "iptables-save",
                                                 "containerd-shim-runc-v2")
         if not shutil.which(tool)), None)
    if missing:
        return missing
    return "needs root" if os.geteuid() != 0 else None


def _clocked(progress: Progress) -> Progress:
    """`progress` with the seconds since now in front of each message."""
    began = time.monotonic()

    def say(message: str) -> None:
        progress(f"[docker-lab +{time.monotonic() - began:5.0f}s] {message}")
    return say


def docker_recovery(base: Path, layer_dirs: list[str], nodes: int = 3, replicas: int = 30,
                    rounds: int = 1, timeout: float = 300, settle: float = 5.0,
                    progress: Progress = print, try_pull: bool = False,
                    ) -> dict[str, float | str]:
    """Docker Swarm's recovery from a crashed worker, in seconds.

    Returns docker_recovery_median_s / docker_recovery_max_s (kill until `replicas` tasks
    run again, over `rounds`), docker_down_detect_s / docker_down_detect_max_s (kill until
    the node shows Down), docker_converge_<replicas>_s (service create until all run),
    docker_rounds (per round, text) and docker_cleanup ("clean" or what was left); a round
    that does not recover in `timeout` adds docker_note. When Docker cannot run here:
    {"docker_skipped": reason}; when it fails after the lab was up, the figures so far and
    docker_error. `base` must exist; the lab lives in base/docker-lab and is removed after
    (the daemons' logs are kept in base/docker-lab-logs).

    The workers are told not to try pulling each task's image (no registry can be reached
    here; DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1); try_pull=True lets them try and fail, as
    they would by default. Docker's own defaults are kept otherwise: a 5 s dispatcher
    heartbeat (a node is Down after a few missed ones) and a 5 s restart delay.
    """
    missing = _cannot_run()
    if missing:
        return {"docker_skipped": missing}
    if nodes < 2:
        raise ValueError("a recovery lab needs a worker to kill: nodes >= 2")
    say = _clocked(progress)

    root = base / "docker-lab"
    root.mkdir()
    result: dict[str, float | str] = {}
    lab = DockerLab(root, nodes, say, try_pull)
    stage = "setup"
    try:
        try:
            lab.up()
            lab.import_image(layer_dirs)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["docker_skipped"] = f"Docker Swarm lab did not come up: {exc}"
            return result
        say(f"swarm of {nodes} up, busybox imported; creating {replicas} replicas")
        stage = "converge"
        start = time.monotonic()
        lab.manager.cli("service", "create", "--detach", "--no-resolve-image", "--name", SERVICE,
                        "--replicas", str(replicas), DOCKER_IMAGE, "sleep", "1d")
        if not lab.wait_running(replicas, timeout):
            result["docker_skipped"] = f"{replicas} replicas not running after {timeout:.0f} s"
            return result
        result[f"docker_converge_{replicas}_s"] = round(time.monotonic() - start, 2)
        say(f"{replicas} running after {result[f'docker_converge_{replicas}_s']} s")
        recoveries: list[float | None] = []
        downs: list[float | None] = []
        notes: list[str] = []
        rows: list[str] = []
        for rnd in range(1, rounds + 1):
            stage = f"round {rnd}"
            if rnd > 1:  # every round from an even spread: a revived node comes back empty
                lab.manager.cli("service", "scale", "--detach", f"{SERVICE}=0")
                wait_until(_safe(lambda: all(lab.containers(n) == 0 for n in lab.nodes)),
                           timeout, 0.5)
                lab.manager.cli("service", "scale", "--detach", f"{SERVICE}={replicas}")
                if not lab.wait_running(replicas, timeout):
                    notes.append(f"round {rnd}: {replicas} not running again before it")
                    break
            _, per_node, _ = lab.census()
            workers = lab.nodes[1:]
            most = max(per_node.get(n.node_id, 0) for n in workers)
            candidates = [n for n in workers if per_node.get(n.node_id, 0) == most]
            victim = candidates[(rnd - 1) % len(candidates)]
            say(f"round {rnd}: crashing node {victim.index} ({most} of {replicas} tasks)")
            killed_at = lab.crash(victim)
            down_s: float | None = None
            recovered_s: float | None = None
            while time.monotonic() - killed_at < timeout:
                try:
                    total, _, states = lab.census(exclude=victim)
                except (OSError, RuntimeError, http.client.HTTPException):
                    time.sleep(0.25)
                    continue
                now = time.monotonic() - killed_at
                if down_s is None and states.get(victim.node_id) == "down":
                    down_s = round(now, 2)
                    say(f"round {rnd}: node {victim.index} down after {down_s} s")
                if total >= replicas and (down_s is not None or most == 0):
                    recovered_s = round(now, 2)
                    break
                time.sleep(0.25)
            if recovered_s is not None:  # the same, as `docker service ps` shows it
                shown = lab.manager.cli("service", "ps", SERVICE, "--filter",
                                        "desired-state=running", "--format",
                                        "{{.CurrentState}}").split("\n")
                cli_running = sum(1 for row in shown if row.startswith("Running"))
                if cli_running < replicas:
                    notes.append(f"round {rnd}: docker service ps shows {cli_running} Running")
            recoveries.append(recovered_s)
            downs.append(down_s)
            if recovered_s is None:
                notes.append(f"round {rnd}: not all {replicas} running {timeout:.0f} s after "
                             "the kill")
            say(f"round {rnd}: {replicas} running again after {recovered_s} s; "
                f"restarting node {victim.index}")
            rows.append(f"r{rnd}: node {victim.index} held {most}, down {down_s} s, "
                        f"recovered {recovered_s} s")
            stage = f"round {rnd} (restarting node {victim.index})"
            problem = lab.revive(victim, timeout)
            if problem:
                notes.append(f"round {rnd}: {problem}")
            time.sleep(settle)
        result.update({
            "docker_recovery_median_s": _figure(recoveries, statistics.median),
            "docker_recovery_max_s": _figure(recoveries, max),
            "docker_down_detect_s": _figure(downs, statistics.median),
            "docker_down_detect_max_s": _figure(downs, max),
            "docker_rounds": "; ".join(rows),
        })
        if notes:
            result["docker_note"] = "; ".join(notes)
        return result
    except (RuntimeError, OSError, subprocess.SubprocessError, http.client.HTTPException) as exc:
        result["docker_error"] = f"{stage}: {exc}"
        return result
    finally:
        result["docker_cleanup"] = lab.take_down(base / "docker-lab-logs")


_API_ERRORS = (OSError, RuntimeError, http.client.HTTPException, ValueError, KeyError)


def _watch_leader(lab: DockerLab, via: LabNode, victim: LabNode, killed_at: float,
                  timeout: float, stop: threading.Event, seen: dict[str, Any]) -> None:
    """Poll `via` until it reports a leader other than `victim`; puts the seconds since the
    kill in seen["s"] and the leader's node ID in seen["id"]. An API error or the old
    leader still listed means not yet. While there is no leader, dockerd holds a request
    (up to its 20 s swarm request timeout) and answers it as soon as one is elected: each
    call is given longer than that, so that the answer is seen when it comes."""
    while not stop.is_set() and time.monotonic() - killed_at < timeout:
        try:
            leader = lab.leader(via, timeout=max(1.0, min(
                30.0, timeout - (time.monotonic() - killed_at))))
        except _API_ERRORS:
            leader = ""
        if leader and leader != victim.node_id:
            seen.update(s=round(time.monotonic() - killed_at, 2), id=leader)
            return
        stop.wait(0.25)


def _failover_round(lab: DockerLab, rnd: int, target: int, asked: LabNode, timeout: float,
                    say: Progress) -> tuple[str, dict[str, float | None], list[str],
                                            LabNode | None]:
    """One round of docker_failover: the leader (found through `asked`) is crashed, the
    service scaled to `target` through a surviving manager, the leader restarted. Returns
    the round's text, its three times (None: not within `timeout` of the kill), notes, and
    the manager to ask next (None when the lab did not come back whole)."""
    by_id = {n.node_id: n for n in lab.nodes}
    leading: list[str] = []

    def leader_known() -> bool:
        leading.append(lab.leader(asked))
        return leading[-1] in by_id

    times: dict[str, float | None] = {"leader": None, "scale": None, "converged": None}
    if not wait_until(_safe(leader_known), timeout, 0.25):
        return (f"r{rnd}: no leader", times,
                [f"round {rnd}: node {asked.index} knew no leader for {timeout:.0f} s"], None)
    victim = by_id[leading[-1]]
    via = next(n for n in lab.managers if n is not victim)
    held = lab.census(via=via)[1].get(victim.node_id, 0)
    say(f"round {rnd}: crashing node {victim.index}, the leader ({held} tasks); asking node "
        f"{via.index}, scaling to {target}")
    killed_at = lab.crash(victim)

    def since() -> float:
        return round(time.monotonic() - killed_at, 2)

    down: list[float] = []  # when `via` first shows the victim Down, on the way
    wanted = urllib.parse.quote(json.dumps({"service": [SERVICE], "desired-state": ["running"]}))

    def converged() -> bool:
        """`target` tasks run on live nodes (the victim's do not count) and no more are
        wanted: exactly `target` tasks whose desired state is running (a scale down is
        converged only once the extra task is gone)."""
        running, _, states = lab.census(exclude=victim, via=via)
        if not down and states.get(victim.node_id) == "down":
            down.append(since())
        return running == target and len(via.api(f"/tasks?filters={wanted}")) == target

    seen: dict[str, Any] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_leader, daemon=True,
                               args=(lab, via, victim, killed_at, timeout, stop, seen))
    watcher.start()
    tries = 0
    refusal = ""
    try:
        while since() < timeout:
            tries += 1
            try:
                via.cli("service", "scale", "--detach", f"{SERVICE}={target}",
                        timeout=max(1.0, timeout - since()))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                refusal = str(exc).rsplit("scale: ", 1)[-1][:200]
                time.sleep(0.25)
                continue
            times["scale"] = since()
            break
        if times["scale"] is not None:
            say(f"round {rnd}: scale accepted after {times['scale']} s ({tries} tries"
                + (f"; the last refusal: {refusal}" if tries > 1 else "") + ")")
            if wait_until(_safe(converged), timeout - since(), 0.25):
                times["converged"] = since()
        watcher.join(max(0.0, timeout - since()))
    finally:
        stop.set()
        watcher.join(5)
    times["leader"] = seen.get("s")
    new = by_id.get(seen.get("id", ""))
    notes = [f"round {rnd}: no {key} {timeout:.0f} s after the kill"
             for key, value in times.items() if value is None]
    row = (f"r{rnd}: leader node {victim.index} ({held} tasks) killed, node "
           f"{new.index if new else '?'} leader after {times['leader']} s, scale to {target} "
           f"accepted after {times['scale']} s ({tries} tries), node {victim.index} down after "
           f"{down[0] if down else None} s, {target} running after {times['converged']} s")
    say(f"{row}; restarting node {victim.index}")
    problem = lab.revive(victim, timeout, via)
    if not problem and not wait_until(_safe(lambda: lab.managers_reachable(via)), timeout, 0.5):
        problem = f"managers not all reachable {timeout:.0f} s after the restart"
    if problem:
        return row, times, notes + [f"round {rnd}: {problem}"], None
    say(f"round {rnd}: node {victim.index} back, every manager reachable")
    return row, times, notes, via


def docker_failover(base: Path, layer_dirs: list[str], managers: int = 3, replicas: int = 6,
                    rounds: int = 1, timeout: float = 180, progress: Progress = print,
                    ) -> dict[str, float | str]:
    """Docker Swarm's recovery from a crashed manager that was the raft leader, in seconds.

    The lab has `managers` nodes, all managers (and all running tasks, as Swarm's managers
    do by default); a service of `replicas` replicas of `sleep 1d` runs. Each round reads
    the leader through a manager, crashes it as docker_recovery crashes a worker (dockerd
    first, by pid), and from that kill polls a surviving manager (the first by index):

    - leader: until it reports, in GET /nodes, a leader that is not the killed node (an API
      error means not yet; while no leader is elected dockerd holds the request, up to
      its 20 s swarm request timeout, and answers it once one is);
    - scale: until `docker service scale --detach dlab=<n>` against it exits 0, tried from
      the kill, again 0.25 s after each failure (the CLI's call is held the same way, so
      one try is the rule); n alternates between replicas+1 (odd rounds) and replicas
      (even rounds), so that each round is a real change;
    - converged: until n tasks run on live nodes (the killed node's do not count) and no
      more are wanted (exactly n tasks whose desired state is running). The killed node's
      tasks are replaced only once the new leader marks it Down; when that was seen is in
      the round's text.

    The node is then restarted (it rejoins as a manager) and the next round waits until it
    is ready, settled, and every manager is reachable in the raft again.

    Returns docker_failover_{leader,scale,converged}_{median,max}_s over the rounds,
    docker_failover_rounds (per round, text) and docker_failover_cleanup ("clean" or what
    was left); a round that times out (`timeout`, per wait) adds docker_failover_note and
    counts in no figure. When Docker cannot run here: {"docker_skipped": reason}; when it
    fails after the lab was up, the figures so far and docker_failover_error. `base` must
    exist; the lab lives in base/docker-failover-lab and is removed after (the daemons'
    logs are kept in base/docker-failover-lab-logs).

    Docker's defaults are kept: raft's election tick (10 ticks of 1 s: etcd's raft draws
    each election timeout from 10-20 s) and heartbeat, the dispatcher's 5 s heartbeat (the
    new leader marks a silent node Down about 30 s after it takes over), the 5 s restart
    delay; images are not pulled (no registry can be reached;
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1, as in docker_recovery).
    """
    missing = _cannot_run()
    if missing:
        return {"docker_skipped": missing}
    if managers < 3:
        raise ValueError("a failover keeps quorum only with managers >= 3")
    say = _clocked(progress)

    root = base / "docker-failover-lab"
    root.mkdir()
    result: dict[str, float | str] = {}
    figures: dict[str, list[float | None]] = {"leader": [], "scale": [], "converged": []}
    notes: list[str] = []
    rows: list[str] = []

    def summarize() -> None:
        if not rows:
            return
        for key, values in figures.items():
            result[f"docker_failover_{key}_median_s"] = _figure(values, statistics.median)
            result[f"docker_failover_{key}_max_s"] = _figure(values, max)
        result["docker_failover_rounds"] = "; ".join(rows)
        if notes:
            result["docker_failover_note"] = "; ".join(notes)

    lab = DockerLab(root, managers, say, managers=managers)
    stage = "setup"
    try:
        try:
            lab.up()
            lab.import_image(layer_dirs)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["docker_skipped"] = f"Docker Swarm lab did not come up: {exc}"
            return result
        say(f"swarm of {managers} managers up, busybox imported; creating {replicas} replicas")
        stage = "converge"
        lab.manager.cli("service", "create", "--detach", "--no-resolve-image", "--name", SERVICE,
                        "--replicas", str(replicas), DOCKER_IMAGE, "sleep", "1d")
        if not lab.wait_running(replicas, timeout):
            result["docker_skipped"] = f"{replicas} replicas not running after {timeout:.0f} s"
            return result
        asked = lab.manager  # a live manager, to find the leader through
        for rnd in range(1, rounds + 1):
            stage = f"round {rnd}"
            row, times, trouble, next_asked = _failover_round(
                lab, rnd, replicas + 1 if rnd % 2 else replicas, asked, timeout, say)
            rows.append(row)
            notes += trouble
            for key, value in times.items():
                figures[key].append(value)
            if next_asked is None:
                break  # a lab that did not come back whole is no start for another round
            asked = next_asked
        summarize()
        return result
    except (RuntimeError, OSError, subprocess.SubprocessError, http.client.HTTPException,
            KeyError) as exc:
        summarize()
        result["docker_failover_error"] = f"{stage}: {exc!r}"
        return result
    finally:
        result["docker_failover_cleanup"] = lab.take_down(base / "docker-failover-lab-logs")


def host_busybox_layers() -> list[str] | str:
    """The layer folders of busybox:latest in the host's pyswarm image store (what `make
    setup` builds), or why there are none: what the benchmarks import into Docker."""
    from pyswarm.common.paths import EngineConfig
    from pyswarm.worker.images.store import ImageStore

    try:
        image = ImageStore(EngineConfig.from_env().images_dir).get("busybox:latest")
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return f"no busybox:latest in the host's image store ({exc}); run make setup"
    return list(image.layer_dirs)


def with_host_busybox(run: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """`run(base, layers, **kwargs)` (docker_recovery, docker_failover) in a throw-away
    folder with the host's busybox layers: a benchmark's Docker peer; {"docker_skipped":
    why} without those layers."""
    layers = host_busybox_layers()
    if isinstance(layers, str):
        return {"docker_skipped": layers}
    with tempfile.TemporaryDirectory(prefix="pyswarm-bench-docker-") as tmp:
        return dict(run(Path(tmp), layers, **kwargs))


# ---- python bench/peers/docker_lab.py -----------------------------------------------------


def pyswarm_busybox_layers(base: Path) -> list[str]:
    """pyswarm's busybox image built in a throw-away engine under base (as bench/converge.py
    does); its layer folders stay under base after the engine is stopped."""
    from pyswarm.worker.images.store import ImageStore
    from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env

    folder = base / "pyswarm"
    folder.mkdir()
    daemon = Daemon(folder, engine_env(folder, index=9))
    try:
        daemon.start()
        build_base_image(daemon)
    finally:
        cleanup(daemon)
    return [str(d) for d in ImageStore(daemon.root / "images").get("busybox").layer_dirs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failover", action="store_true", help="measure the crash of the "
                        "raft leader in a swarm of --nodes managers (docker_failover) instead "
                        "of a worker's (docker_recovery)")
    parser.add_argument("--nodes", type=int, default=3, help="with --failover: managers")
    parser.add_argument("--replicas", type=int, help="default 30; with --failover 6")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, help="per wait, seconds (default 300; with "
                        "--failover 180)")
    parser.add_argument("--layers", nargs="+", help="busybox layer folders (default: build "
                        "pyswarm's busybox image in a throw-away engine)")
    parser.add_argument("--try-pull", action="store_true", help="let workers try (and fail) "
                        "to pull each task's image first, as Docker does by default")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("docker_lab: needs root")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    base = Path(tempfile.mkdtemp(prefix="dlab-"))
    try:
        layers = opts.layers or pyswarm_busybox_layers(base)
        replicas = opts.replicas or (6 if opts.failover else 30)
        timeout = opts.timeout or (180 if opts.failover else 300)
        result: dict[str, object] = {
            "benchmark": "docker_failover" if opts.failover else "docker_recovery",
            "managers" if opts.failover else "nodes": opts.nodes, "replicas": replicas,
            "rounds": opts.rounds}
        if opts.failover:
            result.update(docker_failover(base, layers, opts.nodes, replicas, opts.rounds,
                                          timeout, progress=progress))
        else:
            result.update(docker_recovery(base, layers, opts.nodes, replicas, opts.rounds,
                                          timeout, progress=progress, try_pull=opts.try_pull))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:28} {value}")
    if opts.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
