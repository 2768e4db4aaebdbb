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
