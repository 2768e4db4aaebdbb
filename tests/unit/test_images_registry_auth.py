"""The registry client's auth dance against a tiny in-process HTTP server."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.worker.images.registry import RegistryClient, _insecure

MANIFEST = json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {}, "layers": []}).encode()
BASIC = "Basic " + base64.b64encode(b"alice:secret").decode()


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []
    mode = "bearer"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        auth = self.headers.get("Authorization", "")
        self.seen.append((self.path, auth))
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/token"):
            body = json.dumps({"token": "T1" if auth == BASIC else "anon"}).encode()
            return self._send(200, body, "application/json")
        if self.path.startswith("/v2/"):
            want = {"bearer": "Bearer T1", "basic": BASIC}[self.mode]
            if auth != want:
                challenge = (f'Bearer realm="http://{host}/token",service="reg",'
                             f'scope="repository:x:pull"' if self.mode == "bearer"
                             else 'Basic realm="reg"')
                self.send_response(401)
                self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._send(200, MANIFEST, "application/vnd.oci.image.manifest.v1+json")
        return self._send(404, b"{}", "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("mode", ["bearer", "basic"])
def test_auth_with_credentials(server: str, mode: str) -> None:
    _Handler.mode = mode
    client = RegistryClient(server, credentials=("alice", "secret"))
    data, mt, digest = client.get_manifest("x", "t")
    assert data == MANIFEST and mt.endswith("manifest.v1+json") and digest.startswith("sha256:")
    if mode == "bearer":
        token_calls = [s for s in _Handler.seen if s[0].startswith("/token")]
        assert token_calls == [("/token?service=reg&scope=repository%3Ax%3Apull", BASIC)]
    # The token (or basic auth) is reused: one request, no new challenge.
    n = len(_Handler.seen)
    client.get_manifest("x", "t")
    assert len(_Handler.seen) == n + 1


def test_auth_denied_without_credentials(server: str, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: object) -> None:
    monkeypatch.setenv("PYSWARM_CONFIG", "/nonexistent")
    monkeypatch.delenv("PYSWARM_REGISTRY_USER", raising=False)
    _Handler.mode = "bearer"
    with pytest.raises(InvalidArgument, match="access denied"):
        RegistryClient(server).get_manifest("x", "t")


def test_credentials_from_env(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSWARM_REGISTRY_USER", "alice")
    monkeypatch.setenv("PYSWARM_REGISTRY_PASSWORD", "secret")
    _Handler.mode = "basic"
    assert RegistryClient(server).get_manifest("x", "t")[0] == MANIFEST


def test_insecure_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSWARM_INSECURE_REGISTRIES", "reg.lan:5000, other")
    assert _insecure("localhost:5000") and _insecure("127.0.0.2:80") and _insecure("[::1]:5000")
    assert _insecure("reg.lan:5000") and _insecure("other")
    assert not _insecure("reg.lan") and not _insecure("ghcr.io")
    assert RegistryClient("reg.lan:5000").base == "http://reg.lan:5000"
