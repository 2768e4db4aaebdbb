"""Hand-made layers and image archives for the image tests (no tests here).

The archives are built with tarfile exactly as `docker save` lays them out, so the loader is
tested against the formats rather than against our own saver.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, char, fifo
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
            for k, v in e.xattrs.items():
                ti.pax_headers["SCHILY.xattr." + k] = v
            if e.kind == "file":
                ti.size = len(e.data)
                tar.addfile(ti, io.BytesIO(e.data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                       "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE,
                       "fifo": tarfile.FIFOTYPE}[e.kind]
            ti.linkname = e.link
            if e.kind == "char":
                ti.devmajor, ti.devminor = 1, 3
            tar.addfile(ti)
    return buf.getvalue()


def image_config(layers: list[bytes], cmd: list[str] | None = None) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": cmd or ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def save_archive(path: Path, layers: list[bytes], tags: list[str], *, form: str = "manifest",
                 gzip_layers: bool = False, legacy: bool = False,
                 config: bytes | None = None, tamper: str = "") -> bytes:
    """Write an archive; returns its config blob. ``form``: manifest | oci.

    ``tamper``: "layer" flips a byte of the first layer blob after its digest is taken.
    """
    config = config or image_config(layers)
    blobs = [gzip.compress(x, mtime=0) if gzip_layers else x for x in layers]
    with tarfile.open(path, "w") as tar:
        if form == "manifest":
            if legacy:
                cname = f"{sha(config)[7:]}.json"
                lnames = [f"{sha(x)[7:]}/layer.tar" for x in blobs]
            else:
                cname = f"blobs/sha256/{sha(config)[7:]}"
                lnames = [f"blobs/sha256/{sha(x)[7:]}" for x in blobs]
            _add(tar, cname, config)
            for n, b in zip(lnames, blobs, strict=True):
                _add(tar, n, _tampered(b) if tamper == "layer" else b)
                tamper = ""
            _add(tar, "manifest.json", json.dumps(
                [{"Config": cname, "RepoTags": tags, "Layers": lnames}]).encode())
        else:
            mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": sha(config), "size": len(config)},
                "layers": [{"mediaType": mt, "digest": sha(b), "size": len(b)} for b in blobs],
            }).encode()
            _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add(tar, f"blobs/sha256/{sha(config)[7:]}", config)
            _add(tar, f"blobs/sha256/{sha(manifest)[7:]}", manifest)
            for b in blobs:
                _add(tar, f"blobs/sha256/{sha(b)[7:]}", _tampered(b) if tamper == "layer" else b)
                tamper = ""
            ann = ({"io.containerd.image.name": f"docker.io/library/{tags[0]}",
                   "org.opencontainers.image.ref.name": (tags[0].split(":") + ["latest"])[1]}
                   if tags else {})
            _add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest), "size": len(manifest), "annotations": ann}]}).encode())
    return config


def _tampered(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1 :]


def store_contents(root: Path) -> dict[str, list[str]]:
    """What an import may leave behind: blobs, layer folders/metadata, temp entries."""
    return {d: sorted(p.name for p in (root / d).iterdir()) if (root / d).exists() else []
            for d in ("blobs/sha256", "layers", "tmp", "images")}
