"""A lab node's processes, cgroups and mounts: finding them, signalling them, removing them.

A node's processes are of two kinds, and each is found by what it is, never by its name:

- its daemon, the daemon's zygote and the container shims run in the node's network
  namespace (the daemon was started there, the others are its descendants): found by the
  inode of ``/proc/PID/ns/net``;
- its containers have network namespaces of their own, but every one lives in a cgroup
  under the node's cgroup parent, in every hierarchy: cgroup v1 (``pids``, ``memory``...,
  one folder per hierarchy) and v2 (one folder), found through ``cgroup.procs``.

Processes of the calling command and its ancestors are never signalled (a `lab kill` run
from a shell inside the node must not kill itself half-way).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from .layout import NodeLayout

MNT_DETACH = 2


def _ns_inode(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    return st.st_dev, st.st_ino


def alive(pid: int) -> bool:
    """Running and not a zombie (a zombie is dead: it only waits for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def protected() -> set[int]:
    """This process and its ancestors."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def in_netns(netns_path: Path) -> set[int]:
    """Pids whose network namespace is the one bound at ``netns_path``."""
    want = _ns_inode(netns_path)
    if want is None:
        return set()
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _ns_inode(f"/proc/{entry.name}/ns/net") == want:
            found.add(int(entry.name))
    return found


def cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy's mount point, v1 and v2 (hybrid machines have both)."""
    points: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5 and rfields and rfields[0] in ("cgroup", "cgroup2"):
                point = Path(fields[4].replace("\\040", " "))
                if point not in points:
                    points.append(point)
    return points


def cgroup_dirs(parent: str) -> list[Path]:
    """The node's cgroup folders in every hierarchy, deepest first (the order to remove)."""
    found: list[Path] = []
    for mount in cgroup_mounts():
        top = mount / parent
        if top.is_dir():
            below = [Path(d) for d, _, _ in os.walk(top)]
            found.extend(sorted(below, key=lambda p: len(p.parts), reverse=True))
    return found


def in_cgroups(parent: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(parent):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return pids


def node_processes(node: NodeLayout) -> set[int]:
    return {p for p in in_netns(node.netns_path) | in_cgroups(node.cgroup_parent)
            if alive(p)} - protected()


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait for the processes to end; those still alive at the deadline."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left:
        left = {p for p in left if alive(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return left


def kill_node(node: NodeLayout, daemon_pid: int = 0, rounds: int = 50) -> int:
    """SIGKILL every process of the node until none is left; how many were killed.

    The daemon goes first so it cannot start anything more; then the rest in rounds,
    because a shim killed mid-create may leave an init that only now shows in a cgroup.
    """
    killed: set[int] = set()
    if daemon_pid and alive(daemon_pid) and daemon_pid not in protected():
        signal_all([daemon_pid], signal.SIGKILL)
        killed.add(daemon_pid)
    for _ in range(rounds):
        pids = node_processes(node)
        if not pids:
            break
        signal_all(pids, signal.SIGKILL)
        killed |= pids
        wait_gone(pids, 2.0)
    else:
        raise RuntimeError(f"{node.name}: processes keep appearing: "
                           f"{sorted(node_processes(node))}")
    return len(killed)


def remove_cgroups(parent: str, keep_top: bool = False) -> None:
    """Remove the node's (empty) cgroup folders; with ``keep_top``, only those below it."""
    for d in cgroup_dirs(parent):
        if keep_top and d.name == parent and d.parent in cgroup_mounts():
            continue
        for _ in range(100):  # a just-killed group can stay busy for a moment
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"cannot remove cgroup {d}: still in use")


def unmount_under(*folders: Path) -> None:
    """Detach every mount at or below the folders (deepest first): namespace files a node's
    daemon bound there, which would keep its namespaces alive and its folders busy."""
    libc = ctypes.CDLL(None, use_errno=True)
    prefixes = [str(f).rstrip("/") for f in folders]
    points: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
    for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
        for _ in range(points.count(point)):  # stacked mounts: one umount each
            libc.umount2(point.encode(), MNT_DETACH)
