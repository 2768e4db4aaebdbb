"""Layer unpacking and packing on the real filesystem: ownership, devices, whiteouts."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pyswarm.worker.images.layers import OPAQUE_XATTR, pack_dir
from pyswarm.worker.images.store import ImageStore
from tests.unit.test_images_helpers import Entry, layer_tar, save_archive

pytestmark = pytest.mark.root

BASE = layer_tar([
    Entry("etc", "dir", mode=0o755),
    Entry("etc/old", data=b"old"),
    Entry("var", "dir", mode=0o755),
    Entry("var/cache", "dir", mode=0o755),
    Entry("var/cache/a", data=b"a"),
    Entry("usr", "dir", mode=0o755),
    Entry("usr/bin", "dir", mode=0o755),
    Entry("usr/bin/su", data=b"su", mode=0o4755, uid=0, gid=0),
    Entry("home", "dir", mode=0o755),
    Entry("home/user", "dir", mode=0o700, uid=1000, gid=1000),
    Entry("home/user/f", data=b"mine", mode=0o600, uid=1000, gid=1000,
          xattrs={"user.note": "hello"}),
    Entry("dev", "dir", mode=0o755),
    Entry("dev/null", "char", mode=0o666),
    Entry("run", "dir", mode=0o755),
    Entry("run/fifo", "fifo", mode=0o620),
    Entry("tmp", "dir", mode=0o1777),
])
TOP = layer_tar([
    Entry("etc", "dir", mode=0o755),
    Entry("etc/.wh.old", data=b""),
    Entry("var", "dir", mode=0o755),
    Entry("var/cache", "dir", mode=0o755),
    Entry("var/cache/.wh..wh..opq", data=b""),
    Entry("var/cache/b", data=b"b"),
    # Hostile: an overlay xattr smuggled in a tar is dropped.
    Entry("x", data=b"x", xattrs={"trusted.overlay.redirect": "/etc"}),
])


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, Path]:
    store = ImageStore(tmp_path / "store")
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE, TOP], ["t"], gzip_layers=True)
    store.load(arc)
    base, top = map(Path, store.get("t").layer_dirs)
    return base, top


def test_metadata_kept(image: tuple[Path, Path]) -> None:
    base, _ = image
    su = os.lstat(base / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    f = os.lstat(base / "home/user/f")
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (1000, 1000, 0o600)
    assert os.getxattr(base / "home/user/f", "user.note") == b"hello"
    assert os.lstat(base / "home/user").st_uid == 1000
    assert os.lstat(base / "home/user").st_mtime == 1_700_000_000
    null = os.lstat(base / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISFIFO(os.lstat(base / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(base / "tmp").st_mode) == 0o1777


def test_whiteouts_become_overlay_form(image: tuple[Path, Path]) -> None:
    _, top = image
    wh = os.lstat(top / "etc/old")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert not (top / "etc/.wh.old").exists()
    assert os.getxattr(top / "var/cache", OPAQUE_XATTR) == b"y"
    assert not (top / "var/cache/.wh..wh..opq").exists()
    assert (top / "var/cache/b").read_bytes() == b"b"
    assert OPAQUE_XATTR not in os.listxattr(top / "etc")
    assert not [x for x in os.listxattr(top / "x") if x.startswith("trusted.overlay")]


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


def test_pack_converts_overlay_form_back(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "cache").mkdir()
    os.setxattr(upper / "cache", OPAQUE_XATTR, b"y")
    (upper / "cache/new").write_text("n")
    (upper / "f").write_text("f")
    os.link(upper / "f", upper / "g")
    os.chown(upper / "f", 7, 8)
    buf = io.BytesIO()
    pack_dir(upper, buf)
    m = _members(buf.getvalue())
    assert list(m) == ["cache", "cache/.wh..wh..opq", "cache/new", "etc", "etc/.wh.gone",
                       "f", "g"]
    assert m["etc/.wh.gone"].isreg() and m["etc/.wh.gone"].size == 0
    assert m["g"].islnk() and m["g"].linkname == "f"
    assert (m["f"].uid, m["f"].gid) == (7, 8)
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for k in m["cache"].pax_headers)
    buf2 = io.BytesIO()
    pack_dir(upper, buf2)
    assert buf.getvalue() == buf2.getvalue()  # deterministic


def test_commit_upper_dir(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    arc = tmp_path / "img.tar"
    save_archive(arc, [BASE], ["base"])
    store.load(arc)
    base = store.get("base")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/old", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "etc/new").write_text("new")
    img = store.commit(base, upper, config={"Cmd": ["true"]}, comment="snap",
                       ref="snap:1", created_by="sh -c touch")
    assert img.repo_tags == ("snap:1",)
    assert img.config["config"] == {"Cmd": ["true"]}
    assert img.config["history"][-1]["comment"] == "snap"
    assert img.config["rootfs"]["diff_ids"][:1] == base.config["rootfs"]["diff_ids"]
    assert img.parent == base.id
    with store.blobs.open(img.layers[-1].digest) as f:
        m = _members(f.read())
    assert "etc/.wh.old" in m and "etc/new" in m
    top = Path(img.layer_dirs[-1])
    assert stat.S_ISCHR(os.lstat(top / "etc/old").st_mode)
    assert (top / "etc/new").read_text() == "new"
