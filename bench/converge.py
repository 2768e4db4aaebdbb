"""Convergence: deploy N replicas of the hello service on one node and time until all of
them are RUNNING, for pyswarm and (when dockerd is installed) Docker Swarm, in one run.

pyswarm: a fresh daemon of its own (own state folder, bridge and nftables table), `init`,
then `deploy --detach` of examples/hello/stack.yml with the replica count set; the clock
runs from the deploy command until `service ls` reports N running, polled every 50 ms.
Docker Swarm: containerd and dockerd started here with their own roots and socket, `swarm
init`, busybox imported from the same rootfs, `docker stack deploy` of the same stack file;
the clock runs until `docker service ls` reports N/N. Both stacks are removed between runs.

With --json the last line is one JSON object; ratios (pyswarm / docker) end in `_ratio`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env  # noqa: E402

STACK = REPO / "examples" / "hello" / "stack.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_with_replicas(folder: Path, replicas: int, image: str = "busybox",
                        ports: bool = True) -> Path:
    """The hello stack with N replicas. Without ports for the side-by-side runs: Docker's
    ingress routing mesh needs IPVS, which this kernel lacks (its tasks then fail over and
    over and never converge), so both sides run the same service unpublished."""
    text = STACK.read_text().replace("replicas: 3", f"replicas: {replicas}")
    text = text.replace("image: busybox", f"image: {image}")
    if not ports:
        text = text.replace('    ports:\n      - "${HELLO_PORT:-8080}:80"\n', "")
    path = folder / f"stack-{replicas}-{'ports' if ports else 'noports'}-{image.count('/')}.yml"
    path.write_text(text)
    return path


def wait_until(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll)
    return False


# ---- pyswarm ------------------------------------------------------------------------------


def bench_pyswarm(sizes: list[int], base: Path, timeout: float) -> dict[str, float]:
    """Unpublished (the side-by-side figure) and published through the load balancer."""
    daemon = Daemon(base / "pyswarm", engine_env(base / "pyswarm", index=8))
    (base / "pyswarm").mkdir()
    figures: dict[str, float] = {}
    try:
        daemon.start()
        build_base_image(daemon)
        daemon.cli("init")
        for n, ports in [(n, p) for n in sizes for p in (False, True)]:
            stack = stack_with_replicas(base, n, ports=ports)
            key = f"pyswarm_{n}_seconds" if not ports else f"pyswarm_{n}_published_seconds"
            env = {"HELLO_PORT": str(free_port())}
            start = time.perf_counter()
            daemon.cli("deploy", "-c", str(stack), "--name", "bench", "--detach",
                       extra_env=env)

            def converged(n: int = n) -> bool:
                rows = daemon.json_lines("service", "ls", "--format", "json")
                return any(r["name"] == "bench_web" and r["replicas_running"] == n
                           for r in rows)

            ok = wait_until(converged, timeout)
            elapsed = time.perf_counter() - start
            figures[key] = round(elapsed, 2) if ok else float("nan")
            daemon.cli("stack", "rm", "bench")
            wait_until(lambda: not [c for c in daemon.json_lines("ps", "-a", "--format", "json")
                                    if c["name"].startswith("bench_web.")], timeout)
    finally:
        cleanup(daemon)
    return figures


# ---- Docker Swarm -------------------------------------------------------------------------


DOCKER_TOOLS = ("dockerd", "containerd", "docker")
DOCKER_IMAGE = "pyswarm-bench/busybox:latest"


def docker_missing() -> str | None:
    """Why Docker Swarm cannot be measured here, or None when its tools are installed."""
    if all(shutil.which(tool) for tool in DOCKER_TOOLS):
        return None
    return "dockerd is not installed (apt-get install docker.io)"


def busybox_tar(folder: Path, layer_dirs: list[str]) -> Path:
    """pyswarm's busybox image as one rootfs tar for `docker import` (no image can be pulled
    here): its layers merged (busybox:latest has no whiteouts)."""
    tar = folder / "busybox.tar"
    rootfs = folder / "rootfs"
    rootfs.mkdir()
    for layer in layer_dirs:
        subprocess.run(["cp", "-a", f"{layer}/.", str(rootfs)], check=True)
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    return tar


def docker_import(tar: Path, env: dict[str, str], image: str = DOCKER_IMAGE) -> None:
    subprocess.run(["docker", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:"
                    "/usr/sbin:/usr/bin:/sbin:/bin", str(tar), image],
                   env=env, check=True, capture_output=True)


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever dockerd and containerd left mounted under root, deepest
    first (overlay rootfs, shm, netns bind mounts)."""
    for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        target = mount.split()[1]
        if target.startswith(str(root)):
            subprocess.run(["umount", "-l", target], capture_output=True)


def eth0_address() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True,
                         text=True).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else "127.0.0.1"


def bench_docker(sizes: list[int], base: Path, layer_dirs: list[str],
                 timeout: float) -> dict[str, float] | str:
    missing = docker_missing()
    if missing:
        return f"skipped: {missing}"
    root = base / "docker"
    root.mkdir()
    sock = root / "docker.sock"
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    procs: list[subprocess.Popen[bytes]] = []
    # dockerd rewrites iptables (FORWARD policy DROP, its chains) and leaves its rules and
    # bridges behind: save what was there and put it back afterwards.
    saved_rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    links_before = set(os.listdir("/sys/class/net"))
    try:
        log = open(root / "containerd.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            ["containerd", "--address", str(root / "containerd.sock"),
             "--root", str(root / "containerd"), "--state", str(root / "containerd-state")],
            stdout=log, stderr=subprocess.STDOUT))
        log = open(root / "dockerd.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            ["dockerd", "-H", f"unix://{sock}", "--data-root", str(root / "data"),
             "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid"),
             "--containerd", str(root / "containerd.sock")],
            stdout=log, stderr=subprocess.STDOUT))
        if not wait_until(lambda: subprocess.run(["docker", "info"], env=env,
                                                 capture_output=True).returncode == 0, 60, 0.2):
            return "skipped: dockerd did not start (see its log)"
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", eth0_address()],
                       env=env, check=True, capture_output=True)
        docker_import(busybox_tar(root, layer_dirs), env)
        figures: dict[str, float] = {}
        for n in sizes:
            stack = stack_with_replicas(base, n, image=DOCKER_IMAGE, ports=False)
            start = time.perf_counter()
            for _attempt in range(20):  # the last stack's network may still be going away
                deploy = subprocess.run(
                    ["docker", "stack", "deploy", "-c", str(stack), "bench"],
                                        env=dict(env, HELLO_PORT=str(free_port())),
                                        capture_output=True, text=True)
                if deploy.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                return f"skipped: docker stack deploy failed: {deploy.stderr.strip()}"

            def converged(n: int = n) -> bool:
                out = subprocess.run(["docker", "service", "ls", "--format",
                                      "{{.Name}} {{.Replicas}}"], env=env,
                                     capture_output=True, text=True).stdout
                return f"bench_web {n}/{n}" in out

            ok = wait_until(converged, timeout, 0.25)
            figures[f"docker_{n}_seconds"] = round(time.perf_counter() - start, 2) \
                if ok else float("nan")
            if not ok:
                figures[f"docker_{n}_note"] = f"not converged after {timeout:.0f} s"  # type: ignore[assignment]
            subprocess.run(["docker", "stack", "rm", "bench"], env=env, capture_output=True)
            wait_until(lambda: not subprocess.run(["docker", "ps", "-aq"], env=env,
                                                  capture_output=True, text=True).stdout
                       and "bench_default" not in subprocess.run(
                           ["docker", "network", "ls"], env=env, capture_output=True,
                           text=True).stdout, timeout, 0.5)
        return figures
    finally:
        subprocess.run(["docker", "stack", "rm", "bench"], env=env, capture_output=True)
        subprocess.run(["docker", "swarm", "leave", "--force"], env=env, capture_output=True)
        ids = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True)
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["iptables-restore"], input=saved_rules, text=True, capture_output=True)
        for link in set(os.listdir("/sys/class/net")) - links_before:  # docker0, gwbridge...
            subprocess.run(["ip", "link", "delete", link], capture_output=True)
        unmount_under(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100", help="replica counts (default 10,100)")
    parser.add_argument("--timeout", type=float, default=300, help="per deploy, seconds")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("converge: needs root")
    sizes = [int(x) for x in opts.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="pyswarm-converge-"))
    result: dict[str, object] = {"benchmark": "converge", "sizes": sizes}
    try:
        result.update(bench_pyswarm(sizes, base, opts.timeout))
        from pyswarm.worker.images.store import ImageStore

        store = ImageStore(base / "pyswarm" / "root" / "images")
        layers = list(store.get("busybox").layer_dirs)
        docker = bench_docker(sizes, base, layers, opts.timeout)
        if isinstance(docker, str):
            result["docker"] = docker
        else:
            result.update(docker)
            for n in sizes:
                ours, theirs = result.get(f"pyswarm_{n}_seconds"), docker.get(f"docker_{n}_seconds")
                if isinstance(ours, float) and theirs:
                    result[f"converge_{n}_ratio"] = round(ours / theirs, 3)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:28} {value}")
    if opts.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
