"""`pyswarm daemon`: the node daemon process.

Start-up order matters: the runtime's zygote is forked first, while this process still has
a single thread, because forking a process that runs gRPC's threads is unsafe. Only then are
gRPC and the asyncio loop started.

The daemon serves the engine API on a root-only Unix socket (with Control and Dispatcher,
trusted with everything). Once the node is a manager it also serves Control, Dispatcher and
NodeCA to remote nodes on its TLS port (manager/security/endpoint.py, default 0.0.0.0:2377),
where every call is checked against the caller's certificate. Stopping the daemon (SIGTERM,
or even SIGKILL) never stops containers: their shims own them, and the next daemon re-adopts
them from the state folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pyswarm.common.paths import EngineConfig


def _lock_pid_file(cfg: EngineConfig) -> int:
    """One daemon per state folder: a second one refuses to start and says who runs."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.run_dir, 0o700)
    fd = os.open(cfg.pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        other = os.read(fd, 32).decode().strip() or "?"
        raise SystemExit(
            f"pyswarm daemon: another daemon (pid {other}) is already running with "
            f"{cfg.run_dir}; stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


async def serve(cfg: EngineConfig, runtime: object, cgroup_driver: str) -> None:
    import grpc

    from pyswarm.proto import engine_pb2_grpc
    from pyswarm.worker.engine.core import Engine
    from pyswarm.worker.engine.service import EngineServicer, ExitWatcher
    from pyswarm.worker.images.store import ImageStore
    from pyswarm.worker.network.node import NodeNetwork

    engine: Engine | None = None
    images = ImageStore(cfg.images_dir, in_use=lambda image_id: bool(
        engine and engine.image_in_use(image_id)))
    network = NodeNetwork(cfg)
    await asyncio.to_thread(network.setup)
    engine = Engine(cfg, runtime, images, network)  # type: ignore[arg-type]
    running = await asyncio.to_thread(engine.restore)
    watcher = ExitWatcher(engine)
    for cid in running:
        watcher.watch(cid)

    from pyswarm.manager.servicers import ControlServicer, DispatcherServicer, add_dispatcher
    from pyswarm.proto import cluster_pb2_grpc
    from pyswarm.worker.cluster import ClusterHost

    host = ClusterHost(cfg, engine, watcher)
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServicer_to_server(
        EngineServicer(engine, watcher, cgroup_driver), server)
    cluster_pb2_grpc.add_ControlServicer_to_server(ControlServicer(host), server)
    add_dispatcher(DispatcherServicer(host), server)
    sock = cfg.socket_path
    sock.unlink(missing_ok=True)
    old_umask = os.umask(0o177)  # the socket is born root-only: no window where others connect
    try:
        server.add_insecure_port(f"unix://{sock}")
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(sock, 0o600)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.boot()
    if host.manager is not None:
        role = "manager and worker"
        if host.endpoint is not None:
            role += f", TLS port {host.endpoint.listen[0]}:{host.endpoint.listen[1]}"
    elif host.join_state is not None:
        role = f"worker of the manager at {host.join_state.manager_addr}"
    else:
        role = "standalone engine"
    print(f"pyswarm daemon: serving on unix://{sock} (root {cfg.root}, {role}, "
          f"{len(running)} running container(s) re-adopted)", flush=True)
    await stop.wait()
    await host.close()
    await server.stop(grace=2)
    sock.unlink(missing_ok=True)
    still_running = [r for r in engine.list() if r.state == "running"]
    if still_running:
        print(f"pyswarm daemon: shutting down; {len(still_running)} container(s) keep running",
              flush=True)
    else:
        # Nothing runs: leave no bridge, nftables table or namespace behind.
        await asyncio.to_thread(network.teardown)
        print("pyswarm daemon: shut down; no container was running, network removed", flush=True)
    network.close()


def _raise_open_files() -> None:
    """The soft limit on open files up to the hard one: a manager holds two sockets per
    connected node (its TLS connection and the relay's), past the usual 1,024 soft limit at
    a few hundred nodes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StampedLog:
    """A text stream that starts every line with the UTC time (as dockerd's log does), so
    the order of events across nodes' logs can be read: the daemon's stdout and stderr once
    they go to its log file."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._at_line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                now = time.time()
                out.append(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                           + f".{int(now % 1 * 1000):03d}Z ")
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        self._raw.write("".join(out))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self._raw, name)


def _stamp_output() -> None:
    import logging

    sys.stdout = StampedLog(sys.stdout)  # type: ignore[assignment]
    sys.stderr = StampedLog(sys.stderr)  # type: ignore[assignment]
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="pyswarm %(name)s: %(levelname)s: %(message)s")


def run(cfg: EngineConfig) -> int:
    if os.geteuid() != 0:
        print("pyswarm daemon: needs root (namespaces, cgroups, mounts, nftables)",
              file=sys.stderr)
        return 1
    for folder in (cfg.root, cfg.containers_dir, cfg.images_dir, cfg.volumes_dir):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.root, 0o711)
    lock_fd = _lock_pid_file(cfg)
    from pyswarm.worker.runtime.cgroups import V2Driver, detect
    from pyswarm.worker.runtime.runtime import Runtime

    driver = detect()
    runtime = Runtime(driver)
    runtime.start()  # the zygote: before any thread exists
    _raise_open_files()  # after the zygote: containers keep the limits the daemon got
    try:
        asyncio.run(serve(cfg, runtime, "v2" if isinstance(driver, V2Driver) else "v1"))
    finally:
        runtime.close()
        os.close(lock_fd)
    return 0


def detach(cfg: EngineConfig, log_path: Path, timeout: float = 30.0) -> int:
    """Start the daemon in the background; return once its socket answers (or it failed)."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the intermediate child: a new session, then the daemon as its child
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        _stamp_output()
        os._exit(run(cfg))
    os.close(write_end)
    os.waitpid(pid, 0)
    daemon_pid = int(os.read(read_end, 32) or b"0")
    os.close(read_end)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cfg.socket_path.exists() and _answers(cfg.socket_path):
            print(f"pyswarm daemon started (pid {daemon_pid}, log {log_path})")
            return 0
        try:
            os.kill(daemon_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    print(f"pyswarm daemon failed to start; its log ({log_path}) says:\n{tail}", file=sys.stderr)
    return 1


def _answers(sock: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
            return True
        except OSError:
            return False


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pyswarm daemon",
        description="Run the node daemon: the container engine behind the pyswarm CLI. "
        "Needs root. Containers keep running when the daemon stops or restarts.",
        epilog="environment: PYSWARM_ROOT (state folder, default /var/lib/pyswarm), "
        "PYSWARM_RUN (socket folder, default /run/pyswarm), PYSWARM_BRIDGE, PYSWARM_SUBNET, "
        "PYSWARM_NFT_TABLE, PYSWARM_CGROUP_PARENT",
    )
    parser.add_argument("-d", "--detach", action="store_true",
                        help="run in the background; the log goes to <root>/daemon.log")
    opts = parser.parse_args(argv)
    cfg = EngineConfig.from_env()
    if opts.detach:
        return detach(cfg, cfg.root / "daemon.log")
    return run(cfg)
