"""``docker save`` / ``docker load`` archives and OCI image layout tars.

Load accepts the three shapes seen in the wild: Docker's ``manifest.json`` form (with legacy
``<id>/layer.tar`` members or Docker 25's ``blobs/sha256/<hex>``), and the OCI layout form
(``oci-layout`` + ``index.json``), with manifest.json preferred when both are present since it
carries the tags. Every blob is checked against its digest; a layer whose name carries no
digest is checked through the config's diff_id. Each image in an archive is its own
transaction: a damaged one leaves nothing of itself behind.

Save writes both forms in one tar, as Docker 25 does, so both ``docker load`` and OCI tools
read it; it writes to a temp file and renames it over ``out``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyswarm.common.errors import CorruptData, InvalidArgument

from . import media
from .blobs import sha256_bytes
from .reference import Reference, parse_reference
from .store import Image, ImageStore

Progress = Callable[[str], None]
_BLOB_PATH = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")
_LEGACY_CONFIG = re.compile(r"^([a-f0-9]{64})\.json$")
_NAME_ANNOTATION = "io.containerd.image.name"
_REF_ANNOTATION = "org.opencontainers.image.ref.name"
_PLATFORM = ("linux", "amd64")


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {_norm(m.name): m for m in self.tar.getmembers()}
        except FileNotFoundError:
            raise InvalidArgument(f"{path}: no such file") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise CorruptData(f"{path}: not a readable tar archive: {e}") from None

    def open(self, name: str) -> Any:
        m = self.members.get(_norm(name))
        if m is None:
            raise CorruptData(f"{self.path}: missing member {name!r}")
        try:
            f = self.tar.extractfile(m)
        except (tarfile.TarError, KeyError) as e:
            raise CorruptData(f"{self.path}: member {name!r}: {e}") from None
        if f is None:
            raise CorruptData(f"{self.path}: member {name!r} is not a file")
        return f

    def read(self, name: str) -> bytes:
        try:
            data: bytes = self.open(name).read()
            return data
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CorruptData(f"{self.path}: member {name!r}: truncated: {e}") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError:
            raise CorruptData(f"{self.path}: member {name!r} is not valid JSON") from None

    def blob_name(self, digest: str) -> str:
        if not re.match(r"^sha256:[a-f0-9]{64}$", str(digest)):
            raise CorruptData(f"{self.path}: unsupported digest {digest!r}")
        return f"blobs/sha256/{digest[7:]}"


def load_archive(store: ImageStore, path: Path, progress: Progress | None = None) -> list[str]:
    arc = _Archive(path)
    with arc.tar:
        if "manifest.json" in arc.members:
            loaded = _load_docker(store, arc, progress)
        elif "index.json" in arc.members:
            loaded = _load_oci(store, arc, progress)
        else:
            raise CorruptData(f"{path}: neither manifest.json nor index.json: not an image "
                              "archive")
    for name in loaded:
        if progress:
            progress(f"Loaded image{' ID' if name.startswith('sha256:') else ''}: {name}")
    return loaded


def _import(store: ImageStore, arc: _Archive, config_name: str, expected_config: str | None,
            layers: list[tuple[str, str | None, int | None]], tags: list[str],
            progress: Progress | None) -> Image:
    """One image: config member, (member, expected digest, size) per layer."""
    config = arc.read(config_name)
    if expected_config is not None and sha256_bytes(config) != expected_config:
        raise CorruptData(f"{arc.path}: config {config_name!r}: digest mismatch: expected "
                          f"{expected_config}, got {sha256_bytes(config)}")
    with store.transaction() as txn:
        blobs = []
        for name, expected, size in layers:
            what = f"{arc.path}: layer {name!r}"
            try:
                digest = store.put_blob(txn, arc.open(name), expected, what, size)
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise CorruptData(f"{what}: truncated: {e}") from None
            with store.blobs.open(digest) as f:
                gz = f.read(2) == b"\x1f\x8b"
            blobs.append((digest, media.OCI_LAYER_GZIP if gz else media.OCI_LAYER))
        return store.register(txn, config, blobs, tags=tags, progress=progress,
                              what=str(arc.path))


def _load_docker(store: ImageStore, arc: _Archive, progress: Progress | None) -> list[str]:
    manifest = arc.json("manifest.json")
    if not isinstance(manifest, list):
        raise CorruptData(f"{arc.path}: manifest.json is not a list")
    loaded: list[str] = []
    for entry in manifest:
        try:
            config_name = _norm(entry["Config"])
            layer_names = [_norm(x) for x in entry["Layers"]]
            tags = [parse_reference(t).tagged for t in (entry.get("RepoTags") or [])]
        except (KeyError, TypeError, AttributeError, InvalidArgument) as e:
            raise CorruptData(f"{arc.path}: malformed manifest.json entry: {e}") from None
        m = _BLOB_PATH.match(config_name) or _LEGACY_CONFIG.match(config_name)
        expected_config = f"sha256:{m.group(1)}" if m else None
        layers: list[tuple[str, str | None, int | None]] = []
        for n in layer_names:
            lm = _BLOB_PATH.match(n)
            layers.append((n, f"sha256:{lm.group(1)}" if lm else None, None))
        image = _import(store, arc, config_name, expected_config, layers, tags, progress)
        loaded.extend(tags or [image.id])
    return loaded


def _load_oci(store: ImageStore, arc: _Archive, progress: Progress | None) -> list[str]:
    index = arc.json("index.json")
    loaded: list[str] = []
    for desc in index.get("manifests", []) if isinstance(index, dict) else []:
        image = _load_oci_desc(store, arc, desc, desc.get("annotations") or {}, progress)
        if image is None:
            continue
        loaded.append(_annotated_tag(desc.get("annotations") or {}) or image.id)
    if not loaded:
        raise CorruptData(f"{arc.path}: index.json lists no linux/amd64 image")
    return loaded


def _annotated_tag(annotations: dict[str, str]) -> str | None:
    """The tag an OCI layout entry names; a bare ``ref.name`` tag has no repo, so none."""
    for key in (_NAME_ANNOTATION, _REF_ANNOTATION):
        name = annotations.get(key)
        if not name or ("/" not in name and ":" not in name):
            continue
        try:
            return parse_reference(name).tagged
        except InvalidArgument:
            continue
    return None


def _read_desc(arc: _Archive, desc: dict[str, Any]) -> bytes:
    digest = desc.get("digest", "")
    data = arc.read(arc.blob_name(digest))
    if sha256_bytes(data) != digest:
        raise CorruptData(f"{arc.path}: blob {digest}: digest mismatch (got {sha256_bytes(data)})")
    if "size" in desc and desc["size"] != len(data):
        raise CorruptData(f"{arc.path}: blob {digest}: size mismatch")
    return data


def platform_ok(desc: dict[str, Any]) -> bool:
    p = desc.get("platform")
    if not p:
        return True
    # Attestation manifests of buildx carry platform unknown/unknown.
    return (p.get("os"), p.get("architecture")) == _PLATFORM


def _load_oci_desc(store: ImageStore, arc: _Archive, desc: dict[str, Any],
                   annotations: dict[str, str], progress: Progress | None) -> Image | None:
    mt = desc.get("mediaType", "")
    data = _read_desc(arc, desc)
    try:
        doc = json.loads(data)
    except ValueError:
        raise CorruptData(f"{arc.path}: blob {desc.get('digest')} is not JSON") from None
    mt = mt or doc.get("mediaType", "")
    if mt in media.INDEXES or "manifests" in doc:
        for sub in doc.get("manifests", []):
            if platform_ok(sub):
                img = _load_oci_desc(store, arc, sub, annotations, progress)
                if img is not None:
                    return img
        return None
    try:
        config_desc = doc["config"]
        layers = [(arc.blob_name(ld["digest"]), ld["digest"], ld.get("size"))
                  for ld in doc["layers"]]
    except (KeyError, TypeError) as e:
        raise CorruptData(f"{arc.path}: malformed manifest {desc.get('digest')}: {e}") from None
    tag = _annotated_tag(annotations)
    return _import(store, arc, arc.blob_name(config_desc["digest"]), config_desc["digest"],
                   layers, [tag] if tag else [], progress)


# ----------------------------------------------------------------------------- save


def manifest_for(store: ImageStore, image: Image) -> bytes:
    """The OCI manifest of a stored image (what save writes and push sends)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {"mediaType": media.OCI_CONFIG, "digest": image.id,
                   "size": store.blobs.size(image.id)},
        "layers": [{"mediaType": media.oci_layer_type(lb.media_type), "digest": lb.digest,
                    "size": lb.size} for lb in image.layers],
    }
    return json.dumps(doc, indent=2).encode()


def save_archive(store: ImageStore, refs: list[str], out: Path) -> None:
    if not refs:
        raise InvalidArgument("save needs at least one image")
    chosen: list[tuple[Image, list[Reference]]] = []
    for ref in refs:
        image = store.get(ref)
        names = [parse_reference(t) for t in image.repo_tags if t == _tagged_or_none(ref)]
        for prev, prev_names in chosen:
            if prev.id == image.id:
                prev_names.extend(n for n in names if n not in prev_names)
                break
        else:
            chosen.append((image, names))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _write_archive(store, tar, chosen)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tagged_or_none(ref: str) -> str | None:
    try:
        r = parse_reference(ref)
    except InvalidArgument:
        return None
    return None if r.digest else r.tagged


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    tar.addfile(ti, io.BytesIO(data))


def _write_archive(store: ImageStore, tar: tarfile.TarFile,
                   chosen: list[tuple[Image, list[Reference]]]) -> None:
    for d in ("blobs", "blobs/sha256"):
        ti = tarfile.TarInfo(d)
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(ti)
    written: set[str] = set()

    def add_blob(digest: str) -> str:
        name = f"blobs/sha256/{digest[7:]}"
        if digest not in written:
            written.add(digest)
            path = store.blobs.path(digest)
            ti = tar.gettarinfo(str(path), arcname=name)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            with open(path, "rb") as f:
                tar.addfile(ti, f)
        return name

    docker_manifest = []
    index = []
    repositories: dict[str, dict[str, str]] = {}
    for image, names in chosen:
        config_name = add_blob(image.id)
        layer_names = [add_blob(lb.digest) for lb in image.layers]
        manifest = manifest_for(store, image)
        mdigest = sha256_bytes(manifest)
        if mdigest not in written:
            written.add(mdigest)
            _add_bytes(tar, f"blobs/sha256/{mdigest[7:]}", manifest)
        desc = {"mediaType": media.OCI_MANIFEST, "digest": mdigest, "size": len(manifest)}
        entries: list[Reference | None] = list(names) or [None]
        for n in entries:
            entry = dict(desc)
            if n is not None:
                entry["annotations"] = {_NAME_ANNOTATION: f"{n.full_name}:{n.tag}",
                                        _REF_ANNOTATION: n.tag or "latest"}
                if image.layers:
                    repositories.setdefault(n.name, {})[n.tag or "latest"] = \
                        image.layers[-1].digest[7:]
            index.append(entry)
        docker_manifest.append({"Config": config_name,
                                "RepoTags": [n.tagged for n in names] or None,
                                "Layers": layer_names})
    _add_bytes(tar, "index.json", json.dumps(
        {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": index}).encode())
    _add_bytes(tar, "manifest.json", json.dumps(docker_manifest).encode())
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())
