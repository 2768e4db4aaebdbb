"""cgroup drivers: one interface, a v1 and a v2 implementation, chosen once at start.

A container's group lives at ``<hierarchy root>/<cgroup_parent>/<id>`` (``path`` below is
that relative part). Policy:

- memory: a hard limit and no swap on top of it (v1 memsw = limit, v2 swap.max = 0);
- cpus: a CFS quota of ``cpus * 100 ms`` per 100 ms period;
- cpu shares: Docker's 2..262144 scale, mapped onto v2's 1..10000 weight;
- pids: pids.max;
- v1 devices: Docker's default allow-list (everything else denied; mknod allowed anywhere).

Hybrid machines (v1 controllers plus an empty cgroup2 mount) count as v1. Drivers take their
filesystem roots as arguments so that tests can point them at a fake tree, and are plain
picklable objects: the runtime ships them to the zygote with each request.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable

from .spec import Resources

CPU_PERIOD_US = 100_000

# Docker's default device rules for the v1 devices controller (type major:minor access).
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m",
    # null zero full random urandom
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",  # tty console ptmx pts
    "c 10:200 rwm",  # tun
)


def shares_to_weight(shares: int) -> int:
    """Docker's cpu-shares (2..262144) onto cgroup v2 cpu.weight (1..10000)."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def _write(path: str, value: str) -> None:
    # O_CREAT changes nothing on cgroupfs (the files exist or cannot be created) and lets the
    # drivers run against a plain folder in tests.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _kill_and_rmdir(dirs: Iterable[str], timeout: float = 5.0) -> None:
    """SIGKILL whatever is left in each group, then remove it (leaf first)."""
    deadline = time.monotonic() + timeout
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    raise
            try:
                pids = _read(os.path.join(d, "cgroup.procs")).split()
            except FileNotFoundError:
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)


class CgroupDriver:
    """What the runtime needs from a cgroup implementation."""

    version = 0

    def create(self, path: str, resources: Resources) -> None:
        raise NotImplementedError

    def add_process(self, path: str, pid: int = 0) -> None:
        """Move `pid` into the group; 0 means the calling process."""
        raise NotImplementedError

    def oom_killed(self, path: str) -> bool:
        raise NotImplementedError

    def memory_usage(self, path: str) -> int | None:
        return None

    def destroy(self, path: str) -> None:
        """Kill leftover processes and remove the group; a missing group is fine."""
        raise NotImplementedError

    def dirs(self, path: str) -> list[str]:
        """The group's directories (one per v1 hierarchy, one for v2)."""
        raise NotImplementedError


class V1Driver(CgroupDriver):
    """Legacy hierarchies: one directory per mounted hierarchy, created in each."""

    version = 1

    def __init__(self, hierarchies: dict[str, str]) -> None:
        # name ("memory", "cpu,cpuacct", "name=systemd"...) -> mount point
        self.hierarchies = dict(hierarchies)

    def _dir(self, controller: str, path: str) -> str | None:
        for name, mnt in self.hierarchies.items():
            if controller in name.split(","):
                return os.path.join(mnt, path)
        return None

    def dirs(self, path: str) -> list[str]:
        return [os.path.join(mnt, path) for mnt in self.hierarchies.values()]

    def create(self, path: str, resources: Resources) -> None:
        made: list[str] = []
        try:
            for name, mnt in self.hierarchies.items():
                self._mkdirs(mnt, path, "cpuset" in name.split(","), made)
            self._apply(path, resources)
        except BaseException:
            _kill_and_rmdir(reversed(made))
            raise

    @staticmethod
    def _mkdirs(mnt: str, path: str, cpuset: bool, made: list[str]) -> None:
        cur = mnt
        for part in path.strip("/").split("/"):
            parent, cur = cur, os.path.join(cur, part)
            try:
                os.mkdir(cur)
            except FileExistsError:
                continue
            made.append(cur)
            if cpuset:  # a fresh cpuset group is empty and refuses tasks until filled in
                for f in ("cpuset.cpus", "cpuset.mems"):
                    _write(os.path.join(cur, f), _read(os.path.join(parent, f)).strip() or "\n")

    def _apply(self, path: str, r: Resources) -> None:
        mem = self._dir("memory", path)
        if mem and r.memory_bytes:
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(r.memory_bytes))
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(r.memory_bytes))
        cpu = self._dir("cpu", path)
        if cpu and r.cpus:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(int(r.cpus * CPU_PERIOD_US)))
        if cpu and r.cpu_shares:
            _write(os.path.join(cpu, "cpu.shares"), str(r.cpu_shares))
        pids = self._dir("pids", path)
        if pids and r.pids_limit:
            _write(os.path.join(pids, "pids.max"), str(r.pids_limit))
        dev = self._dir("devices", path)
        if dev:
            _write(os.path.join(dev, "devices.deny"), "a")
            for rule in DEFAULT_DEVICE_RULES:
                _write(os.path.join(dev, "devices.allow"), rule)

    def add_process(self, path: str, pid: int = 0) -> None:
        for d in self.dirs(path):
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def oom_killed(self, path: str) -> bool:
        mem = self._dir("memory", path)
        try:
            return bool(mem) and _counter(_read(os.path.join(mem or "", "memory.oom_control")),
                                          "oom_kill") > 0
        except FileNotFoundError:
            return False

    def memory_usage(self, path: str) -> int | None:
        mem = self._dir("memory", path)
        try:
            return int(_read(os.path.join(mem or "", "memory.usage_in_bytes")))
        except (FileNotFoundError, ValueError):
            return None

    def destroy(self, path: str) -> None:
        _kill_and_rmdir(self.dirs(path))


class V2Driver(CgroupDriver):
    """The unified hierarchy: one directory, controllers enabled down from the root."""

    version = 2
    CONTROLLERS = ("cpu", "memory", "pids")

    def __init__(self, root: str = "/sys/fs/cgroup") -> None:
        self.root = root

    def dirs(self, path: str) -> list[str]:
        return [os.path.join(self.root, path)]

    def create(self, path: str, resources: Resources) -> None:
        made: list[str] = []
        cur = self.root
        try:
            for part in path.strip("/").split("/"):
                self._enable_controllers(cur)
                cur = os.path.join(cur, part)
                try:
                    os.mkdir(cur)
                    made.append(cur)
                except FileExistsError:
                    pass
            self._apply(cur, resources)
        except BaseException:
            _kill_and_rmdir(reversed(made))
            raise

    def _enable_controllers(self, d: str) -> None:
        available = _read(os.path.join(d, "cgroup.controllers")).split()
        try:
            enabled = _read(os.path.join(d, "cgroup.subtree_control")).split()
        except FileNotFoundError:
            enabled = []
        wanted = [c for c in self.CONTROLLERS if c in available and c not in enabled]
        if wanted:
            _write(os.path.join(d, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))

    @staticmethod
    def _apply(d: str, r: Resources) -> None:
        if r.memory_bytes:
            _write(os.path.join(d, "memory.max"), str(r.memory_bytes))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
        if r.cpus:
            _write(os.path.join(d, "cpu.max"), f"{int(r.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        if r.cpu_shares:
            _write(os.path.join(d, "cpu.weight"), str(shares_to_weight(r.cpu_shares)))
        if r.pids_limit:
            _write(os.path.join(d, "pids.max"), str(r.pids_limit))

    def add_process(self, path: str, pid: int = 0) -> None:
        _write(os.path.join(self.root, path, "cgroup.procs"), str(pid))

    def oom_killed(self, path: str) -> bool:
        try:
            events = _read(os.path.join(self.root, path, "memory.events"))
        except FileNotFoundError:
            return False
        return _counter(events, "oom_kill") > 0

    def memory_usage(self, path: str) -> int | None:
        try:
            return int(_read(os.path.join(self.root, path, "memory.current")))
        except (FileNotFoundError, ValueError):
            return None

    def destroy(self, path: str) -> None:
        d = os.path.join(self.root, path)
        try:
            _write(os.path.join(d, "cgroup.kill"), "1")  # 5.14+: kills the whole subtree
        except OSError:
            pass
        _kill_and_rmdir([d])


def _mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) for each line of /proc/self/mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 3:
            point = fields[4].replace("\\040", " ")
            out.append((point, rfields[0], rfields[2]))
    return out


def detect(mountinfo: str | None = None, root: str = "/sys/fs/cgroup") -> CgroupDriver:
    """Pure v2 when `root` is cgroup2 with controllers; otherwise the v1 hierarchies."""
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo")
    mounts = _mounts(mountinfo)
    for point, fstype, _ in mounts:
        if point == root and fstype == "cgroup2":
            try:
                if _read(os.path.join(root, "cgroup.controllers")).split():
                    return V2Driver(root)
            except FileNotFoundError:
                pass
    hierarchies: dict[str, str] = {}
    for point, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        names = [o for o in opts.split(",") if o not in ("rw", "ro") and "=" not in o
                 or o.startswith("name=")]
        names = [n for n in names if n not in ("relatime", "noatime", "nosuid", "nodev",
                                               "noexec", "clone_children", "xattr")]
        if names:
            hierarchies.setdefault(",".join(names), point)
    if not hierarchies:
        raise OSError(errno.ENOENT, "no cgroup hierarchy found (neither v2 nor v1)")
    return V1Driver(hierarchies)
