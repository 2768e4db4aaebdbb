"""Pull and push over the OCI distribution API v2 (stdlib HTTP only).

Policy:
- plain http only for loopback registries (localhost, 127.0.0.0/8, ::1) and hosts listed in
  ``PYSWARM_INSECURE_REGISTRIES`` (comma separated, like Docker's insecure-registries);
  https everywhere else;
- authentication follows the registry's challenge: Bearer tokens fetched from the realm it
  names (with basic credentials when we have some), or Basic directly. Credentials come from
  ``PYSWARM_REGISTRY_USER``/``PYSWARM_REGISTRY_PASSWORD`` or from a Docker-style
  ``~/.pyswarm/config.json`` (``{"auths": {"host": {"auth": base64("user:pass")}}}``,
  ``PYSWARM_CONFIG`` overrides the path). The Authorization header is never forwarded
  across a redirect (blob downloads redirect to storage hosts);
- every manifest and blob is verified against its digest before it is kept; a pulled
  image lands through one store transaction, so a failed pull leaves nothing behind;
- manifests are requested as Docker schema 2 or OCI, lists/indexes resolved to linux/amd64;
  push always sends an OCI manifest, and skips blobs the registry already has (HEAD).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyswarm.common.errors import CorruptData, InvalidArgument, NotFound

from . import media
from .archive import manifest_for, platform_ok
from .blobs import sha256_bytes
from .reference import Reference, parse_reference
from .store import Image, ImageStore

Progress = Callable[[str], None]
_ACCEPT = ", ".join([media.OCI_MANIFEST, media.DOCKER_MANIFEST, media.OCI_INDEX,
                     media.DOCKER_LIST])
_TIMEOUT = 60.0
_MAX_MANIFEST = 4 << 20


def _insecure(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    listed = os.environ.get("PYSWARM_INSECURE_REGISTRIES", "")
    return host in {h.strip() for h in listed.split(",") if h.strip()}


def _credentials(host: str) -> tuple[str, str] | None:
    user, pw = os.environ.get("PYSWARM_REGISTRY_USER"), os.environ.get("PYSWARM_REGISTRY_PASSWORD")
    if user and pw is not None:
        return user, pw
    path = Path(os.environ.get("PYSWARM_CONFIG", Path.home() / ".pyswarm" / "config.json"))
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == "registry-1.docker.io":
        keys += ["docker.io", "index.docker.io", "https://index.docker.io/v1/"]
    for k in keys:
        entry = auths.get(k)
        if entry and entry.get("auth"):
            try:
                u, _, p = base64.b64decode(entry["auth"]).decode().partition(":")
                return u, p
            except ValueError:
                return None
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


@dataclass
class _Response:
    status: int
    headers: Any
    body: Any  # a file-like object to read() from; close it when done


class RegistryClient:
    def __init__(self, host: str, credentials: tuple[str, str] | None = None) -> None:
        self.host = host
        self.base = f"{'http' if _insecure(host) else 'https'}://{host}"
        self.credentials = credentials if credentials is not None else _credentials(host)
        self._tokens: dict[str, str] = {}
        self._basic = False

    @classmethod
    def for_reference(cls, ref: Reference) -> RegistryClient:
        return cls(ref.api_host)

    # ------------------------------------------------------------------ transport

    def _auth_header(self, scope: str) -> str | None:
        if scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._basic and self.credentials:
            raw = f"{self.credentials[0]}:{self.credentials[1]}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    def request(self, method: str, url: str, *, scope: str, data: Any = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,)) -> _Response:
        """One call with the auth dance: on 401 get what the challenge asks for, once."""
        if url.startswith("/"):
            url = self.base + url
        for attempt in range(2):
            req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
            auth = self._auth_header(scope)
            if auth:
                req.add_unredirected_header("Authorization", auth)
            try:
                resp = urllib.request.urlopen(req, timeout=_TIMEOUT)  # noqa: S310
                return _Response(resp.status, resp.headers, resp)
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0 and self._authenticate(e.headers, scope):
                    if hasattr(data, "seek"):
                        data.seek(0)
                    continue
                if e.code in ok:
                    return _Response(e.code, e.headers, e)
                raise self._error(e, method, url) from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise InvalidArgument(f"cannot reach registry {self.host}: {reason}") from None
        raise InvalidArgument(f"{self.host}: authentication failed for {url}")

    def _authenticate(self, headers: Any, scope: str) -> bool:
        scheme, params = _challenge(headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if not self.credentials or self._basic:
                return False
            self._basic = True
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        q = {"service": params.get("service", "")} if params.get("service") else {}
        q["scope"] = scope
        req = urllib.request.Request(params["realm"] + "?" + urllib.parse.urlencode(q))
        if self.credentials:
            raw = f"{self.credentials[0]}:{self.credentials[1]}".encode()
            req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(raw).decode())
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:  # noqa: S310
                doc = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise InvalidArgument(f"{self.host}: cannot get a token from {params['realm']}: "
                                  f"{e}") from None
        token = doc.get("token") or doc.get("access_token")
        if not token:
            return False
        self._tokens[scope] = token
        return True

    def _error(self, e: urllib.error.HTTPError, method: str, url: str) -> Exception:
        try:
            body = json.loads(e.read(65536) or b"{}")
            errs = "; ".join(f"{x.get('code', '').lower().replace('_', ' ')}: {x.get('message')}"
                             for x in body.get("errors", []))
        except (ValueError, AttributeError, OSError):
            errs = ""
        msg = errs or f"HTTP {e.code} {e.reason}"
        if e.code == 404:
            return NotFound(msg)
        if e.code in (401, 403):
            return InvalidArgument(f"{self.host}: access denied ({msg}); the repository may "
                                   "not exist or may require credentials")
        return InvalidArgument(f"{self.host}: {method} {url}: {msg}")

    # ------------------------------------------------------------------ API

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest by tag or digest."""
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=_scope(repo),
                            headers={"Accept": _ACCEPT})
        with resp.body:
            data = resp.body.read(_MAX_MANIFEST + 1)
        if len(data) > _MAX_MANIFEST:
            raise CorruptData(f"manifest {repo}:{ref} is too large")
        digest = sha256_bytes(data)
        if ref.startswith("sha256:") and digest != ref:
            raise CorruptData(f"manifest {repo}@{ref}: digest mismatch (got {digest})")
        mt = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            mt = json.loads(data).get("mediaType") or mt
        except (ValueError, AttributeError):
            raise CorruptData(f"manifest {repo}:{ref} is not JSON") from None
        return data, mt, digest

    def open_blob(self, repo: str, digest: str) -> Any:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo)).body

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, push=True),
                            ok=(200, 404))
        resp.body.close()
        return resp.status == 200

    def upload_blob(self, repo: str, digest: str, f: Any, size: int) -> None:
        scope = _scope(repo, push=True)
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, data=b"",
                            ok=(202,))
        resp.body.close()
        location = urllib.parse.urljoin(self.base + "/", resp.headers["Location"])
        sep = "&" if "?" in location else "?"
        put = self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                           scope=scope, data=f, ok=(201,),
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)})
        put.body.close()

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", scope=_scope(repo, push=True),
                            data=data, ok=(201,), headers={"Content-Type": media_type})
        resp.body.close()


def _scope(repo: str, push: bool = False) -> str:
    return f"repository:{repo}:{'pull,push' if push else 'pull'}"


# ----------------------------------------------------------------------------- pull / push


def pull(store: ImageStore, ref: str, progress: Progress | None = None,
         client: RegistryClient | None = None) -> Image:
    r = parse_reference(ref)
    say = progress or (lambda _m: None)
    client = client or RegistryClient.for_reference(r)
    want = r.digest or r.tag or "latest"
    try:
        data, mt, digest = client.get_manifest(r.repository, want)
    except NotFound as e:
        raise NotFound(f"manifest for {r} not found: {e}") from None
    doc = json.loads(data)
    if mt in media.INDEXES or "manifests" in doc:
        choice = next((d for d in doc.get("manifests", [])
                       if d.get("platform") and platform_ok(d)), None)
        if choice is None:
            raise NotFound(f"{r}: no linux/amd64 image in the manifest list")
        data, mt, _ = client.get_manifest(r.repository, choice["digest"])
        doc = json.loads(data)
    if mt not in media.MANIFESTS and doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"{r}: unsupported manifest type {mt!r}")
    try:
        config_desc = doc["config"]
        layer_descs = doc["layers"]
    except KeyError as e:
        raise CorruptData(f"{r}: manifest without {e}") from None
    say(f"{want}: Pulling from {r.repository}")
    with store.transaction() as txn:
        with client.open_blob(r.repository, config_desc["digest"]) as f:
            config = f.read(_MAX_MANIFEST + 1)
        store.put_blob_bytes(txn, config, config_desc["digest"], f"{r} config")
        blobs = []
        for d in layer_descs:
            short = d["digest"][7:19]
            if store.blobs.has(d["digest"]):
                say(f"{short}: Already exists")
            else:
                say(f"{short}: Downloading")
                with client.open_blob(r.repository, d["digest"]) as f:
                    store.put_blob(txn, f, d["digest"], f"{r} layer {d['digest']}",
                                   d.get("size"))
                say(f"{short}: Download complete")
            blobs.append((d["digest"], d.get("mediaType", media.OCI_LAYER)))
        image = store.register(txn, config, blobs, tags=[r.tagged] if r.tag else [],
                               digests=[f"{r.name}@{digest}"], progress=progress,
                               what=str(r))
    say(f"Digest: {digest}")
    say(f"Status: Downloaded image for {r}")
    return image


def push(store: ImageStore, ref: str, progress: Progress | None = None,
         client: RegistryClient | None = None) -> None:
    r = parse_reference(ref)
    if r.digest:
        raise InvalidArgument(f"push needs a tag, not a digest: {ref}")
    say = progress or (lambda _m: None)
    image = store.get(r.tagged)
    client = client or RegistryClient.for_reference(r)
    say(f"The push refers to repository [{r.full_name}]")
    for digest in [lb.digest for lb in image.layers] + [image.id]:
        short = digest[7:19]
        if client.blob_exists(r.repository, digest):
            say(f"{short}: Layer already exists")
            continue
        say(f"{short}: Pushing")
        with store.blobs.open(digest) as f:
            client.upload_blob(r.repository, digest, f, store.blobs.size(digest))
        say(f"{short}: Pushed")
    manifest = manifest_for(store, image)
    client.put_manifest(r.repository, r.tag or "latest", manifest, media.OCI_MANIFEST)
    say(f"{r.tag}: digest: {sha256_bytes(manifest)} size: {len(manifest)}")
