"""A lab cluster for tests: `pyswarm lab up` with a name and subnet unique to the test run.

Cluster tests use it through the ``lab`` fixture (module scope: one lab per test module) or
``lab_cluster(...)`` for a lab of another shape::

    from tests.lab_fixtures import Lab, lab_fixture  # noqa: F401  (the `lab` fixture)

    def test_x(lab: Lab) -> None:
        lab.cli("deploy", "-c", str(stack), "--name", "x")   # on the manager
        lab.kill("node3")
        lab.wait_status("node3", "down")
        lab.start("node3")
        lab.wait_status("node3", "ready")

Everything is driven through the CLI, as a user drives it. Run-unique names let two test
runs (a developer's and CI's) share the machine and the user's own lab (198.18.0.0/24).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.engine_fixtures import PYSWARM, RUN_TOKEN, wait_for  # noqa: F401  (re-exported)

# 150 /24s between 198.18.100.0 and 198.18.249.0; a run takes the one of its token first
# and the next ones when another run holds it.
_SUBNETS = 150


def lab_cli(*args: str, check: bool = True, timeout: float = 180,
            ) -> subprocess.CompletedProcess[str]:
    """``pyswarm lab ARGS`` as a subprocess."""
    out = subprocess.run([PYSWARM, "lab", *args], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"pyswarm lab {' '.join(args)} exited {out.returncode}\n"
                             f"stdout: {out.stdout}\nstderr: {out.stderr}")
    return out


@dataclass
class Lab:
    name: str
    subnet: str
    up_output: str = ""
    addresses: dict[str, str] = field(default_factory=dict)  # node name -> address

    @property
    def manager(self) -> str:
        return "node1"

    def lab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``pyswarm lab SUBCOMMAND --name NAME ARGS``."""
        return lab_cli(args[0], "--name", self.name, *args[1:], check=check)

    def exec(self, node: str, *args: str, check: bool = True, timeout: float = 120,
             ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``node`` (its namespace and PYSWARM_* environment)."""
        out = subprocess.run([PYSWARM, "lab", "exec", "--name", self.name, node, "--", *args],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"[{node}] {' '.join(args)} exited {out.returncode}\n"
                                 f"stdout: {out.stdout}\nstderr: {out.stderr}\n"
                                 f"daemon log:\n{self.log(node)}")
        return out

    def cli(self, *args: str, node: str = "", check: bool = True, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        """The pyswarm CLI on the manager (or ``node``)."""
        return self.exec(node or self.manager, "pyswarm", *args, check=check, timeout=timeout)

    def json_lines(self, *args: str, node: str = "") -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cli(*args, node=node).stdout.splitlines()
                if line.strip()]

    def ls(self) -> dict[str, dict[str, Any]]:
        """`lab ls --format json`, by node name."""
        return {n["node"]: n for n in (json.loads(line) for line in
                                       self.lab("ls", "--format", "json").stdout.splitlines())}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The manager's `node ls`, by hostname."""
        return {n["hostname"]: n for n in self.json_lines("node", "ls", "--format", "json")}

    def nodes_via(self, manager: str) -> dict[str, dict[str, Any]]:
        """`node ls` on `manager`, by hostname ({} if it does not answer)."""
        out = self.cli("node", "ls", "--format", "json", node=manager, check=False, timeout=30)
        if out.returncode != 0:
            return {}
        return {n["hostname"]: n for n in map(json.loads, out.stdout.splitlines())}

    def status(self, node: str) -> str:
        return str(self.nodes().get(node, {}).get("status", ""))

    def wait_status(self, node: str, status: str, timeout: float = 30.0) -> None:
        wait_for(f"{node} {status}", lambda: self.status(node) == status, timeout)

    def kill(self, node: str) -> None:
        self.lab("kill", node)

    def stop(self, node: str, grace: float = 10.0) -> None:
        self.lab("stop", node, "--time", str(grace))

    def start(self, node: str) -> None:
        self.lab("start", node)

    def partition(self, node: str) -> None:
        self.lab("partition", node)

    def heal(self, node: str) -> None:
        self.lab("heal", node)

    def env(self, node: str) -> dict[str, str]:
        return dict(self.ls()[node]["env"])

    def log(self, node: str) -> str:
        from pathlib import Path

        path = Path(f"/var/lib/pyswarm-lab/{self.name}/{node}/daemon.log")
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def down(self) -> None:
        self.lab("down", check=False)


def lab_name(index: int = 0) -> str:
    """A lab name unique to this run (short: interface names derive from it)."""
    return f"t{RUN_TOKEN:03x}{index}"


@contextlib.contextmanager
def lab_cluster(nodes: int = 3, index: int = 0, extra: tuple[str, ...] = ()) -> Iterator[Lab]:
    """`lab up --nodes N` on a free run-unique subnet; `lab down` afterwards, always: also
    when interrupted while `up` runs (a benchmark's timeout is a SIGINT), which would leave
    whatever `up` had started."""
    name = lab_name(index)
    last = ""
    try:
        for attempt in range(8):
            subnet = f"198.18.{100 + (RUN_TOKEN * 4 + index + attempt) % _SUBNETS}.0/24"
            out = lab_cli("up", "--name", name, "--nodes", str(nodes), "--subnet", subnet,
                          *extra, check=False, timeout=300)
            if out.returncode == 0:
                break
            last = out.stdout + out.stderr
            if "overlaps" not in out.stderr:  # another run's subnet: try the next one
                raise AssertionError(f"lab up failed:\n{last}")
        else:
            raise AssertionError(f"lab up found no free subnet:\n{last}")
        lab = Lab(name, subnet, out.stdout)
        lab.addresses = {n: v["address"] for n, v in lab.ls().items()}
        yield lab
    finally:
        lab_cli("down", "--name", name, check=False)


@pytest.fixture(scope="module", name="lab")
def lab_fixture() -> Iterator[Lab]:
    """A 3-node lab (node1 the manager, node2 and node3 workers) for a test module."""
    with lab_cluster(3) as cluster:
        yield cluster
