"""Store backends and `open_backend`, which picks one from the manager's --store URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pyswarm.common.errors import InvalidArgument

from .base import Backend, Change, ChangeBatch, Fence, Op, Record
from .memory import MemoryBackend
from .sqlite import SqliteBackend

__all__ = [
    "Backend",
    "Change",
    "ChangeBatch",
    "Fence",
    "MemoryBackend",
    "Op",
    "Record",
    "SqliteBackend",
    "open_backend",
]


def open_backend(url: str, state_dir: Path) -> Backend:
    """The backend a store URL names.

    "sqlite" (or ""): state_dir/manager.db, the default; "sqlite:///abs/path.db";
    "etcd://host:port[,host:port...]" (optionally with a path: the key prefix);
    "memory": nothing kept (tests).
    """
    if url in ("", "sqlite"):
        return SqliteBackend(Path(state_dir) / "manager.db")
    if url == "memory":
        return MemoryBackend()
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise InvalidArgument(f"store {url!r}: use sqlite:///an/absolute/path.db")
        return SqliteBackend(Path(path))
    if url.startswith("etcd://"):
        from .etcd import DEFAULT_PREFIX, EtcdBackend  # aetcd loads only when used

        parts = urlsplit(url)
        endpoints = [e for e in parts.netloc.split(",") if e]
        if not endpoints:
            raise InvalidArgument(f"store {url!r}: no etcd endpoint (etcd://host:port)")
        prefix = parts.path if parts.path not in ("", "/") else DEFAULT_PREFIX
        if not prefix.endswith("/"):
            prefix += "/"
        return EtcdBackend(endpoints, prefix=prefix)
    raise InvalidArgument(f"store {url!r}: expected sqlite, sqlite:///path or etcd://host:port")
