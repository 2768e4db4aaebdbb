"""Content-addressed blobs: ``blobs/sha256/<hex>``.

Policy: a blob file exists only once its bytes are complete and match its name. Writers hash
into a temp file in the store's ``tmp/`` folder, fsync, verify, then rename; a crash leaves
only a temp file, which the store sweeps on start.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pyswarm.common.errors import CorruptData

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise CorruptData(f"unsupported or malformed digest: {digest!r}")
    return digest


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HashingWriter:
    """A file wrapper that hashes and counts what goes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._h.update(data)
        self.size += len(data)
        self._f.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class BlobStore:
    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.dir = root / "sha256"
        self.tmp_dir = tmp_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest)[len("sha256:") :]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    @contextmanager
    def writer(self, expected: str | None = None, what: str = "blob",
               size: int | None = None) -> Iterator[HashingWriter]:
        """Yield a writer; on a clean exit the blob is verified and published.

        The published digest is in ``writer.digest`` afterwards. With ``expected`` a mismatch
        raises CorruptData naming ``what`` and nothing is published.
        """
        if expected is not None:
            check_digest(expected)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"blob-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                w = HashingWriter(f)
                yield w
                f.flush()
                os.fsync(f.fileno())
            if expected is not None and w.digest != expected:
                raise CorruptData(f"{what}: digest mismatch: expected {expected}, got {w.digest}")
            if size is not None and w.size != size:
                raise CorruptData(f"{what}: size mismatch: expected {size}, got {w.size}")
            final = self.path(w.digest)
            if final.exists():
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.rename(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_stream(self, src: BinaryIO, expected: str | None = None, what: str = "blob",
                   size: int | None = None) -> str:
        with self.writer(expected, what, size) as w:
            shutil.copyfileobj(src, w, CHUNK)  # type: ignore[misc]
        return w.digest

    def put_bytes(self, data: bytes, expected: str | None = None, what: str = "blob") -> str:
        with self.writer(expected, what) as w:
            w.write(data)
        return w.digest

    def remove(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass
