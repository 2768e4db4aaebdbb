"""The zygote: a small single-threaded process that forks containers for the daemon.

Started by Runtime.start() as ``python -m pyswarm.worker.runtime.zygote FD DAEMON_PID``
before the daemon has threads, it imports only light modules, compiles the seccomp filter
once, and then serves requests on the SOCK_SEQPACKET socket FD: one pickled request per
message, with the answer socket (and, for exec, the stdio and status pipes) attached as
SCM_RIGHTS. Each request gets one fork: the zygote ignores SIGCHLD, so the kernel reaps its
children without it, and a shim needs nothing from the zygote after the fork; when the
zygote dies its shims are reparented like orphans of a double fork (a fork costs ~1 ms on
these VMs, so the usual middle process is not worth it). It never starts threads, and dies
with the daemon (PR_SET_PDEATHSIG, and EOF on its socket).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import sys

from . import syscalls as sc
from .seccomp import compile_default
from .shim import CreateRequest, ExecRequest, run_container_shim, run_exec_waiter

MAX_MESSAGE = 1 << 20
MAX_FDS = 8


def _child(req: object, fds: list[int], seccomp_bpf: bytes | None) -> None:
    """In the forked child: hand over to the shim or the exec waiter."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim waits for its own children
    gc.disable()
    reply = socket.socket(fileno=fds[0])
    if isinstance(req, CreateRequest):
        run_container_shim(req, reply, seccomp_bpf)
    elif isinstance(req, ExecRequest):
        stdin = fds[4] if req.stdin else os.open("/dev/null", os.O_RDONLY)
        run_exec_waiter(req, reply, (stdin, fds[1], fds[2]), fds[3], seccomp_bpf)
    os._exit(2)


def serve(sock: socket.socket) -> None:
    seccomp_bpf = compile_default()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    sock.send(b"ready")
    gc.freeze()  # keep the forked children from dirtying the pages of long-lived objects
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        except InterruptedError:
            continue
        if not msg:
            return
        try:
            req = pickle.loads(msg)
        except Exception:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            try:
                sock.close()
                _child(req, fds, seccomp_bpf)
            finally:
                os._exit(2)
        for fd in fds:
            os.close(fd)


def main() -> None:
    fd, daemon_pid = int(sys.argv[1]), int(sys.argv[2])
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon; we follow it
    sock = socket.socket(fileno=fd)
    if os.getppid() != daemon_pid:  # the daemon died before PDEATHSIG was armed
        return
    serve(sock)


if __name__ == "__main__":
    main()
