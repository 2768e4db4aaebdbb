"""Reading json-file logs: history, tail, follow across rotation, torn lines."""

import json
import os
from pathlib import Path
from typing import Any

from pyswarm.worker.engine.logs import LogReader


def _line(text: str, stream: str = "stdout") -> bytes:
    return (json.dumps({"log": text + "\n", "stream": stream, "time": "t"}) + "\n").encode()


def test_initial_reads_rotated_then_current_and_tails(tmp_path: Path) -> None:
    (tmp_path / "container.log.2").write_bytes(_line("a"))
    (tmp_path / "container.log.1").write_bytes(_line("b"))
    (tmp_path / "container.log").write_bytes(_line("c") + _line("d", "stderr"))
    reader = LogReader(tmp_path)
    assert [x.data for x in reader.initial()] == [b"a\n", b"b\n", b"c\n", b"d\n"]
    assert [x.stream for x in LogReader(tmp_path).initial(tail=1)] == ["stderr"]
    assert LogReader(tmp_path).initial(tail=0) == []


def test_follow_sees_appends_torn_lines_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    log.write_bytes(_line("one"))
    reader = LogReader(tmp_path)
    assert [x.data for x in reader.initial()] == [b"one\n"]
    whole = _line("two")
    with open(log, "ab") as f:
        f.write(whole[:5])
    assert reader.poll() == []  # half a line is not a line
    with open(log, "ab") as f:
        f.write(whole[5:])
    assert [x.data for x in reader.poll()] == [b"two\n"]
    os.rename(log, tmp_path / "container.log.1")  # the shim rotates
    log.write_bytes(_line("three"))
    assert [x.data for x in reader.poll()] == [b"three\n"]
    reader.close()


def test_a_file_rotated_away_while_read_is_skipped(tmp_path: Path, monkeypatch: Any) -> None:
    # A chatty container rotates its files faster than a reader lists and opens them: the
    # reader must go on (run streams its output), not fail on the vanished file.
    from pyswarm.worker.engine import logs

    current = tmp_path / "container.log"
    current.write_text('{"log": "now\\n", "stream": "stdout", "time": "t"}\n')
    monkeypatch.setattr(logs, "log_files",
                        lambda bundle: [tmp_path / "container.log.1", current])
    reader = logs.LogReader(tmp_path)
    assert [line.data for line in reader.initial()] == [b"now\n"]
