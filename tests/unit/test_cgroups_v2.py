"""The cgroup drivers' file protocol, against a fake cgroupfs in a temporary folder (v2),
and detection from mountinfo text."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyswarm.worker.runtime.cgroups import V1Driver, V2Driver, detect, shares_to_weight
from pyswarm.worker.runtime.spec import Resources


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A unified hierarchy as the kernel presents it: controllers available at the root and
    under an existing parent group."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    parent = tmp_path / "pyswarm"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text("cpu memory pids\n")
    (parent / "cgroup.subtree_control").write_text("")
    return tmp_path


def test_create_enables_controllers_and_writes_limits(fake_root: Path) -> None:
    d = V2Driver(str(fake_root))
    d.create("pyswarm/abc", Resources(memory_bytes=64 << 20, cpus=1.5, cpu_shares=512,
                                      pids_limit=100))
    # Only what is available and not yet enabled is asked for.
    assert (fake_root / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (fake_root / "pyswarm/cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    g = fake_root / "pyswarm/abc"
    assert (g / "memory.max").read_text() == str(64 << 20)
    assert (g / "cpu.max").read_text() == "150000 100000"
    assert (g / "cpu.weight").read_text() == str(shares_to_weight(512))
    assert (g / "pids.max").read_text() == "100"
    assert d.dirs("pyswarm/abc") == [str(g)]


def test_unset_resources_write_nothing(fake_root: Path) -> None:
    V2Driver(str(fake_root)).create("pyswarm/abc", Resources())
    assert sorted(p.name for p in (fake_root / "pyswarm/abc").iterdir()) == []


def test_add_process_and_oom(fake_root: Path) -> None:
    d = V2Driver(str(fake_root))
    d.create("pyswarm/abc", Resources())
    d.add_process("pyswarm/abc", 1234)
    g = fake_root / "pyswarm/abc"
    assert (g / "cgroup.procs").read_text() == "1234"
    assert not d.oom_killed("pyswarm/abc")
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert not d.oom_killed("pyswarm/abc")
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    assert d.oom_killed("pyswarm/abc")


def test_destroy_of_missing_group_is_fine(fake_root: Path) -> None:
    V2Driver(str(fake_root)).destroy("pyswarm/never")


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262144, 10000),
                                                (0, 1), (10**9, 10000)])
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_detect_hybrid_is_v1() -> None:
    d = detect(HYBRID)
    assert isinstance(d, V1Driver)
    assert d.hierarchies == {"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
                             "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
                             "name=systemd": "/sys/fs/cgroup/systemd"}


def test_detect_pure_v2(fake_root: Path) -> None:
    mountinfo = f"30 1 0:26 / {fake_root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    d = detect(mountinfo, root=str(fake_root))
    assert isinstance(d, V2Driver) and d.root == str(fake_root)


def test_detect_v2_without_controllers_falls_back_to_v1(fake_root: Path) -> None:
    (fake_root / "cgroup.controllers").write_text("")
    mountinfo = HYBRID + f"50 1 0:26 / {fake_root} rw - cgroup2 cgroup2 rw\n"
    assert isinstance(detect(mountinfo, root=str(fake_root)), V1Driver)
