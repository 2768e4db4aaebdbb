"""The zygote: a small single-threaded process that forks containers for the daemon.

Started by Runtime.start() as ``python -m pyswarm.worker.runtime.zygote FD DAEMON_PID``
before the daemon has threads, it imports only light modules, compiles the seccomp filter once, and then
serves requests on the SOCK_SEQPACKET socket FD: one pickled request per message, with the
answer socket (and, for exec, the stdio and status pipes) attached as SCM_RIGHTS. Each
request gets a double fork, so the shim or exec waiter is orphaned at once and never
depends on the zygote; the zygote only reaps the short-lived middle process. It never
starts threads, and dies with the daemon (PR_SET_PDEATHSIG, and EOF on its socket).
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
    """In the orphaned grandchild: hand over to the shim or the exec waiter."""
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
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                if os.fork() == 0:
                    _child(req, fds, seccomp_bpf)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        os.waitpid(pid, 0)


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
