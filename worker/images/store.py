"""The node's image store: blobs, unpacked layers, image records and tags.

Layout under ``root``::

    blobs/sha256/<hex>        configs, manifests and layer tars exactly as received
    layers/<short>/           one unpacked layer per chain id (an overlayfs lowerdir)
    layers/<short>.json       {chain_id, diff_id, parent, size}
    images/<hex>.json         {id, layers: [blob descriptors], parent, intermediate}
    repositories.json         {"tags": {"name:tag": id}, "digests": {"name@sha256:..": id}}
    build-cache.json          {cache key: image id}
    tmp/                      half-written blobs and layers (swept on open)
    .lock                     flock held around every index change

Layers are keyed by chain id, not diff id: a layer's hardlinks into the layers below it are
resolved to copies while unpacking, so the same diff over another parent is another folder.
Folder names are short (12 hex) because overlayfs takes every lowerdir in one page-sized
mount option.

Policy: an import (load, pull, commit, build step) either lands whole or leaves nothing:
blobs and layer folders it added are removed again when it fails. Removal garbage-collects
only what the removed images referenced and no remaining image does, so a concurrent import
never loses a blob it has just written.
"""

from __future__ import annotations

import builtins
import copy
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyswarm.common.errors import Conflict, CorruptData, InvalidArgument, NotFound

from . import media
from .blobs import BlobStore, sha256_bytes
from .layers import open_decompressed, pack_dir, unpack_layer
from .reference import Reference, looks_like_id, parse_reference

Progress = Callable[[str], None]
_SHORT = 12


@dataclass(frozen=True)
class LayerBlob:
    """A layer as a blob (what a manifest lists) and what it unpacks to."""

    digest: str  # of the blob as stored (compressed or not)
    media_type: str
    size: int  # blob bytes
    diff_id: str  # of the uncompressed tar


@dataclass(frozen=True)
class Image:
    id: str  # "sha256:<hex of config blob>"
    repo_tags: tuple[str, ...]
    config: dict[str, Any]
    layer_dirs: tuple[str, ...]  # bottom-most first: overlayfs lowerdirs (reverse for mount)
    size: int
    created: str
    layers: tuple[LayerBlob, ...] = ()
    parent: str | None = None  # the image it was built or committed on
    repo_digests: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[len("sha256:") :][:12]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(next_chain(out[-1] if out else None, d))
    return out


def empty_config() -> dict[str, Any]:
    """The config of ``FROM scratch``."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }


@dataclass
class _Txn:
    """What an import added, to be undone if it fails."""

    blobs: list[str] = field(default_factory=list)
    layer_dirs: list[Path] = field(default_factory=list)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class ImageStore:
    def __init__(self, root: Path, in_use: Callable[[str], bool] = lambda image_id: False) -> None:
        self.root = Path(root)
        self.in_use = in_use
        self.tmp = self.root / "tmp"
        self.blobs = BlobStore(self.root / "blobs", self.tmp)
        self.layers_dir = self.root / "layers"
        self.images_dir = self.root / "images"
        for d in (self.layers_dir, self.images_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._rlock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self._sweep_tmp()

    # ------------------------------------------------------------------ locking, index

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The index lock: a thread lock plus flock, re-entrant within one process."""
        with self._rlock:
            if self._depth == 0:
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing drops the flock
                    self._lock_fd = None

    def _sweep_tmp(self) -> None:
        """Remove temp entries of processes that are gone (a crash mid-import)."""
        for entry in self.tmp.iterdir():
            pid = entry.name.split("-")[1] if entry.name.count("-") >= 2 else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                _rm(entry)

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            with open(self.root / name) as f:
                return json.load(f)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}

    def _repos(self) -> dict[str, dict[str, str]]:
        r = self._read_json("repositories.json")
        r.setdefault("tags", {})
        r.setdefault("digests", {})
        return r

    def _save_repos(self, repos: dict[str, dict[str, str]]) -> None:
        _write_json_atomic(self.root / "repositories.json", repos)

    def _record(self, image_id: str) -> dict[str, Any] | None:
        try:
            with open(self.images_dir / f"{image_id[len('sha256:'):]}.json") as f:
                return json.load(f)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def _all_records(self) -> list[dict[str, Any]]:
        out = []
        for p in self.images_dir.glob("*.json"):
            try:
                out.append(json.loads(p.read_text()))
            except FileNotFoundError:
                continue
        return out

    # ------------------------------------------------------------------ layers

    def _layer_name(self, chain_id: str) -> tuple[str, bool]:
        """(folder name, exists) for a chain id; longer names only on a prefix clash."""
        hexpart = chain_id[len("sha256:") :]
        for n in range(_SHORT, 65, 4):
            name = hexpart[:n]
            meta = self.layers_dir / f"{name}.json"
            try:
                if json.loads(meta.read_text())["chain_id"] == chain_id:
                    return name, True
            except FileNotFoundError:
                return name, False
        raise CorruptData(f"layer index clash for {chain_id}")

    def layer_dir(self, chain_id: str) -> Path:
        name, ok = self._layer_name(chain_id)
        if not ok:
            raise NotFound(f"layer {chain_id} is not unpacked")
        return self.layers_dir / name

    def _layer_size(self, chain_id: str) -> int:
        name, _ = self._layer_name(chain_id)
        return int(json.loads((self.layers_dir / f"{name}.json").read_text())["size"])

    def _ensure_layer(self, txn: _Txn, blob: str, expected_diff_id: str | None,
                      parent_chain: str | None, lowers: list[Path], what: str) -> tuple[str, Path]:
        """Unpack a stored layer blob once per chain; returns (diff_id, folder)."""
        if expected_diff_id is not None:
            chain = next_chain(parent_chain, expected_diff_id)
            name, ok = self._layer_name(chain)
            if ok:
                return expected_diff_id, self.layers_dir / name
        tmp = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"layer-{os.getpid()}-"))
        try:
            os.chmod(tmp, 0o755)
            with self.blobs.open(blob) as f:
                res = unpack_layer(f, tmp, lowers, what)  # type: ignore[arg-type]
            if expected_diff_id is not None and res.diff_id != expected_diff_id:
                raise CorruptData(f"{what}: uncompressed content does not match diff_id "
                                  f"{expected_diff_id} (got {res.diff_id})")
            chain = next_chain(parent_chain, res.diff_id)
            with self.locked():
                name, ok = self._layer_name(chain)
                final = self.layers_dir / name
                if ok:
                    _rm(tmp)
                    return res.diff_id, final
                os.rename(tmp, final)
                txn.layer_dirs.append(final)
                _write_json_atomic(self.layers_dir / f"{name}.json", {
                    "chain_id": chain, "diff_id": res.diff_id, "parent": parent_chain,
                    "size": res.size})
            return res.diff_id, final
        except BaseException:
            _rm(tmp)
            raise

    # ------------------------------------------------------------------ imports

    @contextmanager
    def transaction(self) -> Iterator[_Txn]:
        """Undo the blobs and layer folders an import added if it fails."""
        txn = _Txn()
        try:
            yield txn
        except BaseException:
            with self.locked():
                referenced = self._referenced()
                for d in txn.layer_dirs:
                    meta_path = d.with_name(d.name + ".json")
                    try:
                        chain = json.loads(meta_path.read_text())["chain_id"]
                    except (OSError, ValueError, KeyError):
                        chain = None
                    if chain not in referenced["chains"]:
                        meta_path.unlink(missing_ok=True)
                        _rm(d)
                for b in txn.blobs:
                    if b not in referenced["blobs"]:
                        self.blobs.remove(b)
            raise

    def put_blob(self, txn: _Txn, src: Any, expected: str | None, what: str,
                 size: int | None = None) -> str:
        """Store a blob from a stream, verified; skips the copy when already held."""
        if expected is not None and self.blobs.has(expected):
            return expected
        digest = self.blobs.put_stream(src, expected, what, size)
        txn.blobs.append(digest)
        return digest

    def put_blob_bytes(self, txn: _Txn, data: bytes, expected: str | None, what: str) -> str:
        digest = sha256_bytes(data)
        if expected is not None and digest != expected:
            raise CorruptData(f"{what}: digest mismatch: expected {expected}, got {digest}")
        if not self.blobs.has(digest):
            self.blobs.put_bytes(data, digest, what)
            txn.blobs.append(digest)
        return digest

    def register(self, txn: _Txn, config_bytes: bytes, layer_blobs: Sequence[tuple[str, str]],
                 *, tags: Sequence[str] = (), digests: Sequence[str] = (),
                 parent: str | None = None, intermediate: bool = False,
                 progress: Progress | None = None, what: str = "image") -> Image:
        """Add an image whose config and layer blobs are already stored.

        ``layer_blobs`` are (blob digest, media type), bottom first; every layer is unpacked
        and checked against the config's diff_ids.
        """
        try:
            config = json.loads(config_bytes)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise CorruptData(f"{what}: image config is not valid JSON with rootfs.diff_ids") \
                from None
        if len(diff_ids) != len(layer_blobs):
            raise CorruptData(f"{what}: config lists {len(diff_ids)} layers, manifest "
                              f"{len(layer_blobs)}")
        image_id = self.put_blob_bytes(txn, config_bytes, None, f"{what} config")
        descs = []
        lowers: list[Path] = []
        parent_chain: str | None = None
        for (blob, mt), diff_id in zip(layer_blobs, diff_ids, strict=True):
            if progress:
                progress(f"{blob[7:19]}: Extracting")
            got, folder = self._ensure_layer(txn, blob, diff_id, parent_chain, lowers,
                                             f"{what} layer {blob}")
            lowers.append(folder)
            parent_chain = next_chain(parent_chain, got)
            descs.append({"digest": blob, "mediaType": mt, "size": self.blobs.size(blob),
                          "diff_id": got})
            if progress:
                progress(f"{blob[7:19]}: Pull complete")
        with self.locked():
            rec = self._record(image_id) or {}
            if rec:
                # Known already: an explicit import makes a cache image a real one.
                rec["intermediate"] = rec.get("intermediate", False) and intermediate
            else:
                rec = {"id": image_id, "layers": descs, "parent": parent,
                       "intermediate": intermediate, "added": now_rfc3339()}
            _write_json_atomic(self.images_dir / f"{image_id[7:]}.json", rec)
            repos = self._repos()
            for t in tags:
                repos["tags"][parse_reference(t).tagged] = image_id
            for d in digests:
                repos["digests"][d] = image_id
            self._save_repos(repos)
        return self._image(image_id)

    # ------------------------------------------------------------------ reading

    def _image(self, image_id: str, repos: dict[str, dict[str, str]] | None = None) -> Image:
        rec = self._record(image_id)
        if rec is None:
            raise NotFound(f"No such image: {image_id}")
        repos = repos if repos is not None else self._repos()
        config = json.loads(self.blobs.read(image_id))
        chains = chain_ids(config["rootfs"]["diff_ids"])
        dirs = tuple(str(self.layer_dir(c)) for c in chains)
        size = sum(self._layer_size(c) for c in chains)
        return Image(
            id=image_id,
            repo_tags=tuple(sorted(t for t, i in repos["tags"].items() if i == image_id)),
            config=config,
            layer_dirs=dirs,
            size=size,
            created=str(config.get("created", "")),
            layers=tuple(LayerBlob(d["digest"], d["mediaType"], d["size"], d["diff_id"])
                         for d in rec["layers"]),
            parent=rec.get("parent"),
            repo_digests=tuple(sorted(d for d, i in repos["digests"].items() if i == image_id)),
        )

    def resolve(self, ref: str) -> str:
        """The image id ``ref`` names: a tag, a digest ref, or a full/short id."""
        if not ref:
            raise NotFound("No such image: ")
        repos = self._repos()
        hexpart = ref[len("sha256:") :] if ref.startswith("sha256:") else ref
        if len(hexpart) == 64 and looks_like_id(ref):
            if self._record("sha256:" + hexpart) is not None:
                return "sha256:" + hexpart
            raise NotFound(f"No such image: {ref}")
        if not ref.startswith("sha256:"):
            try:
                r = parse_reference(ref)
            except InvalidArgument:
                r = None
            if r is not None:
                if r.digest:
                    hit = repos["digests"].get(f"{r.name}@{r.digest}")
                    if hit:
                        return hit
                elif r.tagged in repos["tags"]:
                    return repos["tags"][r.tagged]
        if looks_like_id(ref):
            hits = [p.stem for p in self.images_dir.glob(f"{hexpart}*.json")]
            if len(hits) == 1:
                return "sha256:" + hits[0]
            if len(hits) > 1:
                raise InvalidArgument(f"short image id {ref!r} is ambiguous")
        raise NotFound(f"No such image: {ref}")

    def get(self, ref: str) -> Image:
        return self._image(self.resolve(ref))

    def exists(self, ref: str) -> bool:
        try:
            self.resolve(ref)
            return True
        except NotFound:
            return False

    def list(self) -> list[Image]:
        """Images a user sees (not build-cache intermediates), newest first."""
        repos = self._repos()
        out = []
        for rec in self._all_records():
            if rec.get("intermediate"):
                continue
            try:
                out.append(self._image(rec["id"], repos))
            except (NotFound, FileNotFoundError):
                continue  # removed meanwhile
        return sorted(out, key=lambda i: i.created, reverse=True)

    # ------------------------------------------------------------------ tags and removal

    def tag(self, ref_or_id: str, new_ref: str) -> None:
        target = parse_reference(new_ref)
        if target.digest:
            raise InvalidArgument(f"cannot tag with a digest: {new_ref}")
        with self.locked():
            image_id = self.resolve(ref_or_id)
            repos = self._repos()
            repos["tags"][target.tagged] = image_id
            self._save_repos(repos)
            self.promote(image_id)

    def promote(self, image_id: str) -> None:
        """Make a build-cache image a user-visible one (a build's result)."""
        with self.locked():
            rec = self._record(image_id)
            if rec is None:
                raise NotFound(f"No such image: {image_id}")
            if rec.get("intermediate"):
                rec["intermediate"] = False
                _write_json_atomic(self.images_dir / f"{image_id[7:]}.json", rec)

    def remove(self, ref: str, force: bool = False) -> builtins.list[str]:
        """Docker's rmi: untag; delete the image once no tag is left.

        By name: removes that tag; the image goes with its last tag unless a container
        uses it (Conflict; with force only the tag goes). By id: refuses an image with
        several tags or in use unless forced; forced and in use, it is only untagged.
        """
        out: list[str] = []
        with self.locked():
            image_id = self.resolve(ref)
            repos = self._repos()
            tags = [t for t, i in repos["tags"].items() if i == image_id]
            digests = [d for d, i in repos["digests"].items() if i == image_id]
            key = _index_key(ref)
            if key is not None and (key in repos["tags"] or key in repos["digests"]):
                names = [key]
                last = len(tags) + len(digests) <= 1
                if last and self.in_use(image_id) and not force:
                    raise Conflict(f"conflict: unable to remove repository reference {ref!r} "
                                   f"(must force) - a container is using image {image_id[7:19]}")
            else:  # by id
                if len(tags) > 1 and not force:
                    raise Conflict(f"conflict: unable to delete {image_id[7:19]} (must be "
                                   "forced) - image is referenced in multiple repositories")
                if self.in_use(image_id) and not force:
                    raise Conflict(f"conflict: unable to delete {image_id[7:19]} (must be "
                                   "forced) - image is being used by a container")
                names = tags + digests
                last = True
            for n in names:
                repos["tags"].pop(n, None)
                repos["digests"].pop(n, None)
                out.append(f"Untagged: {n}")
            self._save_repos(repos)
            if last and not self.in_use(image_id):
                self._delete(image_id, repos)
                out.append(f"Deleted: {image_id}")
                out.extend(self._prune_intermediates(repos))
        return out

    def _delete(self, image_id: str, repos: dict[str, dict[str, str]]) -> None:
        for n in [n for n, i in repos["tags"].items() if i == image_id]:
            repos["tags"].pop(n)
        for n in [n for n, i in repos["digests"].items() if i == image_id]:
            repos["digests"].pop(n)
        self._save_repos(repos)
        rec = self._record(image_id)
        (self.images_dir / f"{image_id[7:]}.json").unlink(missing_ok=True)
        if rec is None:
            return
        cache = self._read_json("build-cache.json")
        stale = [k for k, v in cache.items() if v == image_id]
        if stale:
            for k in stale:
                cache.pop(k)
            _write_json_atomic(self.root / "build-cache.json", cache)
        try:
            config = json.loads(self.blobs.read(image_id))
            chains = chain_ids(config["rootfs"]["diff_ids"])
        except FileNotFoundError:
            chains = []
        self._gc([image_id] + [d["digest"] for d in rec["layers"]], chains)

    def _referenced(self) -> dict[str, set[str]]:
        blobs: set[str] = set()
        chains: set[str] = set()
        for rec in self._all_records():
            blobs.add(rec["id"])
            blobs.update(d["digest"] for d in rec["layers"])
            chains.update(chain_ids([d["diff_id"] for d in rec["layers"]]))
        return {"blobs": blobs, "chains": chains}

    def _gc(self, blob_candidates: Sequence[str], chain_candidates: Sequence[str]) -> None:
        ref = self._referenced()
        for b in blob_candidates:
            if b not in ref["blobs"]:
                self.blobs.remove(b)
        for c in chain_candidates:
            if c in ref["chains"]:
                continue
            name, ok = self._layer_name(c)
            if ok:
                _rm(self.layers_dir / name)
                (self.layers_dir / f"{name}.json").unlink(missing_ok=True)

    def _prune_intermediates(self, repos: dict[str, dict[str, str]]) -> builtins.list[str]:
        """Drop build-cache images no longer under any user-visible image."""
        records = {r["id"]: r for r in self._all_records()}
        keep: set[str] = set()
        for r in records.values():
            if r.get("intermediate"):
                continue
            cur: str | None = r["id"]
            while cur and cur not in keep:
                keep.add(cur)
                cur = records.get(cur, {}).get("parent")
        out = []
        for i, r in records.items():
            if r.get("intermediate") and i not in keep and not self.in_use(i):
                self._delete(i, repos)
                out.append(f"Deleted: {i}")
        return out

    # ------------------------------------------------------------------ build cache

    def cache_get(self, key: str) -> Image | None:
        image_id = self._read_json("build-cache.json").get(key)
        if not image_id or self._record(image_id) is None:
            return None
        return self._image(image_id)

    def cache_put(self, key: str, image_id: str) -> None:
        with self.locked():
            cache = self._read_json("build-cache.json")
            cache[key] = image_id
            _write_json_atomic(self.root / "build-cache.json", cache)

    # ------------------------------------------------------------------ new images

    def create_image(self, parent: Image | None, layers: Sequence[Path] = (), *,
                     container_config: dict[str, Any] | None = None, created_by: str = "",
                     comment: str = "", ref: str | None = None,
                     intermediate: bool = False) -> Image:
        """A new image on ``parent`` (None: scratch) with ``layers`` added on top.

        Each layer is a folder (an overlay upper dir or a staged tree: packed, whiteouts
        converted) or a tar file (plain or gzip, stored as is). ``container_config``
        replaces the parent's ``config`` section when given. One history entry per layer
        (or one ``empty_layer`` entry when there is none) records ``created_by``.
        """
        config = copy.deepcopy(parent.config) if parent else empty_config()
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        config.setdefault("history", [])
        if container_config is not None:
            config["config"] = copy.deepcopy(container_config)
        created = now_rfc3339()
        config["created"] = created
        config.pop("container", None)
        config.pop("container_config", None)
        with self.transaction() as txn:
            blobs: list[tuple[str, str]] = [(lb.digest, lb.media_type)
                                            for lb in (parent.layers if parent else ())]
            lowers = [Path(d) for d in parent.layer_dirs] if parent else []
            parent_chain = chain_ids(config["rootfs"]["diff_ids"])[-1] \
                if config["rootfs"]["diff_ids"] else None
            for layer in layers:
                blob, mt = self._layer_blob(txn, Path(layer))
                diff_id, folder = self._ensure_layer(txn, blob, None, parent_chain, lowers,
                                                     f"new layer from {layer}")
                lowers.append(folder)
                parent_chain = next_chain(parent_chain, diff_id)
                blobs.append((blob, mt))
                config["rootfs"]["diff_ids"].append(diff_id)
                config["history"].append(_history(created, created_by, comment, False))
            if not layers:
                config["history"].append(_history(created, created_by, comment, True))
            data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            return self.register(txn, data, blobs, tags=[ref] if ref else [],
                                 parent=parent.id if parent else None,
                                 intermediate=intermediate, what="new image")

    def _layer_blob(self, txn: _Txn, layer: Path) -> tuple[str, str]:
        if layer.is_dir():
            with self.blobs.writer(what=f"layer from {layer}") as w:
                pack_dir(layer, w)  # type: ignore[arg-type]
            if w.digest not in txn.blobs:
                txn.blobs.append(w.digest)
            return w.digest, media.OCI_LAYER
        with open(layer, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            digest = self.put_blob(txn, f, None, f"layer {layer}")
        return digest, media.OCI_LAYER_GZIP if gz else media.OCI_LAYER

    def commit(self, parent: Image, upper_dir: Path, *, config: dict[str, Any] | None = None,
               comment: str = "", ref: str | None = None, created_by: str = "") -> Image:
        """``docker commit``: the container's overlay upper dir becomes a layer on parent."""
        return self.create_image(parent, [upper_dir], container_config=config,
                                 created_by=created_by, comment=comment, ref=ref)

    # ------------------------------------------------------------------ archives, registries

    def load(self, archive: Path, progress: Progress | None = None) -> builtins.list[str]:
        from .archive import load_archive

        return load_archive(self, Path(archive), progress)

    def save(self, refs: builtins.list[str], out: Path) -> None:
        from .archive import save_archive

        save_archive(self, refs, Path(out))

    def pull(self, ref: str, progress: Progress | None = None) -> Image:
        from .registry import pull

        return pull(self, ref, progress)

    def push(self, ref: str, progress: Progress | None = None) -> None:
        from .registry import push

        push(self, ref, progress)

    def open_layer(self, blob: str) -> Any:
        """The layer blob decompressed (for exports that want plain tars)."""
        return open_decompressed(self.blobs.open(blob))


def _index_key(ref: str) -> str | None:
    """The tag-index key a name refers to ("name:tag" or "name@digest"); None for an id."""
    try:
        r = parse_reference(ref)
    except InvalidArgument:
        return None
    return f"{r.name}@{r.digest}" if r.digest else r.tagged


def next_chain(parent_chain: str | None, diff_id: str) -> str:
    return sha256_bytes(f"{parent_chain} {diff_id}".encode()) if parent_chain else diff_id


def _history(created: str, created_by: str, comment: str, empty: bool) -> dict[str, Any]:
    h: dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        h["comment"] = comment
    if empty:
        h["empty_layer"] = True
    return h


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


__all__ = ["Image", "ImageStore", "LayerBlob", "Reference", "chain_ids", "empty_config"]
