"""The daemon's log: every line starts with its UTC time, so events can be ordered across
the logs of several nodes (the HA tests read them side by side)."""

from __future__ import annotations

import io
import re

from pyswarm.worker.daemon import StampedLog

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def test_every_line_gets_one_stamp_even_when_written_in_pieces() -> None:
    raw = io.StringIO()
    out = StampedLog(raw)
    out.write("pyswarm manager: this ")
    out.write("manager leads\nsecond line\nthird")
    out.write(" continues\n")
    lines = raw.getvalue().splitlines()
    assert len(lines) == 3
    assert all(re.match(STAMP + r"\S", line) for line in lines), lines
    assert [re.sub(STAMP, "", line) for line in lines] == [
        "pyswarm manager: this manager leads", "second line", "third continues"]


def test_it_stays_a_stream() -> None:
    raw = io.StringIO()
    out = StampedLog(raw)
    assert out.write("x\n") == 2
    out.flush()  # delegated
    assert out.writable()
