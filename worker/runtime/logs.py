"""Docker's json-file log format, written by the shim.

One JSON object per line of container output::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-23T06:00:00.123456789Z"}

Policy, as Docker's json-file driver: a line is emitted at each newline; a line longer than
16 KiB is cut into 16 KiB pieces (without the newline); output still pending when a stream
closes is emitted as is. Rotation is by size: once the current file would grow past
``max_size`` it becomes ``container.log.1`` (older ones shift up) and ``max_files`` counts
all files kept, the current one included (Docker's max-file; 1 = only the current file,
truncated on rotation).
"""

from __future__ import annotations

import json
import os

from .state import rfc3339

LOG_FILE = "container.log"
MAX_LINE = 16 * 1024


class JsonFileLog:
    def __init__(self, path: str, max_size: int = 0, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> None:
        """Add raw output of `stream`; complete lines are written at once."""
        buf = self._pending[stream] + data
        out = []
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + MAX_LINE)
            if nl >= 0:
                out.append(buf[start:nl + 1])
                start = nl + 1
            elif len(buf) - start >= MAX_LINE:
                out.append(buf[start:start + MAX_LINE])
                start += MAX_LINE
            else:
                break
        self._pending[stream] = buf[start:]
        if out:
            self._emit(stream, out)

    def flush(self, stream: str) -> None:
        """The stream closed: write what is left of its last line."""
        rest = self._pending[stream]
        self._pending[stream] = b""
        if rest:
            self._emit(stream, [rest])

    def close(self) -> None:
        for stream in self._pending:
            self.flush(stream)
        os.close(self._fd)

    def _emit(self, stream: str, lines: list[bytes]) -> None:
        now = rfc3339()
        for line in lines:
            rec = json.dumps({"log": line.decode("utf-8", "replace"), "stream": stream,
                              "time": now}, ensure_ascii=False, separators=(",", ":"))
            raw = (rec + "\n").encode()
            if self.max_size and self._size and self._size + len(raw) > self.max_size:
                self._rotate()
            os.write(self._fd, raw)
            self._size += len(raw)

    def _rotate(self) -> None:
        os.close(self._fd)
        keep = self.max_files - 1
        if keep <= 0:
            flags = os.O_TRUNC
        else:
            for i in range(keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, self.path + ".1")
            flags = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                           | flags, 0o640)
        self._size = 0
