"""The image store: load/save archives, lookups, tags, removal and garbage collection."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from pyswarm.common.errors import Conflict, CorruptData, NotFound
from pyswarm.worker.images.layers import unpack_layer
from pyswarm.worker.images.store import ImageStore

from .test_images_helpers import Entry, layer_tar, save_archive, sha, store_contents

BASE = layer_tar([
    Entry("bin", "dir", mode=0o755),
    Entry("bin/sh", data=b"#!shell\n", mode=0o755),
    Entry("etc", "dir", mode=0o755),
    Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    Entry("etc/link", "symlink", link="passwd"),
    Entry("bin/sh2", "hardlink", link="bin/sh"),
])
TOP = layer_tar([
    Entry("app", "dir", mode=0o755),
    Entry("app/run", data=b"echo hi\n", mode=0o755),
    Entry("app/sh", "hardlink", link="bin/sh"),  # points into the layer below: a copy
])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.mark.parametrize("form,gz,legacy", [
    ("manifest", False, False), ("manifest", True, False), ("manifest", False, True),
    ("oci", False, False), ("oci", True, False),
])
def test_load_forms(store: ImageStore, tmp_path: Path, form: str, gz: bool, legacy: bool) -> None:
    arc = tmp_path / "img.tar"
    config = save_archive(arc, [BASE, TOP], ["app:v1"], form=form, gzip_layers=gz, legacy=legacy)
    progress: list[str] = []
    assert store.load(arc, progress.append) == ["app:v1"]
    assert "Loaded image: app:v1" in progress
    img = store.get("app:v1")
    assert img.id == sha(config)
    assert img.repo_tags == ("app:v1",)
    assert img.config["config"]["Cmd"] == ["sh"]
    assert len(img.layer_dirs) == 2
    base, top = map(Path, img.layer_dirs)
    assert (base / "bin/sh").read_bytes() == b"#!shell\n"
    assert os.readlink(base / "etc/link") == "passwd"
    assert os.stat(base / "bin/sh2").st_ino == os.stat(base / "bin/sh").st_ino
    assert (top / "app/sh").read_bytes() == b"#!shell\n"
    assert os.stat(top / "app/sh").st_ino != os.stat(base / "bin/sh").st_ino
    assert os.stat(top / "app/run").st_mtime == 1_700_000_000
    assert img.size == len(b"#!shell\n") * 2 + 26 + 8
    # Loading again changes nothing and unpacks nothing twice.
    before = store_contents(store.root)
    assert store.load(arc) == ["app:v1"]
    assert store_contents(store.root) == before


def test_lookup_by_id_prefix_and_digest_forms(store: ImageStore, tmp_path: Path) -> None:
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE], ["busybox"])
    store.load(arc)
    img = store.get("busybox")
    assert store.get("busybox:latest").id == img.id
    assert store.get(img.id).id == img.id
    assert store.get(img.id[7:]).id == img.id
    assert store.get(img.id[7:13]).id == img.id
    assert store.get("docker.io/library/busybox").id == img.id
    with pytest.raises(NotFound, match="No such image: nope"):
        store.get("nope")
    with pytest.raises(NotFound):
        store.get("busybox:other")


def test_untagged_load_returns_id(store: ImageStore, tmp_path: Path) -> None:
    arc = tmp_path / "img.tar"
    config = save_archive(arc, [BASE], [], form="oci")
    assert store.load(arc) == [sha(config)]
    assert store.list()[0].repo_tags == ()


@pytest.mark.parametrize("form", ["manifest", "oci"])
def test_digest_mismatch_leaves_nothing(store: ImageStore, tmp_path: Path, form: str) -> None:
    arc = tmp_path / "bad.tar"
    save_archive(arc, [BASE, TOP], ["app"], form=form, tamper="layer")
    before = store_contents(store.root)
    with pytest.raises(CorruptData, match="digest mismatch|diff_id|corrupt"):
        store.load(arc)
    assert store_contents(store.root) == before
    assert store.list() == []


def test_legacy_layer_checked_through_diff_id(store: ImageStore, tmp_path: Path) -> None:
    arc = tmp_path / "bad.tar"
    save_archive(arc, [BASE], ["app"], legacy=True, tamper="layer")
    with pytest.raises(CorruptData):
        store.load(arc)
    assert store_contents(store.root)["blobs/sha256"] == []


def test_second_layer_failure_undoes_first(store: ImageStore, tmp_path: Path) -> None:
    evil = layer_tar([Entry("../../etc/evil", data=b"x")])
    arc = tmp_path / "evil.tar"
    save_archive(arc, [BASE, evil], ["evil"])
    before = store_contents(store.root)
    with pytest.raises(CorruptData, match=r"\.\./\.\./etc/evil"):
        store.load(arc)
    assert store_contents(store.root) == before
    assert not (tmp_path / "etc/evil").exists()


@pytest.mark.parametrize("entries", [
    [Entry("/abs", data=b"x")],
    [Entry("a/../../x", data=b"x")],
    # A symlink planted first must not be followed by a later member.
    [Entry("link", "symlink", link="/tmp"), Entry("link/owned", data=b"x")],
    [Entry("link", "symlink", link="../../.."), Entry("link/owned", data=b"x")],
    [Entry("h", "hardlink", link="../outside")],
])
def test_hostile_members(store: ImageStore, tmp_path: Path, entries: list[Entry]) -> None:
    arc = tmp_path / "evil.tar"
    save_archive(arc, [layer_tar(entries)], ["evil"])
    with pytest.raises(CorruptData) as e:
        store.load(arc)
    assert entries[-1].name in str(e.value)
    assert not Path("/tmp/owned").exists()
    assert store_contents(store.root)["layers"] == []
    assert store_contents(store.root)["tmp"] == []


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.95])
def test_truncated_archive(store: ImageStore, tmp_path: Path, cut: float) -> None:
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["app"])
    with tarfile.open(arc) as t:  # cut inside the content, not in the end padding
        end = max(m.offset_data + m.size for m in t.getmembers())
    arc.write_bytes(arc.read_bytes()[: int(end * cut)])
    with pytest.raises(CorruptData):
        store.load(arc)
    assert store_contents(store.root) == {"blobs/sha256": [], "layers": [], "tmp": [],
                                          "images": []}


def test_truncated_gzip_layer(store: ImageStore, tmp_path: Path) -> None:
    """A layer blob whose digest matches but whose gzip stream is cut short."""
    cut = gzip.compress(BASE)[:-30]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(BASE)]}}).encode()
    arc = tmp_path / "img.tar"
    save_archive(arc, [cut], ["app"], config=config)
    with pytest.raises(CorruptData, match="layer"):
        store.load(arc)
    assert store_contents(store.root)["blobs/sha256"] == []


def test_save_load_roundtrip(store: ImageStore, tmp_path: Path) -> None:
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["app:v1"], gzip_layers=True)
    store.load(arc)
    img = store.get("app:v1")
    out = tmp_path / "out.tar"
    store.save(["app:v1"], out)
    with tarfile.open(out) as t:
        names = set(t.getnames())
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
        repos = json.load(t.extractfile("repositories"))  # type: ignore[arg-type]
    # What `docker load` reads: a list of {Config, RepoTags, Layers} naming members.
    assert manifest == [{"Config": f"blobs/sha256/{img.id[7:]}", "RepoTags": ["app:v1"],
                         "Layers": [f"blobs/sha256/{lb.digest[7:]}" for lb in img.layers]}]
    assert {manifest[0]["Config"], *manifest[0]["Layers"], "oci-layout"} <= names
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == \
        "docker.io/library/app:v1"
    assert repos == {"app": {"v1": img.layers[-1].digest[7:]}}
    assert not list(tmp_path.glob(".out.tar*"))

    other = ImageStore(tmp_path / "other")
    assert other.load(out) == ["app:v1"]
    again = other.get("app:v1")
    assert again.id == img.id
    assert (Path(again.layer_dirs[1]) / "app/run").read_bytes() == b"echo hi\n"
    # The OCI form of the same archive loads to the same image.
    oci_only = tmp_path / "oci.tar"
    with tarfile.open(out) as src, tarfile.open(oci_only, "w") as dst:
        for m in src.getmembers():
            if m.name not in ("manifest.json", "repositories"):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    third = ImageStore(tmp_path / "third")
    assert third.load(oci_only) == ["app:v1"]
    assert third.get("app:v1").id == img.id


def test_tag_and_remove_semantics(tmp_path: Path) -> None:
    used: set[str] = set()
    store = ImageStore(tmp_path / "s", in_use=lambda i: i in used)
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["app:v1"])
    store.load(arc)
    img = store.get("app:v1")
    store.tag("app:v1", "app:v2")
    store.tag(img.id[7:19], "127.0.0.1:5000/app")
    assert store.get("app:v2").repo_tags == ("127.0.0.1:5000/app:latest", "app:v1", "app:v2")
    with pytest.raises(Conflict, match="multiple repositories"):
        store.remove(img.id)
    assert store.remove("app:v2") == ["Untagged: app:v2"]
    assert store.remove("127.0.0.1:5000/app") == ["Untagged: 127.0.0.1:5000/app:latest"]
    used.add(img.id)
    with pytest.raises(Conflict, match="must force"):
        store.remove("app:v1")
    # Forced while in use: only the tag goes; the image (and its layers) stay.
    assert store.remove("app:v1", force=True) == ["Untagged: app:v1"]
    assert Path(img.layer_dirs[0]).is_dir()
    used.clear()
    assert store.remove(img.id[7:15]) == [f"Deleted: {img.id}"]
    assert store_contents(store.root) == {"blobs/sha256": [], "layers": [], "tmp": [],
                                          "images": []}
    with pytest.raises(NotFound):
        store.get(img.id)


def test_remove_keeps_shared_layers(store: ImageStore, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    save_archive(a, [BASE], ["base"])
    save_archive(b, [BASE, TOP], ["app"])
    store.load(a)
    store.load(b)
    base_dir = store.get("base").layer_dirs[0]
    assert store.get("app").layer_dirs[0] == base_dir
    store.remove("app")
    assert Path(base_dir, "bin/sh").exists()
    assert [i.repo_tags for i in store.list()] == [("base:latest",)]
    store.remove("base")
    assert store_contents(store.root)["layers"] == []


def test_layer_dir_names_are_short(store: ImageStore, tmp_path: Path) -> None:
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["app"])
    store.load(arc)
    assert all(len(Path(d).name) == 12 for d in store.get("app").layer_dirs)


def test_not_an_archive(store: ImageStore, tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    p.write_bytes(b"hello")
    with pytest.raises(CorruptData):
        store.load(p)
    with tarfile.open(p, "w"):
        pass
    with pytest.raises(CorruptData, match="neither manifest.json nor index.json"):
        store.load(p)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.lists(hs.tuples(hs.integers(0, len(TOP) - 1), hs.integers(0, 255)), min_size=1,
                max_size=8))
def test_fuzz_unpack_only_corrupt_data(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    """A damaged layer either unpacks inside its folder or fails with CorruptData."""
    data = bytearray(TOP)
    for pos, val in flips:
        data[pos] = val
    dest = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        unpack_layer(io.BytesIO(bytes(data)), dest, [], "fuzz")
    except CorruptData:
        pass
    outside = {p.name for p in tmp_path.iterdir()}
    assert all(n.startswith("tmp") for n in outside)
    shutil.rmtree(dest)
