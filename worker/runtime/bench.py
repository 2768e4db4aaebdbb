"""Start latency: Runtime.create() of a busybox `true` container until its shim has recorded
the exit (network none), median of N runs. Run as root:
``python -m pyswarm.worker.runtime.bench [N]``."""

from __future__ import annotations

import os
import select
import shutil
import statistics
import sys
import tempfile
import time

from .runtime import Runtime
from .spec import ContainerSpec, NetworkMode, ProcessSpec


def busybox_layer(path: str) -> str:
    """A minimal image layer: busybox with its applets, passwd/group, empty mount points."""
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy("/usr/bin/busybox", os.path.join(path, "bin/busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(path, "bin", applet))
    with open(os.path.join(path, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    return path


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    tmp = tempfile.mkdtemp(prefix="pyswarm-bench-")
    layer = busybox_layer(os.path.join(tmp, "layer"))
    rt = Runtime()
    rt.start()
    times = []
    try:
        for i in range(n + 3):
            bundle = os.path.join(tmp, f"c{i}")
            os.mkdir(bundle)
            spec = ContainerSpec(id=f"{i:064x}", hostname="bench", layers=(layer,),
                                 bundle_dir=bundle, process=ProcessSpec(args=("true",)),
                                 network_mode=NetworkMode.NONE, cgroup_parent="pyswarm-bench")
            t0 = time.perf_counter()
            rt.create(spec)
            fd = rt.shim_pidfd(bundle)
            if fd is not None:
                select.select([fd], [], [])
                os.close(fd)
            dt = time.perf_counter() - t0
            if rt.state(bundle).exit_code != 0:
                raise SystemExit(f"run {i}: {rt.state(bundle)}")
            rt.delete(bundle)
            if i >= 3:  # the first runs warm the caches
                times.append(dt * 1000)
    finally:
        rt.close()
        shutil.rmtree(tmp, ignore_errors=True)
        for d in rt.driver.dirs("pyswarm-bench"):
            try:
                os.rmdir(d)
            except OSError:
                pass
    print(f"create+wait of `true`: median {statistics.median(times):.1f} ms, "
          f"p90 {sorted(times)[int(len(times) * 0.9)]:.1f} ms, min {min(times):.1f} ms "
          f"over {n} runs")


if __name__ == "__main__":
    main()
