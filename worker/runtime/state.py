"""What a container's bundle folder records about it, and how that is read back.

The shim is the only writer: ``state.json`` once the container process has exec'd, and
``exit.json`` (atomically, by rename) once it has been reaped. Any process can rebuild a
ContainerState from these two files plus /proc, which is how a restarted daemon re-adopts
the containers its predecessor started. A pid is trusted only together with its start time
(field 22 of /proc/<pid>/stat), so a recycled pid is never mistaken for the container.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

STATE_FILE = "state.json"
EXIT_FILE = "exit.json"

Status = Literal["created", "running", "exited"]


@dataclass(frozen=True)
class ContainerState:
    status: Status
    pid: int  # host pid of the container's init; 0 when there is none
    shim_pid: int
    exit_code: int | None
    oom_killed: bool
    started_at: str  # RFC 3339, UTC
    finished_at: str
    error: str


def rfc3339(ns: int | None = None) -> str:
    """UTC time with nanoseconds, as Docker writes it: 2026-11-23T06:00:00.123456789Z."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2:].split()


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])  # field 22; fields[0] is field 3


def alive(pid: int, start_time: int | None) -> bool:
    """True when `pid` is the very process that was recorded (not a recycled pid) and is not
    a zombie."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None or fields[0] == b"Z":
        return False
    return start_time is None or int(fields[19]) == start_time


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def load(bundle_dir: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(state.json, exit.json) of a bundle; either may be None."""
    return (read_json(os.path.join(bundle_dir, STATE_FILE)),
            read_json(os.path.join(bundle_dir, EXIT_FILE)))


def current(bundle_dir: str) -> ContainerState | None:
    """The container's state from its files and /proc; None when it never started."""
    st, ex = load(bundle_dir)
    if st is None:
        return None
    pid, shim_pid = int(st["pid"]), int(st["shim_pid"])
    started = str(st.get("started_at", ""))
    if ex is not None:
        return ContainerState("exited", 0, shim_pid, ex.get("exit_code"),
                              bool(ex.get("oom_killed")), started,
                              str(ex.get("finished_at", "")), str(ex.get("error", "")))
    if alive(pid, st.get("start_time")):
        return ContainerState("running", pid, shim_pid, None, False, started, "", "")
    if alive(shim_pid, st.get("shim_start_time")):
        # The init is gone and its shim is writing exit.json right now.
        return ContainerState("running", 0, shim_pid, None, False, started, "", "")
    # Check once more: the shim may have finished between the two reads above.
    _, ex = load(bundle_dir)
    if ex is not None:
        return current(bundle_dir)
    return ContainerState("exited", 0, shim_pid, None, False, started, "",
                          "the container's shim is gone; its exit status is unknown")
