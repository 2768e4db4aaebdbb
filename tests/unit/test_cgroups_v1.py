"""The v1 driver against this machine's real hierarchies (skipped where cgroups are v2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyswarm.worker.runtime.cgroups import V1Driver, detect
from pyswarm.worker.runtime.spec import Resources

pytestmark = pytest.mark.root
PATH = "pyswarm-test-rt/cgroups-v1"


@pytest.fixture
def driver() -> V1Driver:
    d = detect()
    if not isinstance(d, V1Driver):
        pytest.skip("cgroups are v2 here")
    return d


def test_limits_process_and_destroy(driver: V1Driver) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        driver.create(PATH, Resources(memory_bytes=64 << 20, cpus=0.25, cpu_shares=256,
                                      pids_limit=42))
        mem = Path(driver.hierarchies["memory"], PATH)
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 << 20)
        cpu = Path(driver.hierarchies["cpu"], PATH)
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (cpu / "cpu.shares").read_text().strip() == "256"
        assert Path(driver.hierarchies["pids"], PATH, "pids.max").read_text().strip() == "42"
        driver.add_process(PATH, proc.pid)
        for d in driver.dirs(PATH):
            assert str(proc.pid) in Path(d, "cgroup.procs").read_text().split()
        assert not driver.oom_killed(PATH)
        driver.destroy(PATH)  # kills what is left inside
        assert proc.wait(5) == -9
        assert not any(os.path.exists(d) for d in driver.dirs(PATH))
    finally:
        proc.kill()
        proc.wait()
        driver.destroy(PATH)
        for d in driver.dirs("pyswarm-test-rt"):
            try:
                os.rmdir(d)
            except OSError:
                pass
