"""Load balancer throughput: wrk through pyswarm's routing mesh, straight at one replica, and
through nginx's `stream` round robin over the same replicas, in one run.

What runs: a fresh pyswarm daemon of its own (own state folder, bridge, nftables table),
`pyswarm init`, then `deploy` of one service with N replicas of nginx, published in ingress
mode. The replicas' image is made here from the host's own nginx binary and its shared
libraries (`ldd`), as a docker-save archive loaded with `pyswarm image load`: nothing can be
pulled here, and the backend must outrun the balancer (busybox httpd forks per connection
and has no keep-alive, so it would be measured instead). Each replica answers `GET /` with a
fixed short body from memory (`return 200`), keep-alive on.

Paths, each measured with wrk for the same duration, connections and threads:

- `lb`: http://127.0.0.1:<published>/ — the real daemon path: the agent's LBSync programmed
  the nftables DNAT (numgen round robin per connection) over the replicas; from loopback
  (route_localnet + masquerade onto the node bridge).
- `direct`: http://<one replica's bridge address>:80/ — no balancer: the ceiling.
- `nginx`: http://127.0.0.1:<port>/ — the host's nginx (Debian's, `stream` module) as a plain
  process with its own config, pid and temp paths in a temp folder, `proxy_pass` to an
  upstream of the same replica addresses (round robin), `worker_processes auto`.

Two traffic shapes: keep-alive (wrk's default: a few long connections, where a kernel NAT
balancer costs one conntrack lookup per packet and a proxy copies every byte twice) and
`close` (`Connection: close`: one connection per request, where the balancing decision and
the connection set-up are the cost).

With --json the last stdout line is one JSON object: `<path>[_close]_rps`,
`<path>[_close]_p99_ms`, and ratios ending in `_ratio` (`lb_vs_direct_rps_ratio`,
`lb_vs_nginx_rps_ratio`, and the p99 ones). Needs root, wrk (`apt-get install wrk`) and
nginx with the stream module (`apt-get install nginx-light libnginx-mod-stream`; nginx-core
or nginx-full carry it too). Traffic goes only to loopback and the daemon's containers.
Everything is cleaned up: nginx stopped by pid, the daemon's containers, bridge and table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.engine_fixtures import Daemon, cleanup, engine_env  # noqa: E402

IMAGE = "pyswarm-bench/nginx:latest"
NGINX = "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

REPLICA_CONF = """\
user nobody nogroup;
worker_processes 1;
daemon off;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    keepalive_requests 100000000;
    server {
        listen 80;
        location / { return 200 "ok\\n"; }
    }
}
"""

BALANCER_CONF = """\
load_module {module};
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 8192; }}
stream {{
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass replicas;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---- the replicas' image ----------------------------------------------------------------


def nginx_image(folder: Path) -> Path:
    """A docker-save archive of the host's nginx binary, its libraries and a config."""
    files: dict[str, bytes | Path] = {NGINX: Path(NGINX)}
    ldd = subprocess.run(["ldd", NGINX], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+) \(0x", ldd):
        files[lib] = Path(lib)
    files["/etc/nginx/nginx.conf"] = REPLICA_CONF.encode()
    files["/etc/passwd"] = b"root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534::/:/bin/false\n"
    files["/etc/group"] = b"root:x:0:\nnogroup:x:65534:\n"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        dirs = {"tmp", "var/log/nginx", "var/lib/nginx"}
        for path in files:
            parent = Path(path.lstrip("/")).parent
            while str(parent) != ".":
                dirs.add(str(parent))
                parent = parent.parent
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, content in sorted(files.items()):
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o755 if isinstance(content, Path) else 0o644
            tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [NGINX, "-c", "/etc/nginx/nginx.conf"], "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers",
                   "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]},
    }).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    archive = folder / "nginx-image.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("layer.tar", layer_bytes), (config_name, config),
                           ("manifest.json", json.dumps([{
                               "Config": config_name, "RepoTags": [IMAGE],
                               "Layers": ["layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


# ---- wrk --------------------------------------------------------------------------------


def wrk(url: str, seconds: int, connections: int, threads: int,
        close: bool) -> dict[str, float]:
    argv = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if errors or non2xx:
        print(f"  {url}: {errors.group(0) if errors else ''} "
              f"{non2xx.group(0) if non2xx else ''}".rstrip(), flush=True)
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * scale}


# ---- the peers --------------------------------------------------------------------------


@contextlib.contextmanager
def nginx_balancer(folder: Path, replicas: list[str]) -> Iterator[int]:
    """The host's nginx as a stream round-robin over the replicas; yields its port."""
    port = free_port()
    folder.mkdir()
    servers = "\n".join(f"        server {ip}:80;" for ip in replicas)
    conf = folder / "nginx.conf"
    conf.write_text(BALANCER_CONF.format(module=STREAM_MODULE, dir=folder, servers=servers,
                                         port=port))
    log = open(folder / "stdout.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(folder), "-e",
                             str(folder / "error.log")], stdout=log, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited {proc.returncode}: "
                                   f"{(folder / 'error.log').read_text(errors='replace')}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(up, 10, "nginx")
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def running_replicas(daemon: Daemon, n: int) -> list[str]:
    """The bridge addresses of the service's running containers, once n run."""
    found: list[str] = []

    def ready() -> bool:
        rows = daemon.json_lines("service", "ls", "--format", "json")
        if not rows or not str(rows[0].get("replicas", "")).startswith(f"{n}/"):
            return False
        found[:] = [c["ip_address"] for c in daemon.json_lines("ps", "--format", "json")
                    if c["state"] == "running" and c["image"] == IMAGE and c["ip_address"]]
        return len(found) == n

    try:
        wait_until(ready, 120, f"{n} running replicas")
    except RuntimeError:
        print(daemon.cli("service", "ps", "lbbench_web", check=False).stdout,
              daemon.log(), file=sys.stderr)
        raise
    return sorted(found)


def serving(url: str) -> bool:
    host, port = url.split("/")[2].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def bench(opts: argparse.Namespace, base: Path) -> dict[str, float]:
    daemon = Daemon(base / "pyswarm", engine_env(base / "pyswarm", index=10))
    (base / "pyswarm").mkdir()
    figures: dict[str, float] = {}
    try:
        daemon.start()
        daemon.cli("image", "load", "-i", str(nginx_image(base)))
        daemon.cli("init")
        published = free_port()
        stack = base / "stack.yml"
        stack.write_text(f"services:\n  web:\n    image: {IMAGE}\n    ports:\n"
                         f'      - "{published}:80"\n    deploy:\n'
                         f"      replicas: {opts.replicas}\n")
        daemon.cli("deploy", "-c", str(stack), "--name", "lbbench", "--detach")
        replicas = running_replicas(daemon, opts.replicas)
        print(f"replicas: {' '.join(replicas)}; published on {published}", flush=True)
        with nginx_balancer(base / "nginx", replicas) as nginx_port:
            urls = {"lb": f"http://127.0.0.1:{published}/",
                    "direct": f"http://{replicas[0]}:80/",
                    "nginx": f"http://127.0.0.1:{nginx_port}/"}
            for name, url in urls.items():
                wait_until(functools.partial(serving, url), 30, f"{name} at {url}")
            for close in (False, True):
                for name, url in urls.items():
                    key = f"{name}_close" if close else name
                    result = wrk(url, opts.duration, opts.connections, opts.threads, close)
                    figures[f"{key}_rps"] = round(result["rps"], 1)
                    figures[f"{key}_p99_ms"] = round(result["p99_ms"], 3)
                    print(f"{key:14} {result['rps']:>10.0f} req/s   p99 "
                          f"{result['p99_ms']:.2f} ms", flush=True)
    finally:
        cleanup(daemon)
    for suffix in ("", "_close"):
        for peer in ("direct", "nginx"):
            figures[f"lb{suffix}_vs_{peer}_rps_ratio"] = round(
                figures[f"lb{suffix}_rps"] / figures[f"{peer}{suffix}_rps"], 3)
            figures[f"lb{suffix}_vs_{peer}_p99_ratio"] = round(
                figures[f"lb{suffix}_p99_ms"] / figures[f"{peer}{suffix}_p99_ms"], 3)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("lb bench: needs root")
    missing = [tool for tool in ("wrk", NGINX) if not shutil.which(tool)]
    if not Path(STREAM_MODULE).exists():
        missing.append(STREAM_MODULE)
    if missing:
        sys.exit(f"lb bench: missing {', '.join(missing)} "
                 f"(apt-get install wrk nginx-light libnginx-mod-stream)")
    base = Path(tempfile.mkdtemp(prefix="pyswarm-lbbench-"))
    try:
        figures = bench(opts, base)
    finally:
        for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            if mount.split()[1].startswith(str(base)):
                subprocess.run(["umount", "-l", mount.split()[1]], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    if opts.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
