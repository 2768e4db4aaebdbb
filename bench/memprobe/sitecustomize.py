"""A memory sampler for a pyswarm daemon under a benchmark (not part of pyswarm itself).

Put this folder on PYTHONPATH and set PYSWARM_MEMPROBE=PREFIX: a `pyswarm daemon` started
so (bench/scale.py passes its environment on) appends a report to PREFIX.<pid>.txt each
time it gets SIGUSR2:

    VmRSS, VmHWM, RssAnon                      from /proc/self/status
    malloc: heap, mmap, in use, free           glibc's mallinfo2(), every arena: the C heap
                                               (gRPC, protobuf, and Python objects > 512 B)
    traced: current, peak, top 25 lines        tracemalloc, with PYSWARM_MEMPROBE_FRAMES=N
                                               (N > 0; it slows the manager several times)
    types: the 15 commonest                    with PYSWARM_MEMPROBE_TYPES=1 (gc objects)
    trimmed: VmRSS after malloc_trim(0)        with PYSWARM_MEMPROBE_TRIM=1: how much of the
                                               C heap is free but still held from the OS
    pymalloc: PREFIX.<pid>.<n>.pymalloc        with PYSWARM_MEMPROBE_INFO=1 too: Python's
                                               own allocator (sys._debugmallocstats())
    malloc_info: PREFIX.<pid>.<n>.xml           with PYSWARM_MEMPROBE_INFO=1: glibc's
                                               malloc_info(), free chunks by size, per arena

    PYTHONPATH=bench/memprobe PYSWARM_MEMPROBE=/tmp/m300 \\
        .venv/bin/python bench/scale.py --nodes 300 --tasks 3000 --stores sqlite --json &
    while sleep 4; do pkill -USR2 -P $! -f 'pyswarm daemon'; done

README.md ("Memory, profiled") has what it found.
"""

import os
import sys

_OUT = os.environ.get("PYSWARM_MEMPROBE")

if _OUT and sys.argv[1:2] == ["daemon"]:
    import collections
    import ctypes
    import gc
    import itertools
    import signal
    import time
    import tracemalloc

    _FRAMES = int(os.environ.get("PYSWARM_MEMPROBE_FRAMES", "0"))
    if _FRAMES:
        tracemalloc.start(_FRAMES)

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _Mallinfo2
    _libc.fopen.restype = ctypes.c_void_p
    _libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    _libc.fclose.argtypes = [ctypes.c_void_p]
    _reports = itertools.count(1)  # the number of each malloc_info report

    def _status() -> dict[str, str]:
        with open("/proc/self/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)
                    if k in ("VmRSS", "VmHWM", "RssAnon")}

    def _report(signum, frame):  # noqa: ANN001, ANN202 (a signal handler)
        status = _status()
        mi = _libc.mallinfo2()
        lines = [f"t={time.time():.1f} {status}",
                 f"malloc: heap(arena)={mi.arena >> 20}MB mmap(hblkhd)={mi.hblkhd >> 20}MB "
                 f"in-use(uord)={mi.uordblks >> 20}MB free(ford)={mi.fordblks >> 20}MB"]
        if os.environ.get("PYSWARM_MEMPROBE_TYPES"):
            kinds = collections.Counter(type(o).__name__ for o in gc.get_objects())
            lines.append("types: " + ", ".join(f"{k}={v}" for k, v in kinds.most_common(15)))
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            lines.append(f"traced: current={current >> 20}MB peak={peak >> 20}MB")
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:25]:
                lines.append(f"  {stat.size >> 10}KB n={stat.count} {stat.traceback}")
        if os.environ.get("PYSWARM_MEMPROBE_INFO"):
            base = f"{_OUT}.{os.getpid()}.{next(_reports)}"
            path = f"{base}.xml".encode()
            stream = _libc.fopen(path, b"w")
            _libc.malloc_info(0, stream)
            _libc.fclose(stream)
            lines.append(f"malloc_info: {path.decode()}")
            saved = os.dup(2)
            with open(f"{base}.pymalloc", "w") as f:
                os.dup2(f.fileno(), 2)
                try:
                    sys._debugmallocstats()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
        if os.environ.get("PYSWARM_MEMPROBE_TRIM"):
            _libc.malloc_trim(0)
            lines.append(f"trimmed: {_status()}")
        with open(f"{_OUT}.{os.getpid()}.txt", "a") as f:
            f.write("\n".join(lines) + "\n\n")

    signal.signal(signal.SIGUSR2, _report)
