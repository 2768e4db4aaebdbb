"""Reading a container's json-file logs, the format its shim writes.

Each line of ``container.log`` (and of the rotated ``container.log.1`` … older files) is a
JSON object ``{"log": "...", "stream": "stdout"|"stderr", "time": "RFC3339Nano"}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LOG_NAME = "container.log"


@dataclass(frozen=True)
class LogLine:
    stream: str
    data: bytes
    time: str


def _parse(raw: bytes) -> LogLine | None:
    try:
        entry = json.loads(raw)
        return LogLine(entry.get("stream", "stdout"), entry["log"].encode(), entry.get("time", ""))
    except (ValueError, KeyError, AttributeError):
        return None  # a torn last line while the shim writes; the follower rereads it


def log_files(bundle: Path) -> list[Path]:
    """Oldest first: container.log.N … container.log.1, container.log."""
    rotated = sorted(
        (p for p in bundle.glob(LOG_NAME + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    current = bundle / LOG_NAME
    return rotated + ([current] if current.exists() else [])


def _read_file(path: Path) -> list[LogLine]:
    """The complete lines of one log file; none if it was rotated away meanwhile (a chatty
    container can rotate its files faster than a reader lists and opens them)."""
    try:
        with open(path, "rb") as f:
            return [line for raw in f
                    if raw.endswith(b"\n") and (line := _parse(raw)) is not None]
    except FileNotFoundError:
        return []


class LogReader:
    """Reads what was recorded, then what is appended, with no gap and no line twice.

    ``initial()`` returns the rotated files and the current file up to its end; ``poll()``
    returns lines appended since, following the shim across rotations (a new inode at the
    same name means it rotated).
    """

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.path = bundle / LOG_NAME
        self._file: BinaryIO | None = None
        self._inode = 0
        self._partial = b""

    def initial(self, tail: int = -1) -> list[LogLine]:
        lines: list[LogLine] = []
        for path in log_files(self.bundle)[:-1] if self.path.exists() else log_files(self.bundle):
            lines += _read_file(path)
        lines += self.poll()
        return lines[-tail:] if tail > 0 else ([] if tail == 0 else lines)

    def poll(self) -> list[LogLine]:
        out: list[LogLine] = []
        if self._file is not None:
            out += self._drain()
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return out
        if inode != self._inode:
            if self._file is not None:
                self._file.close()
                self._file = None
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:  # renamed by a rotation since the stat: next poll
                return out
            self._inode = os.fstat(self._file.fileno()).st_ino  # what was opened, not stat'd
            self._partial = b""
            out += self._drain()
        return out

    def _drain(self) -> list[LogLine]:
        assert self._file is not None
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        return [line for raw in complete if (line := _parse(raw)) is not None]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
