"""The lab's etcd cluster (``lab up --store etcd``): one member on every manager node.

Member ``etcdK`` runs on manager ``nodeK`` the way etcd runs beside a manager on a real
machine: Debian's ``/usr/bin/etcd``, started inside the node's network namespace only (as
its daemon is, see nodes.py), its own session, data in ``<node root>/etcd`` and log in
``<node root>/etcd.log``. It serves clients on ``http://AK:2379`` (and on 127.0.0.1:2379
inside the node, so a plain ``etcdctl`` there finds it) and its peers on ``http://AK:2380``.
Every member is named after its node, and the cluster token is the lab's name.

The lab host, ``.254`` on the lab bridge, asks every member's ``/health`` directly: the
only traffic sent is to the lab's own addresses.

Command lines are built by pure functions (tests/unit/test_lab_etcd.py); the process work
is below them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from . import layout, nodes, procs
from .layout import NodeLayout

ETCD = "/usr/bin/etcd"  # Debian's etcd-server
CLIENT_PORT = 2379
PEER_PORT = 2380
# The store's snapshot and batch writes carry whole objects: room for a large one. The
# number of ops per txn stays etcd's default, 128, which is what the manager's EtcdBackend
# assumes (max_txn_ops); heartbeat and election timings stay etcd's defaults (100 ms and
# 1 s): the members share one machine, so their links are never the slow part.
MAX_REQUEST_BYTES = 10 << 20
EXEC_TIMEOUT = 10.0  # seconds nsenter gets to exec etcd
HEALTH_TIMEOUT = 60.0  # a fresh member elects a leader in a few seconds, even on a busy host
STOP_GRACE = 10.0  # etcd hands its leadership over on SIGTERM: seconds before SIGKILL


class EtcdError(RuntimeError):
    pass


# ---- names and command lines (pure) ------------------------------------------------------


def client_url(member: NodeLayout) -> str:
    return f"http://{member.address}:{CLIENT_PORT}"


def peer_url(member: NodeLayout) -> str:
    return f"http://{member.address}:{PEER_PORT}"


def initial_cluster(members: Sequence[NodeLayout]) -> str:
    """etcd's --initial-cluster: ``node1=http://A1:2380,node2=http://A2:2380,...``."""
    return ",".join(f"{m.name}={peer_url(m)}" for m in members)


def store_url(members: Sequence[NodeLayout]) -> str:
    """What `pyswarm init --store` is given: every member's client endpoint."""
    return "etcd://" + ",".join(f"{m.address}:{CLIENT_PORT}" for m in members)


def command(member: NodeLayout, members: Sequence[NodeLayout], existing: bool,
            binary: str = ETCD) -> list[str]:
    """The command line of ``member``; ``existing`` when it restarts from its data dir."""
    if member not in members:
        raise ValueError(f"{member.name} is not one of the members")
    return [
        binary,
        "--name", member.name,
        "--data-dir", str(member.etcd_dir),
        "--listen-client-urls", f"{client_url(member)},http://127.0.0.1:{CLIENT_PORT}",
        "--advertise-client-urls", client_url(member),
        "--listen-peer-urls", peer_url(member),
        "--initial-advertise-peer-urls", peer_url(member),
        "--initial-cluster", initial_cluster(members),
        "--initial-cluster-token", member.lab,
        "--initial-cluster-state", "existing" if existing else "new",
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        # a member back from a partition asks before it starts an election: without it, its
        # inflated term would depose the majority's leader (and with it every lease's
        # renewal for an election's length); etcd 3.5 turns it on by default
        "--pre-vote=true",  # a Go bool flag: only this form
        "--logger", "zap",  # etcd 3.4's default (capnslog) warns that it is deprecated
    ]


def data_dir(argv: Sequence[str]) -> str:
    """The --data-dir of an etcd command line ("" if none): what says which member a
    process is, rather than its name."""
    return next((b for a, b in pairwise(argv) if a == "--data-dir"), "")


def is_member_of(argv: Sequence[str], member: NodeLayout) -> bool:
    return data_dir(argv) == str(member.etcd_dir)


def quorum(count: int) -> int:
    """How many members a cluster of ``count`` needs running to have a leader."""
    return count // 2 + 1


# ---- processes ---------------------------------------------------------------------------


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def member_pid(member: NodeLayout, recorded: int) -> int:
    """The recorded pid if it is still this member's live etcd, else 0."""
    if recorded and procs.alive(recorded) and is_member_of(_argv(recorded), member):
        return recorded
    return 0


def lab_pids(lab: str) -> set[int]:
    """Every live etcd member of lab ``lab`` on the machine, found by its data dir (for
    `lab down`, even without a record, or with its namespace already gone)."""
    base = layout.lab_dir(lab)
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (d := data_dir(_argv(int(entry.name)))):
            if Path(d).parent.parent == base and Path(d).name == "etcd":
                found.add(int(entry.name))
    return {p for p in found if procs.alive(p)} - procs.protected()


def has_data(member: NodeLayout) -> bool:
    """Whether the member ran before (its data dir holds its WAL and snapshots)."""
    return (member.etcd_dir / "member").is_dir()


def _env(member: NodeLayout) -> dict[str, str]:
    # etcd also reads ETCD_* variables and refuses one that a flag repeats: none of the
    # caller's may reach a member.
    return {k: v for k, v in nodes.node_env(member).items() if not k.startswith("ETCD")}


def check_installed() -> None:
    if not os.access(ETCD, os.X_OK):
        raise EtcdError(f"--store etcd: {ETCD} is not installed: apt-get install etcd-server "
                        f"(make setup installs it)")


def start(member: NodeLayout, members: Sequence[NodeLayout]) -> int:
    """Start the member inside its node (new, or existing when it has data); its pid."""
    check_installed()
    member.root.mkdir(parents=True, exist_ok=True)
    argv = command(member, members, existing=has_data(member))
    with open(member.etcd_log, "ab") as log:
        log.write(f"---- {time.strftime('%Y-%m-%dT%H:%M:%S')} lab: {' '.join(argv)}\n"
                  .encode())
        log.flush()
        # nsenter enters the namespace and execs etcd in place: the pid is etcd's.
        launch = nodes.inside(member, argv)
        proc = subprocess.Popen(launch, env=_env(member),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    # The pid is known as this member by its command line (member_pid). Return only once
    # the launcher (nsenter) has exec'd etcd: nsenter's own command line names the member
    # too, and while a process execs /proc shows it with none, which a check then took for
    # a member that had exited (twice in tests/root/test_ha.py's restarts).
    deadline = time.monotonic() + EXEC_TIMEOUT
    while not _execd(_argv(proc.pid), launch[0], member):
        if proc.poll() is not None:
            raise EtcdError(f"etcd member {member.member} ({member.name}) exited at once "
                            f"(status {proc.returncode}); see {member.etcd_log}:\n"
                            f"{_log_tail(member)}".rstrip())
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            raise EtcdError(f"etcd member {member.member} ({member.name}) did not start "
                            f"within {EXEC_TIMEOUT:.0f}s (nsenter never ran etcd)")
        time.sleep(0.01)
    return proc.pid


def _execd(seen: Sequence[str], launcher: str, member: NodeLayout) -> bool:
    """Whether a command line read from /proc is the member's etcd itself (not yet its
    launcher, and not the empty one of a process in the middle of an exec)."""
    return bool(seen) and seen[0] != launcher and is_member_of(seen, member)


def _log_tail(member: NodeLayout, chars: int = 1200) -> str:
    try:
        return member.etcd_log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def health(member: NodeLayout, timeout: float = 1.0) -> str:
    """"" when the member answers /health with {"health": "true"}; else why not."""
    # No proxy: the host's http_proxy must never see (or carry) lab traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{client_url(member)}/health", timeout=timeout) as reply:
            body = reply.read(4096)
    except urllib.error.HTTPError as exc:  # 503 with a body while it has no leader
        body = exc.read(4096)
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    try:
        answer = json.loads(body)
    except ValueError:
        return f"unexpected answer {body[:100]!r}"
    if isinstance(answer, dict) and answer.get("health") == "true":
        return ""
    return f"answered {body.decode(errors='replace').strip()[:200]}"


def wait_healthy(members: Sequence[NodeLayout], pids: dict[str, int],
                 timeout: float = HEALTH_TIMEOUT) -> None:
    """Wait until each of ``members`` is healthy; fail at once if one's process ends."""
    deadline = time.monotonic() + timeout
    why: dict[str, str] = {}
    while True:
        for m in members:
            pid = pids.get(m.name, 0)
            if not member_pid(m, pid):
                raise EtcdError(f"etcd member {m.member} ({m.name}) exited; see {m.etcd_log}:\n"
                                f"{_log_tail(m)}".rstrip())
        why = {m.member: reason for m in members if (reason := health(m))}
        if not why:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    unhealthy = [m for m in members if m.member in why]
    detail = "; ".join(f"{m.member}: {why[m.member]}" for m in unhealthy)
    logs = ", ".join(str(m.etcd_log) for m in unhealthy)
    raise EtcdError(f"etcd not healthy after {timeout:.0f}s ({detail}); see {logs}; the "
                    f"end of {unhealthy[0].etcd_log}:\n{_log_tail(unhealthy[0])}".rstrip())


def kill(member: NodeLayout, pid: int) -> bool:
    """SIGKILL the member (a crash); whether it was running."""
    pid = member_pid(member, pid)
    if not pid:
        return False
    procs.signal_all([pid], signal.SIGKILL)
    procs.wait_gone([pid], 5)
    return True


def stop(member: NodeLayout, pid: int, grace: float = STOP_GRACE) -> bool:
    """SIGTERM the member (it leaves cleanly, handing leadership over), SIGKILL after
    ``grace`` seconds; whether it was running."""
    pid = member_pid(member, pid)
    if not pid:
        return False
    procs.signal_all([pid], signal.SIGTERM)
    if procs.wait_gone([pid], grace):
        procs.signal_all([pid], signal.SIGKILL)
        procs.wait_gone([pid], 5)
    return True


def kill_lab(lab: str) -> int:
    """SIGKILL every member of the lab still running anywhere; how many there were."""
    pids = lab_pids(lab)
    procs.signal_all(pids, signal.SIGKILL)
    procs.wait_gone(pids, 5)
    return len(pids)
