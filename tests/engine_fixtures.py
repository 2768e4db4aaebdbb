"""A real engine daemon for end-to-end tests: its own state folder, socket, bridge, subnet
and nftables table, so it never touches the machine's own pyswarm. The CLI is driven as a
user drives it: as a subprocess, reading its output and exit code."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYSWARM = str(Path(sys.executable).parent / "pyswarm")


@dataclass
class Daemon:
    base: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.base / "daemon.log"

    @property
    def root(self) -> Path:
        return Path(self.env["PYSWARM_ROOT"])

    @property
    def run_dir(self) -> Path:
        return Path(self.env["PYSWARM_RUN"])

    def start(self, timeout: float = 30) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PYSWARM, "daemon"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.cli("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not answer in {timeout}s:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the daemon process itself (containers must survive)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        # The zygote dies with the daemon (PDEATHSIG); give it a moment.
        time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def cli(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 120, extra_env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        result = subprocess.run([PYSWARM, *args], env=env, input=input,
                                capture_output=True, timeout=timeout)
        out = subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise AssertionError(
                f"pyswarm {' '.join(args)} exited {out.returncode}\nstdout: {out.stdout}\n"
                f"stderr: {out.stderr}\ndaemon log:\n{self.log()}")
        return out

    def json_lines(self, *args: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.cli(*args).stdout.splitlines() if line.strip()]

    def inspect(self, ref: str) -> dict[str, Any]:
        return json.loads(self.cli("inspect", ref).stdout)[0]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Names and addresses unique to this test run: two runs on one machine (a developer's and
# CI's, or two helpers') must not tear down each other's bridges and tables.
RUN_TOKEN = secrets.randbelow(0x1000)


def engine_env(base: Path, index: int = 0) -> dict[str, str]:
    slot = (RUN_TOKEN * 16 + index) % 4096  # 16 engines per run, 256 runs' worth of /24s
    return dict(
        os.environ,
        PYSWARM_ROOT=str(base / "root"),
        PYSWARM_RUN=str(base / "run"),
        PYSWARM_BRIDGE=f"pswt{RUN_TOKEN:03x}{index:x}",
        PYSWARM_SUBNET=f"10.{216 + slot // 256}.{slot % 256}.0/24",  # clear of 10.213/16, 10.214/16
        PYSWARM_NFT_TABLE=f"pyswarm_t{RUN_TOKEN:03x}_{index}",
        PYSWARM_DNS_UPSTREAMS="none",  # tests send no query off the machine
    )


def build_base_image(daemon: Daemon) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "examples/images/busybox/build-base.sh"), PYSWARM],
        env=daemon.env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"base image build failed:\n{result.stdout}\n{result.stderr}\n"
                           f"{daemon.log()}")


def cleanup(daemon: Daemon) -> None:
    """Remove every container, stop the daemon, remove the bridge and nftables table."""
    if daemon.proc is not None and daemon.proc.poll() is None:
        ids = daemon.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            daemon.cli("rm", "-f", *ids, check=False)
    daemon.stop()
    # A cluster daemon's agent may have started a task between the listing and the stop:
    # whatever still runs under this root is killed through its shim's state files.
    from pyswarm.worker.runtime.runtime import Runtime

    runtime = Runtime()
    for bundle in sorted((daemon.root / "containers").glob("*/")):
        runtime.delete(str(bundle))
    from pyswarm.common.paths import EngineConfig
    from pyswarm.worker.network.node import NodeNetwork

    NodeNetwork(EngineConfig.from_env(daemon.env)).teardown()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``
    and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def router_pids(pid: int) -> list[int]:
    """The children of daemon `pid` that run its TLS port's router (router.py)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"security.router" in _cmdline(int(c))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
