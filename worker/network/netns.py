"""Named network namespaces, made without forking.

The daemon is a multi-threaded (asyncio + gRPC) process, so it must not fork to make a
namespace. The kernel lets one *thread* change its own network namespace (``unshare`` and
``setns`` with CLONE_NEWNET act on the calling task only), so one dedicated thread does it:

- ``create(path)``: unshare(CLONE_NEWNET) in that thread, bind-mount
  ``/proc/thread-self/ns/net`` onto ``path`` (which keeps the namespace alive with no process
  in it, as ``ip netns add`` does), leaving the thread inside it for the caller's work;
- ``enter(path)`` / ``leave()``: setns into a named namespace and back to the host's.

All netlink work of the node runs on that thread (``NetnsThread.call``), so a netlink socket
opened while it stands in a container's namespace talks to that namespace. Functions run there
must return to the host namespace before they end; ``call`` checks and repairs it.

The folder holding the namespace files is made a shared mount point (as iproute2 does for
/run/netns) so that unmounting a namespace file also unmounts the copies that mount
namespaces created later (containers) inherited; otherwise those copies would keep the
namespace, and its veth, alive after detach.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pyswarm.common.errors import RuntimeFailure

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), b"none", flags, None), f"mount {target}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def prepare_dir(directory: Path) -> None:
    """Make ``directory`` a shared mount point (bind it onto itself the first time)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = str(directory)
    # Changing propagation only works on a mount point: success means it already is one.
    if _libc.mount(b"", target.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _mount(target, target, MS_BIND | MS_REC)
    _mount("", target, MS_SHARED | MS_REC)


def is_netns(path: Path) -> bool:
    """True when ``path`` is a namespace file bind-mounted by us (not just an empty file)."""
    return os.path.ismount(path)


def remove(path: Path) -> None:
    """Unmount and delete a namespace file; the namespace dies with its last user."""
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted / already gone
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


class NetnsThread:
    """The one thread that may step into container namespaces; runs submitted functions."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyswarm-netns")
        self._host_fd = self._pool.submit(os.open, "/proc/thread-self/ns/net", os.O_RDONLY).result()
        self._host_ino = os.fstat(self._host_fd).st_ino
        self.broken = False

    @property
    def host_fd(self) -> int:
        """An open descriptor of the host's network namespace (valid from any thread)."""
        return self._host_fd

    def call(self, fn: Callable[..., T], *args: object) -> T:
        if self.broken:
            raise RuntimeFailure("the netns thread is stuck in a container namespace")
        return self._pool.submit(self._guarded, fn, *args).result()

    def _guarded(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        finally:
            if os.stat("/proc/thread-self/ns/net").st_ino != self._host_ino:
                try:
                    self.leave()
                except RuntimeFailure:
                    # Never run another job here; the owner starts a new thread (``broken``).
                    self.broken = True
                    self._pool.shutdown(wait=False)
                    raise

    # The methods below run on the thread (from functions given to ``call``).

    def create(self, path: Path) -> None:
        """Make a namespace at ``path`` and stay in it (``leave()`` returns to the host)."""
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _mount("/proc/thread-self/ns/net", str(path), MS_BIND)
        except OSError as e:
            self.leave()
            path.unlink(missing_ok=True)
            raise RuntimeFailure(f"cannot create network namespace {path}: {e}") from e

    def enter(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def leave(self) -> None:
        try:
            _setns(self._host_fd)
        except OSError as e:
            # Every later netlink call would act on the wrong namespace: stop using it.
            raise RuntimeFailure(f"netns thread cannot return to the host namespace: {e}") from e

    def close(self) -> None:
        if not self.broken:
            self._pool.submit(os.close, self._host_fd).result()
        self._pool.shutdown(wait=True)


def remove_dir(directory: Path) -> None:
    """Remove the namespace folder: leftover namespace files, its own bind mount, itself."""
    for path in directory.iterdir():
        remove(path)
    # os.path.ismount cannot see a bind mount within one filesystem: unmount until EINVAL.
    while _libc.umount2(str(directory).encode(), MNT_DETACH) == 0:
        pass
    directory.rmdir()
