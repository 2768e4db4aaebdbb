"""The runtime's face to the engine: start, inspect, signal, exec into and delete containers.

Containers are forked by the zygote (see zygote.py), never by the daemon, whose gRPC threads
make fork unsafe. Everything about a running container is in its bundle folder (state.json,
exit.json, written by its shim), so any Runtime instance, including one in a restarted
daemon, can inspect, signal and delete containers another instance started.

Thread safety: create/exec may be called from several threads at once; only the hand-off
to the zygote is serialized, and it takes microseconds.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from pyswarm.common.errors import InvalidArgument, NotFound, RuntimeFailure

from . import state as st
from . import syscalls as sc
from .cgroups import CgroupDriver, detect
from .rootfs import etc_files
from .shim import EMPTY_LOWER, CreateRequest, ExecRequest
from .spec import ContainerSpec, ProcessSpec
from .state import ContainerState

__all__ = ["ContainerState", "ExecProcess", "Runtime"]

CREATE_TIMEOUT = 120.0  # a start that hangs this long (a stuck NFS volume...) is a failure
DELETE_TIMEOUT = 10.0  # how long delete() waits for a SIGKILLed container's shim to finish


class ExecProcess:
    """A process started inside a running container (not a child of this process)."""

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int,
                 status_fd: int) -> None:
        self.pid = pid
        self.stdin = stdin  # write end, or None
        self.stdout = stdout  # read ends
        self.stderr = stderr
        self.status_fd = status_fd  # readable once the process has exited
        self._code: int | None = None

    def wait(self) -> int:
        """Block until the process exits; its exit code (128+n for signal n, 255 when its
        waiter was lost). Closes status_fd."""
        if self._code is None:
            raw = b""
            while chunk := os.read(self.status_fd, 64):
                raw += chunk
            os.close(self.status_fd)
            try:
                self._code = int(raw.strip())
            except ValueError:
                self._code = 255
        return self._code

    def close(self) -> None:
        """Close all our pipe ends (stdin, stdout, stderr and, unless wait() did, status_fd).
        For callers that did not close them themselves."""
        fds = [self.stdin, self.stdout, self.stderr]
        if self._code is None:
            fds.append(self.status_fd)
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.stdin = None


class Runtime:
    def __init__(self, cgroup_driver: CgroupDriver | None = None) -> None:
        self.driver = cgroup_driver if cgroup_driver is not None else detect()
        self._sock: socket.socket | None = None
        self._zygote: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # ---- zygote ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the zygote. Call from the main thread before any other thread exists."""
        if self._zygote is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._zygote = subprocess.Popen(
                [sys.executable, "-m", "pyswarm.worker.runtime.zygote", str(theirs.fileno()),
                 str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        ours.settimeout(30)
        try:
            ready = ours.recv(16)
        except OSError:
            ready = b""
        if ready != b"ready":
            self.close()
            raise RuntimeFailure("the runtime's zygote failed to start")
        ours.settimeout(None)
        self._sock = ours

    def close(self) -> None:
        """Stop the zygote; containers keep running."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._zygote is not None:
            try:
                self._zygote.wait(2)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait()
            self._zygote = None

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote else None

    def _request(self, req: object, fds: list[int]) -> socket.socket:
        """Send one request to the zygote; the answer arrives on the returned socket."""
        if self._sock is None:
            raise RuntimeFailure("the runtime is not started (Runtime.start() not called)")
        answer, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                socket.send_fds(self._sock, [pickle.dumps(req)], [remote.fileno(), *fds])
        except OSError as e:
            answer.close()
            raise RuntimeFailure(f"the runtime's zygote is gone: {e.strerror}") from None
        finally:
            remote.close()
        return answer

    @staticmethod
    def _answer(sock: socket.socket, what: str) -> dict[str, Any]:
        with sock:
            sock.settimeout(CREATE_TIMEOUT)
            try:
                raw = sock.recv(1 << 16)
            except TimeoutError:
                raise RuntimeFailure(f"{what}: timed out") from None
        if not raw:
            raise RuntimeFailure(f"{what}: the shim died before answering")
        msg = json.loads(raw)
        if "error" in msg:
            # Raise only once the failed shim is gone, so that nothing at all is left.
            fd = _pidfd(int(msg.get("shim_pid", 0)), None)
            if fd is not None:
                select.select([fd], [], [], DELETE_TIMEOUT)
                os.close(fd)
            raise RuntimeFailure(str(msg["error"]))
        return dict(msg)

    # ---- containers --------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> ContainerState:
        """Set up and start the container; returns once its process has exec'd."""
        if not spec.process.args:
            raise InvalidArgument("no command specified")
        b = spec.bundle_dir
        if not os.path.isdir(b):
            raise NotFound(f"bundle folder {b} does not exist")
        cur = st.current(b)
        if cur is not None and cur.status == "running":
            raise RuntimeFailure(f"container {spec.id} is already running")
        for name in (st.STATE_FILE, st.EXIT_FILE):
            try:
                os.unlink(os.path.join(b, name))
            except FileNotFoundError:
                pass
        for d in ("upper", "work", "rootfs") + (() if spec.layers else (EMPTY_LOWER,)):
            os.makedirs(os.path.join(b, d), exist_ok=True)
        for name, text in etc_files(spec, _host_resolv_conf()).items():
            with open(os.path.join(b, name), "w") as out:
                out.write(text)
        msg = self._answer(self._request(CreateRequest(spec, self.driver), []),
                           f"starting container {spec.id[:12]}")
        return ContainerState("running", int(msg["pid"]), int(msg["shim_pid"]),
                              None, False, str(msg["started_at"]), "", "")

    def state(self, bundle_dir: str) -> ContainerState:
        cur = st.current(bundle_dir)
        if cur is None:
            raise NotFound(f"no container was started in {bundle_dir}")
        return cur

    def kill(self, bundle_dir: str, sig: int) -> None:
        """Signal the container's init; a container that is no longer running is left alone."""
        saved, _ = st.load(bundle_dir)
        if saved is None:
            raise NotFound(f"no container was started in {bundle_dir}")
        _signal(int(saved["pid"]), saved.get("start_time"), sig)

    def shim_pidfd(self, bundle_dir: str) -> int | None:
        saved, _ = st.load(bundle_dir)
        if saved is None:
            raise NotFound(f"no container was started in {bundle_dir}")
        return _pidfd(int(saved["shim_pid"]), saved.get("shim_start_time"))

    def exec(self, bundle_dir: str, process: ProcessSpec, *, stdin: bool) -> ExecProcess:
        if not process.args:
            raise InvalidArgument("no command specified")
        cur = self.state(bundle_dir)
        if cur.status != "running" or not cur.pid:
            raise RuntimeFailure("container is not running")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        in_r, in_w = os.pipe() if stdin else (-1, -1)
        theirs = [out_w, err_w, status_w] + ([in_r] if stdin else [])
        try:
            answer = self._request(ExecRequest(bundle_dir, process, self.driver, stdin), theirs)
        except BaseException:
            for fd in (out_r, err_r, status_r, *([in_w] if stdin else [])):
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        proc = ExecProcess(0, in_w if stdin else None, out_r, err_r, status_r)
        try:
            msg = self._answer(answer, "exec")
        except BaseException:
            proc.close()
            raise
        proc.pid = int(msg["pid"])
        return proc

    def delete(self, bundle_dir: str) -> None:
        """Kill (if running), wait for the shim to record the exit, remove the cgroup and any
        mount under the bundle. Safe to call again, and on a bundle that never started."""
        saved, _ = st.load(bundle_dir)
        if saved is not None:
            _signal(int(saved["pid"]), saved.get("start_time"), signal.SIGKILL)
            fd = _pidfd(int(saved["shim_pid"]), saved.get("shim_start_time"))
            if fd is not None:
                try:
                    select.select([fd], [], [], DELETE_TIMEOUT)
                finally:
                    os.close(fd)
            try:
                self.driver.destroy(str(saved["cgroup"]))
            except OSError as e:
                raise RuntimeFailure(f"removing the container's cgroup: {e.strerror}") from None
        _unmount_under(bundle_dir)


def _host_resolv_conf() -> str:
    try:
        with open("/etc/resolv.conf") as f:
            return f.read()
    except OSError:
        return ""


def _pidfd(pid: int, start_time: int | None) -> int | None:
    """A pidfd for `pid` if it is still the recorded process, else None."""
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Check after opening: from here on the pidfd pins this very process.
    if st.proc_start_time(pid) != start_time and start_time is not None:
        os.close(fd)
        return None
    return fd


def _signal(pid: int, start_time: int | None, sig: int) -> None:
    fd = _pidfd(pid, start_time)
    if fd is None:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _unmount_under(bundle_dir: str) -> None:
    """Lazily unmount anything the host sees under the bundle (deepest first). Normally there
    is nothing: the container's mounts live in its own mount namespace."""
    prefix = os.path.realpath(bundle_dir).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        for _ in range(3):
            try:
                sc.umount2(p, sc.MNT_DETACH)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOENT):
                    break
                time.sleep(0.01)
