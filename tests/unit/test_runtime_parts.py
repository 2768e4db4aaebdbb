"""The runtime's pure parts: user resolution, json-file logs and rotation, rootfs path
handling, bundle /etc files, state files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyswarm.worker.runtime import state as st
from pyswarm.worker.runtime.logs import JsonFileLog
from pyswarm.worker.runtime.process import ExecError, build_env, look_path
from pyswarm.worker.runtime.rootfs import etc_files, overlay_options, secure_join
from pyswarm.worker.runtime.spec import ContainerSpec, ProcessSpec
from pyswarm.worker.runtime.users import ExecUser, resolve

PASSWD = """root:x:0:0:root:/root:/bin/sh
# comment
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:app,other
nogroup:x:65534:
app:x:1000:
staff:x:50:app
"""


@pytest.mark.parametrize(("spec", "want"), [
    ("", ExecUser(0, 0, (0,), "/root")),
    ("nobody", ExecUser(65534, 65534, (65534,), "/nonexistent")),
    ("app", ExecUser(1000, 1000, (1000, 10, 50), "/home/app")),
    ("1000", ExecUser(1000, 1000, (1000, 10, 50), "/home/app")),
    ("app:staff", ExecUser(1000, 50, (50,), "/home/app")),
    ("4242", ExecUser(4242, 0, (0,), "/")),
    ("4242:77", ExecUser(4242, 77, (77,), "/")),
    ("nobody:0", ExecUser(65534, 0, (0,), "/nonexistent")),
])
def test_resolve_user(spec: str, want: ExecUser) -> None:
    assert resolve(spec, PASSWD, GROUP) == want


def test_resolve_without_files_takes_numbers_only() -> None:
    assert resolve("12:34", "", "") == ExecUser(12, 34, (34,), "/")
    with pytest.raises(LookupError, match="unable to find user foo"):
        resolve("foo", "", "")
    with pytest.raises(LookupError, match="unable to find group bar"):
        resolve("0:bar", PASSWD, GROUP)


def test_look_path_and_env(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (tmp_path / "plain").write_text("")
    assert look_path("tool", f"/nonexistent:{tmp_path}") == str(exe)
    assert look_path("/abs/x", "") == "/abs/x"
    with pytest.raises(ExecError, match=r'exec: "plain": executable file not found in \$PATH'):
        look_path("plain", str(tmp_path))
    env = build_env(("A=1", "A=2", "B=x=y"), "/root")
    assert env["A"] == "2" and env["B"] == "x=y" and env["HOME"] == "/root"
    assert env["PATH"].startswith("/usr/local/sbin")


def _records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_log_lines_partial_and_long(tmp_path: Path) -> None:
    log = JsonFileLog(str(tmp_path / "c.log"))
    log.feed("stdout", b"one\ntw")
    log.feed("stderr", b"err\n")
    log.feed("stdout", b"o\n" + b"x" * (16 * 1024 + 5))
    log.close()
    recs = _records(tmp_path / "c.log")
    assert [(r["stream"], r["log"]) for r in recs] == [
        ("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"),
        ("stdout", "x" * 16 * 1024), ("stdout", "xxxxx")]


def test_json_log_rotation_keeps_max_files(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    log = JsonFileLog(str(path), max_size=300, max_files=3)
    for i in range(50):
        log.feed("stdout", f"line {i}\n".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    newest = _records(path)[-1]["log"]
    older = _records(tmp_path / "c.log.1")[-1]["log"]
    assert newest == "line 49\n" and int(older.split()[1]) < 49


def test_json_log_single_file_truncates(tmp_path: Path) -> None:
    log = JsonFileLog(str(tmp_path / "c.log"), max_size=200, max_files=1)
    for i in range(30):
        log.feed("stdout", f"line {i}\n".encode())
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    assert (tmp_path / "c.log").stat().st_size <= 200


def test_secure_join_stays_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/abs").symlink_to("/etc")
    (root / "etc/up").symlink_to("../../../../..")
    (root / "loop").symlink_to("loop")
    assert secure_join(str(root), "/etc/abs/passwd") == f"{root}/etc/passwd"
    assert secure_join(str(root), "/etc/up/x") == f"{root}/x"
    assert secure_join(str(root), "/../../etc") == f"{root}/etc"
    assert secure_join(str(root), "/new/dir") == f"{root}/new/dir"
    with pytest.raises(OSError):
        secure_join(str(root), "/loop/x")


def test_overlay_options_order_and_long_form() -> None:
    data, short = overlay_options(("/l/a", "/l/b"), "/b")
    assert data == "lowerdir=/l/b:/l/a,upperdir=/b/upper,workdir=/b/work" and not short
    many = tuple(f"/var/lib/pyswarm/images/layers/{i:064x}" for i in range(300))
    data, short = overlay_options(many, "/b")
    assert short and len(data) < 4096
    assert data.startswith("lowerdir=l/12b:l/12a:")
    assert data.endswith(":l/0,upperdir=upper,workdir=work")


def _spec(**kw: object) -> ContainerSpec:
    return ContainerSpec(id="a" * 64, hostname="h", layers=(), bundle_dir="/b",
                         process=ProcessSpec(args=("true",)), **kw)  # type: ignore[arg-type]


def test_etc_files() -> None:
    files = etc_files(_spec(extra_hosts=("10.0.0.2 db",)),
                      "search lan\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n")
    assert files["hostname"] == "h\n"
    assert "10.0.0.2 db\n" in files["hosts"] and files["hosts"].startswith("127.0.0.1")
    assert files["resolv.conf"] == "search lan\nnameserver 10.1.1.1\n"
    assert "nameserver 8.8.8.8" in etc_files(_spec(), "nameserver 127.0.0.1\n")["resolv.conf"]
    assert etc_files(_spec(dns_servers=("1.1.1.1",)), "")["resolv.conf"] == \
        "nameserver 1.1.1.1\n"


def test_state_from_files(tmp_path: Path) -> None:
    assert st.current(str(tmp_path)) is None
    me = os.getpid()
    st.write_json_atomic(str(tmp_path / "state.json"), {
        "pid": me, "start_time": st.proc_start_time(me), "shim_pid": me,
        "shim_start_time": st.proc_start_time(me), "started_at": st.rfc3339(),
        "cgroup": "x/y"})
    assert st.current(str(tmp_path)).status == "running"  # type: ignore[union-attr]
    # A recycled pid (different start time) is not the container.
    st.write_json_atomic(str(tmp_path / "state.json"), {
        "pid": me, "start_time": 1, "shim_pid": me, "shim_start_time": 1,
        "started_at": "", "cgroup": "x/y"})
    lost = st.current(str(tmp_path))
    assert lost is not None and lost.status == "exited" and lost.exit_code is None
    assert "unknown" in lost.error
    st.write_json_atomic(str(tmp_path / "exit.json"), {
        "exit_code": 137, "oom_killed": True, "finished_at": "t", "error": ""})
    done = st.current(str(tmp_path))
    assert done is not None and (done.status, done.exit_code, done.oom_killed) == \
        ("exited", 137, True)


def test_rfc3339() -> None:
    assert st.rfc3339(1_795_000_000_123_456_789) == "2026-11-18T11:06:40.123456789Z"
