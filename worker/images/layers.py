"""Layer tars <-> overlayfs layer folders.

Unpacking turns an OCI/Docker layer tar into a folder overlayfs can stack as a lowerdir:
``.wh.NAME`` becomes a 0/0 character device ``NAME`` and ``.wh..wh..opq`` marks its folder
with ``trusted.overlay.opaque=y``. Packing does the reverse for an overlay upper dir.

Security policy for unpacking (the tar is untrusted):
- a member named absolutely or with a ``..`` component is refused (CorruptData);
- every path is walked from the layer root one component at a time through directory fds
  with O_NOFOLLOW, so a symlink planted earlier in the same layer is never followed;
- hardlinks may only point at paths inside the layer stack; one that points into a lower
  layer becomes a copy (overlayfs cannot hardlink across layers);
- ``trusted.overlay.*`` xattrs in the tar are dropped: only whiteout conversion sets them.
Ownership, modes (setuid too), mtimes, devices, fifos and other xattrs are kept when root.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyswarm.common.errors import CorruptData, InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_XATTRS = "trusted.overlay."
_PAX_XATTR = "SCHILY.xattr."
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str  # sha256 of the uncompressed tar stream
    size: int  # bytes of regular file content


class _HashingReader:
    """Read-through hasher: the diff_id is the digest of every uncompressed byte."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.h.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def open_decompressed(f: BinaryIO) -> BinaryIO:
    """Plain tar or gzip, told apart by the magic bytes (media types are not trusted)."""
    head = f.read(6)
    f.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if head[:4] == b"\x28\xb5\x2f\xfd":
        raise CorruptData("zstd-compressed layers are not supported")
    return f


def _clean_parts(name: str, what: str) -> list[str]:
    if name.startswith("/"):
        raise CorruptData(f"{what}: member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CorruptData(f"{what}: member {name!r}: path escapes the layer")
    return parts


class _Tree:
    """A folder walked only through directory fds, never through symlinks."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = root
        self.what = what

    def open_dir(self, parts: Sequence[str], *, create: bool, member: str) -> int | None:
        """An fd for the folder ``parts``; None when it is missing and create is False."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for p in parts:
                try:
                    nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(p, 0o755, dir_fd=fd)
                    nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        if not create:
                            os.close(fd)
                            return None
                        raise CorruptData(
                            f"{self.what}: member {member!r}: path goes through a symlink or "
                            f"a non-directory ({p!r})"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(dir_fd: int, name: str) -> None:
    st = _lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _is_root() -> bool:
    return os.geteuid() == 0


def _set_xattrs(target: int | str, xattrs: dict[str, bytes]) -> None:
    for k, v in xattrs.items():
        try:
            if isinstance(target, int):
                os.setxattr(target, k, v)
            else:
                os.setxattr(target, k, v, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise


def _member_xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    out = {}
    for k, v in m.pax_headers.items():
        if k.startswith(_PAX_XATTR):
            name = k[len(_PAX_XATTR) :]
            if not name.startswith(_OVERLAY_XATTRS):
                out[name] = v.encode("utf-8", "surrogateescape")
    return out


def _apply_meta(pfd: int, name: str, m: tarfile.TarInfo, *, symlink: bool = False) -> None:
    if _is_root():
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
    if not symlink:
        # The entry was just created by us in a private folder, so following is moot.
        os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        _set_xattrs(f"/proc/self/fd/{pfd}/{name}", _member_xattrs(m))
    ns = int(m.mtime * 1e9)
    os.utime(name, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)


def _copy_fd(src: BinaryIO, dst_fd: int) -> int:
    n = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return n
        view = memoryview(chunk)
        while view:
            w = os.write(dst_fd, view)
            view = view[w:]
        n += len(chunk)


def _find_in_lowers(lowers: Sequence[Path], parts: list[str], what: str) -> tuple[int, str] | None:
    """(parent fd, name) of the topmost lower file at ``parts``; None if absent/whited out."""
    for lower in reversed(lowers):
        tree = _Tree(lower, what)
        pfd = tree.open_dir(parts[:-1], create=False, member="/".join(parts))
        if pfd is None:
            continue
        st = _lstat_at(pfd, parts[-1])
        if st is None:
            os.close(pfd)
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            os.close(pfd)
            return None
        return pfd, parts[-1]
    return None


def unpack_layer(src: BinaryIO, dest: Path, lowers: Sequence[Path], what: str) -> UnpackResult:
    """Unpack the (maybe gzip) layer tar ``src`` into the empty folder ``dest``.

    ``lowers`` are the unpacked layers under this one, bottom first (for hardlinks that
    point below). Raises CorruptData naming ``what`` and the member on any damage; the
    caller owns ``dest`` and removes it on failure.
    """
    member_name = "(start)"
    try:
        reader = _HashingReader(open_decompressed(src))
        size = 0
        tree = _Tree(dest, what)
        dir_times: list[tuple[list[str], tarfile.TarInfo]] = []
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for m in tar:
                member_name = m.name
                size += _unpack_member(tar, m, tree, lowers, what, dir_times)
        reader.drain()
        # Folder mtimes last: creating their children moved them.
        for parts, m in sorted(dir_times, key=lambda t: -len(t[0])):
            fd = tree.open_dir(parts, create=False, member=m.name)
            if fd is not None:
                ns = int(m.mtime * 1e9)
                os.utime(fd, ns=(ns, ns))
                os.close(fd)
        return UnpackResult("sha256:" + reader.h.hexdigest(), size)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptData(f"{what}: truncated or corrupt layer at member {member_name!r}: "
                          f"{e}") from None


def _unpack_member(tar: tarfile.TarFile, m: tarfile.TarInfo, tree: _Tree,
                   lowers: Sequence[Path], what: str,
                   dir_times: list[tuple[list[str], tarfile.TarInfo]]) -> int:
    parts = _clean_parts(m.name, what)
    if not parts:
        if m.isdir():  # the layer root itself
            fd = tree.open_dir([], create=False, member=m.name)
            assert fd is not None
            try:
                if _is_root():
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777)
            finally:
                os.close(fd)
        return 0
    base = parts[-1]
    pfd = tree.open_dir(parts[:-1], create=True, member=m.name)
    assert pfd is not None
    try:
        if base == OPAQUE_MARKER:
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            return 0
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return 0  # aufs bookkeeping (.wh..wh.plnk and such): meaningless here
        if base.startswith(WHITEOUT_PREFIX):
            name = base[len(WHITEOUT_PREFIX) :]
            _remove_at(pfd, name)
            os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            if _is_root():
                os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            return 0
        existing = _lstat_at(pfd, base)
        if m.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove_at(pfd, base)
                existing = None
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=pfd)
            _apply_meta(pfd, base, m)
            dir_times.append((parts, m))
            return 0
        if existing is not None:
            _remove_at(pfd, base)
        if m.isreg():
            return _write_file(tar, m, pfd, base)
        if m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            _apply_meta(pfd, base, m, symlink=True)
        elif m.islnk():
            return _hardlink(m, pfd, base, tree, lowers, what)
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            _apply_meta(pfd, base, m)
        elif m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            _apply_meta(pfd, base, m)
        else:
            raise CorruptData(f"{what}: member {m.name!r}: unsupported tar entry type {m.type!r}")
        return 0
    finally:
        os.close(pfd)


def _write_file(tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> int:
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)
    try:
        data = tar.extractfile(m)
        n = _copy_fd(data, fd) if data is not None else 0  # type: ignore[arg-type]
        if _is_root():
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid
        _set_xattrs(fd, _member_xattrs(m))
        ns = int(m.mtime * 1e9)
        os.utime(fd, ns=(ns, ns))
        return n
    finally:
        os.close(fd)


def _hardlink(m: tarfile.TarInfo, pfd: int, base: str, tree: _Tree,
              lowers: Sequence[Path], what: str) -> int:
    """Link within the layer; copy (and count) a file that lives in a lower layer."""
    tparts = _clean_parts(m.linkname, what)
    if not tparts:
        raise CorruptData(f"{what}: member {m.name!r}: hardlink to the layer root")
    tfd = tree.open_dir(tparts[:-1], create=False, member=m.name)
    if tfd is not None:
        try:
            st = _lstat_at(tfd, tparts[-1])
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                return 0
        finally:
            os.close(tfd)
    found = _find_in_lowers(lowers, tparts, what)
    if found is None:
        raise CorruptData(f"{what}: member {m.name!r}: hardlink to missing {m.linkname!r}")
    lfd, lname = found
    try:
        st = os.stat(lname, dir_fd=lfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptData(f"{what}: member {m.name!r}: hardlink to a non-file in a lower layer")
        src_fd = os.open(lname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lfd)
        with os.fdopen(src_fd, "rb") as src:
            dfd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                          dir_fd=pfd)
            try:
                n = _copy_fd(src, dfd)  # type: ignore[arg-type]
                if _is_root():
                    os.fchown(dfd, st.st_uid, st.st_gid)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_mtime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        return n
    finally:
        os.close(lfd)


# ----------------------------------------------------------------------------- packing


def pack_dir(src: Path, out: BinaryIO) -> None:
    """Write ``src`` (a layer folder or overlay upper dir) as a layer tar to ``out``.

    Sorted names, so the same tree gives the same bytes. Overlay whiteouts (0/0 character
    devices) become ``.wh.NAME``; opaque folders get a ``.wh..wh..opq`` entry. Overlay's
    renamed-folder redirects cannot be expressed in a tar, so they are refused.
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        seen: dict[tuple[int, int], str] = {}
        _pack_tree(tar, str(src), "", seen)


def _xattrs_of(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _pack_tree(tar: tarfile.TarFile, root: str, rel: str, seen: dict[tuple[int, int], str]) -> None:
    folder = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        arc = f"{rel}/{name}" if rel else name
        st = os.lstat(path)
        xattrs = _xattrs_of(path) if not stat.S_ISLNK(st.st_mode) else {}
        if any(k.startswith("trusted.overlay.redirect") or k.startswith("trusted.overlay.metacopy")
               for k in xattrs):
            raise InvalidArgument(f"{arc}: overlay redirect/metacopy entries cannot be packed "
                                  "into a layer (mount overlay with redirect_dir=off)")
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            wh_name = WHITEOUT_PREFIX + name
            wh = tarfile.TarInfo(f"{rel}/{wh_name}" if rel else wh_name)
            wh.mode, wh.mtime = 0o600, int(st.st_mtime)
            tar.addfile(wh)
            continue
        ti = tarfile.TarInfo(arc)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        ti.pax_headers = {_PAX_XATTR + k: v.decode("utf-8", "surrogateescape")
                          for k, v in xattrs.items() if not k.startswith(_OVERLAY_XATTRS)}
        if stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
            if xattrs.get(OPAQUE_XATTR) == b"y":
                opq = tarfile.TarInfo(f"{arc}/{OPAQUE_MARKER}")
                opq.mode, opq.mtime = 0o600, ti.mtime
                tar.addfile(opq)
            _pack_tree(tar, root, arc, seen)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                ti.type, ti.linkname = tarfile.LNKTYPE, seen[key]
                tar.addfile(ti)
                continue
            seen[key] = arc
            ti.size = st.st_size
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                tar.addfile(ti, f)
        elif stat.S_ISLNK(st.st_mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
            tar.addfile(ti)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(ti)
        elif stat.S_ISFIFO(st.st_mode):
            ti.type = tarfile.FIFOTYPE
            tar.addfile(ti)
        # Sockets are not content: skipped, as Docker does.
