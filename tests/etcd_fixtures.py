"""A real etcd server for the store's tests: one per session, on free local ports.

The server runs with raised limits (--max-txn-ops 20000, --max-request-bytes 64 MiB) so that
one atomic commit can carry the 10,000-task batch the tests write; a production cluster must
be started with limits to match the EtcdBackend's `max_txn_ops`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD = "/usr/bin/etcd"
MAX_TXN_OPS = 20000


@dataclass(frozen=True)
class EtcdServer:
    endpoint: str  # host:port of the client URL
    data_dir: Path
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as reply:
            return bool(json.load(reply).get("health") == "true")
    except OSError:
        return False


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} is absent: apt-get install etcd-server")
    data_dir = tmp_path_factory.mktemp("etcd")
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    log = open(data_dir.parent / "etcd.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            ETCD,
            "--name", "default",
            "--data-dir", str(data_dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            "--max-txn-ops", str(MAX_TXN_OPS),
            "--max-request-bytes", str(64 << 20),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = client.removeprefix("http://")
    try:
        deadline = time.monotonic() + 30
        while not _healthy(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"etcd did not become healthy; see {data_dir.parent / 'etcd.log'}"
                )
            time.sleep(0.1)
        yield EtcdServer(endpoint, data_dir, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class EtcdCluster:
    """Several real etcd members on local ports, each killed (SIGKILL) and started again
    at will: the member failures a manager's client must ride out."""

    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.names = [f"m{i}" for i in range(1, size + 1)]
        self.clients = {n: f"127.0.0.1:{_free_port()}" for n in self.names}
        self.peers = {n: f"http://127.0.0.1:{_free_port()}" for n in self.names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        return [self.clients[n] for n in self.names]

    def start(self, name: str, existing: bool = False) -> None:
        client = f"http://{self.clients[name]}"
        with open(self.base / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [ETCD, "--name", name, "--data-dir", str(self.base / name),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", self.peers[name],
                 "--initial-advertise-peer-urls", self.peers[name],
                 "--initial-cluster", ",".join(f"{n}={self.peers[n]}" for n in self.names),
                 "--initial-cluster-state", "existing" if existing else "new",
                 "--pre-vote=true"],
                stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not all(_healthy(self.clients[n]) for n in self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd members not healthy; see the logs in {self.base}")
            time.sleep(0.1)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster for one test."""
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} is absent: apt-get install etcd-server")
    cluster = EtcdCluster(tmp_path)
    try:
        for name in cluster.names:
            cluster.start(name)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()
