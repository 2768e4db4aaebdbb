"""Push and pull against Debian's real `docker-registry` (distribution v2) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyswarm.common.errors import NotFound
from pyswarm.worker.images.registry import RegistryClient
from pyswarm.worker.images.store import ImageStore
from tests.unit.test_images_helpers import Entry, layer_tar, save_archive

REGISTRY_BIN = shutil.which("docker-registry")
pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(REGISTRY_BIN is None, reason="needs Debian's docker-registry"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on a free port with its own storage; killed by pid afterwards."""
    d = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = d / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"registry did not start: {(d / 'registry.log').read_text()}")
                time.sleep(0.05)
        yield host
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


BASE = layer_tar([Entry("bin", "dir", mode=0o755), Entry("bin/sh", data=b"sh" * 1000,
                                                         mode=0o755)])
TOP = layer_tar([Entry("app", "dir", mode=0o755), Entry("app/data", data=b"payload")])


def test_push_remove_pull(registry: str, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["app:v1"], gzip_layers=True)
    store.load(arc)
    ref = f"{registry}/team/app:v1"
    store.tag("app:v1", ref)
    before = store.get(ref)
    progress: list[str] = []
    store.push(ref, progress.append)
    assert any("Pushed" in p for p in progress)
    assert progress[-1].startswith("v1: digest: sha256:")
    # A second push finds every blob there already.
    again: list[str] = []
    store.push(ref, again.append)
    assert not any(p.endswith(": Pushed") for p in again)

    store.remove("app:v1")
    store.remove(ref)
    assert store.list() == []
    assert list((store.root / "blobs/sha256").iterdir()) == []

    pulled = store.pull(ref)
    assert pulled.id == before.id
    assert pulled.repo_tags == (f"{registry}/team/app:v1",)
    assert pulled.repo_digests and pulled.repo_digests[0].startswith(f"{registry}/team/app@")
    assert (Path(pulled.layer_dirs[1]) / "app/data").read_bytes() == b"payload"
    assert (Path(pulled.layer_dirs[0]) / "bin/sh").read_bytes() == b"sh" * 1000
    assert store.get(pulled.repo_digests[0]).id == pulled.id
    # By digest, into another store.
    other = ImageStore(tmp_path / "other")
    by_digest = other.pull(pulled.repo_digests[0])
    assert by_digest.id == before.id and by_digest.repo_tags == ()


def test_pull_missing(registry: str, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    with pytest.raises(NotFound, match=r"manifest for .*/nothing:here not found"):
        store.pull(f"{registry}/nothing:here")
    assert list((store.root / "blobs/sha256").iterdir()) == []


def test_client_speaks_plain_http_to_loopback(registry: str) -> None:
    assert RegistryClient(registry).base == f"http://{registry}"
    assert RegistryClient("ghcr.io").base == "https://ghcr.io"
