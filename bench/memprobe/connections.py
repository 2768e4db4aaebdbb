"""What a node's connection costs the manager's gRPC server, by TLS frame size.

A server like the manager's (mutual TLS on a unix socket, common/rpc.py's FLOW_OPTIONS, and
a bidirectional stream per connection answering a message a second) takes --connections
clients, each with a certificate of its own, and reports its C heap in use (glibc's
mallinfo2) and its RSS, per connection, for each `grpc.tsi.max_frame_size` in --frames
(16384 is gRPC's default). manager/security/endpoint.py's TLS_OPTIONS come from this.

    .venv/bin/python bench/memprobe/connections.py --connections 1000 --json

Not a benchmark of bench/run_all.py: it has no peer, only the server against itself.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from pyswarm.common import pki, rpc

METHOD = "/probe.Probe/Session"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _measure() -> dict[str, float]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return {"heap_in_use_mb": libc.mallinfo2().uordblks / 2**20, "rss_mb": rss / 1024}


async def _serve(sock: str, pems: dict[str, bytes], frame: int) -> None:
    async def session(requests, context):  # noqa: ANN001, ANN202, ARG001
        async for _ in requests:
            yield b"ok"

    options = [*rpc.FLOW_OPTIONS, ("grpc.tsi.max_frame_size", frame)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "probe.Probe", {"Session": grpc.stream_stream_rpc_method_handler(session)}),))
    server.add_secure_port(f"unix:{sock}", grpc.ssl_server_credentials(
        [(pems["key"], pems["cert"])], pems["ca"], require_client_auth=True))
    await server.start()
    loop = asyncio.get_running_loop()
    print(json.dumps(_measure()), flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):  # a line: measure again
        print(json.dumps(_measure()), flush=True)


async def _clients(sock: str, clients: list[dict[str, bytes]], seconds: float) -> None:
    async def one(pems: dict[str, bytes]) -> None:
        creds = grpc.ssl_channel_credentials(pems["ca"], pems["key"], pems["cert"])
        async with grpc.aio.secure_channel(f"unix:{sock}", creds, options=[
                ("grpc.ssl_target_name_override", pki.CA_NAME)]) as channel:
            call = channel.stream_stream(METHOD)()
            while True:
                await call.write(b"beat")
                await call.read()
                await asyncio.sleep(1)

    tasks = [asyncio.create_task(one(pems)) for pems in clients]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()


def _identities(count: int) -> tuple[dict[str, bytes], list[dict[str, bytes]]]:
    ca = pki.RootCA.create()

    def issued(node_id: str, role: str) -> dict[str, bytes]:
        key = pki.new_key()
        cert = ca.sign_node(pki.make_csr(key), node_id, role, "probe")
        return {"key": pki.key_pem(key), "cert": cert, "ca": ca.cert_pem}

    return issued("manager", "manager"), [issued(f"n{i}", "worker") for i in range(count)]


def _run(frame: int, count: int, settle: float, workdir: Path) -> dict[str, float]:
    """One server with `count` connections: its cost per connection, in KB."""
    server_pems, client_pems = _identities(count)
    (workdir / "ids.json").write_text(json.dumps(
        {"server": {k: v.decode() for k, v in server_pems.items()},
         "clients": [{k: v.decode() for k, v in c.items()} for c in client_pems]}))
    sock = str(workdir / "probe.sock")
    Path(sock).unlink(missing_ok=True)
    me = [sys.executable, __file__]
    server = subprocess.Popen([*me, "--serve", sock, "--frame", str(frame), str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients = None
    try:
        assert server.stdin is not None and server.stdout is not None
        before = json.loads(server.stdout.readline())
        clients = subprocess.Popen([*me, "--clients", sock, "--seconds", str(settle + 60),
                                    str(workdir)])
        time.sleep(settle)
        server.stdin.write("\n")
        server.stdin.flush()
        after = json.loads(server.stdout.readline())
    finally:
        for proc in (clients, server):
            if proc is not None:
                proc.kill()
                proc.wait()
    def per(key: str) -> float:
        return round((after[key] - before[key]) * 1024 / count, 1)

    return {"heap_kb": per("heap_in_use_mb"), "rss_kb": per("rss_mb")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--frames", default="16384,8192,4096,1024",
                        help="TLS frame sizes to compare, the first the reference")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds after the clients start before measuring")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--clients", help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("workdir", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve or args.clients:
        ids = json.loads((Path(args.workdir) / "ids.json").read_text())
        encode = lambda d: {k: v.encode() for k, v in d.items()}  # noqa: E731
        if args.serve:
            asyncio.run(_serve(args.serve, encode(ids["server"]), args.frame))
        else:
            asyncio.run(_clients(args.clients, [encode(c) for c in ids["clients"]],
                                 args.seconds))
        return
    frames = [int(f) for f in args.frames.split(",")]
    out: dict[str, float | int] = {"connections": args.connections}
    with tempfile.TemporaryDirectory(prefix="pyswarm-connprobe-") as tmp:
        for frame in frames:
            per = _run(frame, args.connections, args.settle, Path(tmp))
            print(f"frame {frame:>5} B: {per['heap_kb']:6.1f} KB of C heap and "
                  f"{per['rss_kb']:6.1f} KB of RSS per connection", file=sys.stderr)
            out[f"frame_{frame}_heap_kb_per_connection"] = per["heap_kb"]
            out[f"frame_{frame}_rss_kb_per_connection"] = per["rss_kb"]
    reference = out[f"frame_{frames[0]}_heap_kb_per_connection"]
    for frame in frames[1:]:
        out[f"frame_{frame}_heap_ratio"] = round(
            out[f"frame_{frame}_heap_kb_per_connection"] / reference, 3)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    main()
