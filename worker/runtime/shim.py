"""The processes the zygote forks: a container's shim and init, and an exec's waiter.

Container (CreateRequest): the shim needs nothing from the zygote after the fork and is
reparented when the zygote dies, so it outlives both the daemon and the zygote. It starts a
session, unshares a pid namespace and forks the init (pid 1 there), then creates the cgroup
and moves the init into it while the init unshares mnt/uts/ipc (and net for
NetworkMode.NONE, or joins the prepared one for BRIDGE), builds its rootfs and sets its
hostname; the init execs (process.exec_process) once the shim says go. Any failure before
the exec reaches the shim as text on a close-on-exec pipe; the shim then reaps the init,
removes the cgroup and answers the daemon with the error, leaving nothing behind (mounts die
with the init's mount namespace). On success the shim writes state.json, answers, copies
stdout/stderr into the json-file log, reaps the init, notes an OOM kill, removes the cgroup,
writes exit.json and exits (which is what the daemon's pidfd of the shim reports).

Exec (ExecRequest): the waiter joins the container's pid namespace and forks the process,
which joins the cgroup and the other namespaces and execs; the waiter answers with its pid,
waits for it and writes the exit code to the status pipe.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import traceback
from dataclasses import dataclass

from . import rootfs
from . import syscalls as sc
from .cgroups import CgroupDriver
from .logs import LOG_FILE, JsonFileLog
from .process import ABORTED, ExecError, exec_process
from .spec import ContainerSpec, NetworkMode, ProcessSpec
from .state import EXIT_FILE, STATE_FILE, proc_start_time, read_json, rfc3339, write_json_atomic

EMPTY_LOWER = "lower-empty"
_NS_ORDER = (("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("net", sc.CLONE_NEWNET),
             ("mnt", sc.CLONE_NEWNS))


@dataclass(frozen=True)
class CreateRequest:
    spec: ContainerSpec
    driver: CgroupDriver


@dataclass(frozen=True)
class ExecRequest:
    bundle_dir: str
    process: ProcessSpec
    driver: CgroupDriver
    stdin: bool


def cgroup_path(spec: ContainerSpec) -> str:
    return f"{spec.cgroup_parent.strip('/')}/{spec.id}"


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if e.filename is None else f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


def _reply(sock: socket.socket, **msg: object) -> None:
    msg["shim_pid"] = os.getpid()  # on an error, the daemon waits for us to be gone
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass  # the daemon gave up on us; the container still runs and state.json tells
    sock.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _detach_stdio() -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0))  # SIOCGIFFLAGS
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS IFF_UP


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# ---- container ------------------------------------------------------------------------


def _container_init(spec: ContainerSpec, out_w: int, err_w: int, error_w: int, go_r: int,
                    seccomp_bpf: bytes | None) -> None:
    """The container's pid 1 until it execs. Never returns."""
    try:
        os.setsid()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
        if spec.network_mode is NetworkMode.NONE:
            flags |= sc.CLONE_NEWNET
        elif spec.network_mode is NetworkMode.BRIDGE:
            fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            sc.setns(fd, sc.CLONE_NEWNET)
            os.close(fd)
        sc.unshare(flags)
        if spec.network_mode is NetworkMode.NONE:
            _loopback_up()
        os.umask(0)
        rootfs.setup(spec, os.path.join(spec.bundle_dir, EMPTY_LOWER))
        sc.sethostname(spec.hostname)
        exec_process(spec.process, seccomp_bpf, error_fd=error_w, make_cwd=True, go_fd=go_r)
    except BaseException as e:
        try:
            os.write(error_w, _describe(e).encode())
        finally:
            os._exit(127)


def run_container_shim(req: CreateRequest, reply: socket.socket, seccomp_bpf: bytes | None
                       ) -> None:
    """Body of the shim. Never returns.

    The init is forked first and builds its rootfs while the shim creates the cgroup and
    moves the init into it (on cgroup v1 a move can wait for an RCU grace period, several
    ms); the init execs only after the shim's go byte."""
    spec = req.spec
    bundle = spec.bundle_dir
    cg = cgroup_path(spec)
    try:
        os.setsid()
        _detach_stdio()
        # The log exists before create() returns: a reader opened then (run --rm) sees every
        # line even when the container is finished and removed before its next poll.
        log = JsonFileLog(os.path.join(bundle, LOG_FILE), spec.log.max_size, spec.log.max_files)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        error_r, error_w = os.pipe()
        go_r, go_w = os.pipe()
        sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            reply.close()
            for fd in (out_r, err_r, error_r, go_w):
                os.close(fd)
            _container_init(spec, out_w, err_w, error_w, go_r, seccomp_bpf)
        for fd in (out_w, err_w, error_w, go_r):
            os.close(fd)
    except BaseException as e:
        _reply(reply, error=f"shim: {_describe(e)}")
        os._exit(1)
    setup_error = ""
    try:
        req.driver.create(cg, spec.resources)
        req.driver.add_process(cg, pid)
        os.write(go_w, b"1")
    except BaseException as e:
        setup_error = f"cgroup set-up: {_describe(e)}"
    os.close(go_w)
    try:
        error = _read_all(error_r).decode(errors="replace")
        os.close(error_r)
        if setup_error or error:
            os.waitpid(pid, 0)
            req.driver.destroy(cg)
            # The init's own failure explains a failed cgroup move (it had already exited).
            _reply(reply, error=setup_error if error in ("", ABORTED) else error)
            os._exit(1)
        started_at = rfc3339()
        write_json_atomic(os.path.join(bundle, STATE_FILE), {
            "id": spec.id, "pid": pid, "start_time": proc_start_time(pid),
            "shim_pid": os.getpid(), "shim_start_time": proc_start_time(os.getpid()),
            "started_at": started_at, "cgroup": cg, "stop_signal": spec.stop_signal,
        })
        _reply(reply, pid=pid, shim_pid=os.getpid(), started_at=started_at)
    except BaseException as e:
        try:
            req.driver.destroy(cg)
        finally:
            _reply(reply, error=f"shim: {_describe(e)}")
            os._exit(1)
    _supervise(spec, pid, cg, req.driver, log, out_r, err_r)


def _supervise(spec: ContainerSpec, pid: int, cg: str, driver: CgroupDriver, log: JsonFileLog,
               out_r: int, err_r: int) -> None:
    """Copy the output into the log until both pipes close, then record the exit."""
    bundle = spec.bundle_dir
    error = ""
    try:
        streams = {out_r: "stdout", err_r: "stderr"}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        while streams:
            for fd, _ in poller.poll():
                data = os.read(fd, 65536)
                if data:
                    log.feed(streams[fd], data)
                else:
                    log.flush(streams.pop(fd))
                    poller.unregister(fd)
                    os.close(fd)
        log.close()
    except BaseException:
        error = "log: " + traceback.format_exc(limit=1).strip().splitlines()[-1]
    _, status = os.waitpid(pid, 0)
    code = _exit_code(status)
    oom = False
    try:
        oom = driver.oom_killed(cg)
        driver.destroy(cg)
    except BaseException as e:
        error = error or f"cgroup: {_describe(e)}"
    write_json_atomic(os.path.join(bundle, EXIT_FILE), {
        "exit_code": code, "oom_killed": oom, "finished_at": rfc3339(), "error": error,
    })
    os._exit(0)


# ---- exec ------------------------------------------------------------------------------


def run_exec_waiter(req: ExecRequest, reply: socket.socket, stdio: tuple[int, int, int],
                    status_w: int, seccomp_bpf: bytes | None) -> None:
    """Body of an exec's waiter (already orphaned). Never returns."""
    try:
        os.setsid()
        st = read_json(os.path.join(req.bundle_dir, STATE_FILE))
        if st is None or os.path.exists(os.path.join(req.bundle_dir, EXIT_FILE)):
            raise ExecError("container is not running")
        init = int(st["pid"])
        ns_fds = {name: os.open(f"/proc/{init}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                  for name in ("pid", "ipc", "uts", "net", "mnt")}
        if proc_start_time(init) != st.get("start_time"):
            raise ExecError("container is not running")
        sc.setns(ns_fds["pid"], sc.CLONE_NEWPID)
        error_r, error_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                reply.close()
                os.close(error_r)
                for i, fd in enumerate(stdio):
                    os.dup2(fd, i)
                req.driver.add_process(str(st["cgroup"]), 0)
                for name, nstype in _NS_ORDER:
                    sc.setns(ns_fds[name], nstype)
                exec_process(req.process, seccomp_bpf, error_fd=error_w, make_cwd=False)
            except BaseException as e:
                try:
                    os.write(error_w, _describe(e).encode())
                finally:
                    os._exit(127)
        os.close(error_w)
        for fd in (*stdio, *ns_fds.values()):
            os.close(fd)
        error = _read_all(error_r).decode(errors="replace")
        if error:
            os.waitpid(pid, 0)
            _reply(reply, error=error)
            os._exit(1)
        _reply(reply, pid=pid)
    except BaseException as e:
        _reply(reply, error=_describe(e))
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    os.write(status_w, f"{_exit_code(status)}\n".encode())
    os._exit(0)
