"""Container start latency: pyswarm's warm daemon against `runc run`, in one run.

What is timed, per container, N times each, alternating so that machine noise hits both:
- pyswarm: one RunContainer call on the daemon's socket, from the request until the stream
  reports the exit of a finished `true` container that is also removed (--rm); network
  "none" (a fresh network namespace with only lo), like runc's default spec.
- runc:    `runc run` of the same busybox rootfs and command, from spawning runc until it
  has exited (it creates, starts, waits for and deletes the container).
Both use the same image content: the runc bundle's rootfs is the engine's busybox layer.

Prints a table; with --json the figures as one JSON object on the last line, the ratio
under `start_ratio` (pyswarm median / runc median: below 1 is faster than runc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env  # noqa: E402


def runc_bundle(layer_dirs: list[str], base: Path) -> Path:
    bundle = base / "runc-bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    for layer in layer_dirs:  # bottom first; busybox:latest has no whiteouts to apply
        subprocess.run(["cp", "-a", f"{layer}/.", str(rootfs)], check=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def time_runc(bundle: Path, state_root: Path, i: int) -> float:
    start = time.perf_counter()
    subprocess.run(["runc", "--root", str(state_root), "run", "-b", str(bundle), f"b{i}"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50, help="containers per side (default 50)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("start_latency: needs root")

    base = Path(tempfile.mkdtemp(prefix="pyswarm-bench-"))
    env = engine_env(base, index=9)
    daemon = Daemon(base, env)
    os.environ.update({k: v for k, v in env.items() if k.startswith("PYSWARM_")})
    result: dict[str, object] = {"benchmark": "start_latency", "n": opts.n}
    try:
        daemon.start()
        build_base_image(daemon)
        import grpc

        from pyswarm.proto import engine_pb2 as pb
        from pyswarm.proto import engine_pb2_grpc

        stub = engine_pb2_grpc.EngineStub(grpc.insecure_channel(f"unix://{daemon.run_dir}/pyswarm.sock"))
        request = pb.CreateContainerRequest(image="busybox", cmd=["true"], network="none",
                                            auto_remove=True)

        def time_pyswarm() -> float:
            start = time.perf_counter()
            for out in stub.RunContainer(request):
                if out.WhichOneof("output") == "exit":
                    assert out.exit.exit_code == 0, out
            return time.perf_counter() - start

        for _ in range(5):  # warm both paths
            time_pyswarm()
        have_runc = shutil.which("runc") is not None
        ours: list[float] = []
        theirs: list[float] = []
        if have_runc:
            from pyswarm.worker.images.store import ImageStore

            layers = list(ImageStore(daemon.root / "images").get("busybox").layer_dirs)
            bundle = runc_bundle(layers, base)
            state_root = base / "runc-state"
            for i in range(3):
                time_runc(bundle, state_root, 1000 + i)
        for i in range(opts.n):
            ours.append(time_pyswarm())
            if have_runc:
                theirs.append(time_runc(bundle, state_root, i))
        bridged = []
        bridged_request = pb.CreateContainerRequest(image="busybox", cmd=["true"],
                                                    auto_remove=True)
        for _ in range(min(opts.n, 20)):
            start = time.perf_counter()
            for _out in stub.RunContainer(bridged_request):
                pass
            bridged.append(time.perf_counter() - start)

        def ms(xs: list[float]) -> float:
            return round(statistics.median(xs) * 1000, 2)

        result.update({
            "pyswarm_median_ms": ms(ours),
            "pyswarm_p90_ms": round(sorted(ours)[int(len(ours) * 0.9) - 1] * 1000, 2),
            "pyswarm_bridge_median_ms": ms(bridged),
        })
        if have_runc:
            result.update({
                "runc_median_ms": ms(theirs),
                "runc_p90_ms": round(sorted(theirs)[int(len(theirs) * 0.9) - 1] * 1000, 2),
                "start_ratio": round(statistics.median(ours) / statistics.median(theirs), 3),
            })
        else:
            result["runc"] = "skipped: runc is not installed"
        cli = []
        for _ in range(5):
            start = time.perf_counter()
            daemon.cli("run", "--rm", "--network", "none", "busybox", "true")
            cli.append(time.perf_counter() - start)
        result["pyswarm_cli_run_median_ms"] = ms(cli)
    finally:
        cleanup(daemon)
        shutil.rmtree(base, ignore_errors=True)

    print(f"{'what':40} {'median ms':>10}")
    for key, value in result.items():
        if key.endswith("_ms") or key.endswith("_ratio"):
            print(f"{key:40} {value:>10}")
    if opts.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
