"""The engine end to end, driven through the CLI against a real daemon: what a user of
`pyswarm run` relies on. Real containers, real kernel, real nftables."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.engine_fixtures import Daemon

pytestmark = pytest.mark.root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, attempts: int = 50) -> str:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered: {last}")


def _mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def _nft_table(daemon: Daemon) -> str:
    return subprocess.run(["nft", "list", "table", "ip", daemon.env["PYSWARM_NFT_TABLE"]],
                          capture_output=True, text=True).stdout


def _veths(daemon: Daemon) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", daemon.env["PYSWARM_BRIDGE"]],
                         capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()]


def _names(daemon: Daemon) -> set[str]:
    return {c["name"] for c in daemon.json_lines("ps", "-a", "--format", "json")}


# ---- running commands ------------------------------------------------------------------


def test_run_prints_output_and_leaves_nothing_with_rm(daemon: Daemon) -> None:
    before = _names(daemon)
    out = daemon.cli("run", "--rm", "busybox", "echo", "hello from a container")
    assert out.stdout == "hello from a container\n"
    assert _names(daemon) == before


def test_exit_code_is_the_containers(daemon: Daemon) -> None:
    assert daemon.cli("run", "--rm", "busybox", "sh", "-c", "exit 3", check=False).returncode == 3


def test_stdout_and_stderr_stay_apart(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert out.stdout == "out\n"
    assert out.stderr == "err\n"


def test_flags_reach_the_process(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "-e", "GREETING=hi there", "-w", "/tmp", "-u", "nobody",
                     "-h", "myhost", "busybox", "sh", "-c",
                     'echo "$GREETING"; pwd; id -u; hostname')
    assert out.stdout.split("\n")[:4] == ["hi there", "/tmp", "65534", "myhost"]


def test_entrypoint_override(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "--entrypoint", "echo", "busybox", "a", "b")
    assert out.stdout == "a b\n"


def test_isolation_pid_hostname_mounts(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "busybox", "sh", "-c",
                     "echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/mounts")
    lines = out.stdout.splitlines()
    assert lines[0] == "1"  # the shell is pid 1 of its own pid namespace
    assert int(lines[1]) <= 3  # sh, ls, grep: no host processes
    mount_points = {line.split()[1] for line in lines[2:]}
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    host_points = {line.split()[4] for line in mountinfo}
    # The host's own mounts (its cgroup hierarchies, the state folder...) are invisible.
    assert not mount_points & (host_points - {"/", "/proc", "/dev", "/dev/pts", "/dev/shm",
                                              "/sys", "/dev/mqueue", "/tmp", "/run"}), mount_points


def test_network_none_has_only_loopback(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "--network", "none", "busybox", "cat", "/proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in out.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_bridge_network_gives_an_address(daemon: Daemon) -> None:
    out = daemon.cli("run", "--rm", "busybox", "ip", "-4", "-o", "addr", "show", "eth0")
    subnet = daemon.env["PYSWARM_SUBNET"].rsplit(".", 2)[0]  # "10.2xx.yy"
    assert f" {subnet}." in out.stdout


def test_tmpfs_and_read_only_bind(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from the host\n")
    out = daemon.cli("run", "--rm", "--tmpfs", "/scratch", "-v", f"{tmp_path}:/host:ro",
                     "busybox", "sh", "-c",
                     "grep /scratch /proc/mounts | cut -d' ' -f3; cat /host/f; "
                     "touch /host/new 2>/dev/null && echo wrote || echo refused")
    assert out.stdout.splitlines() == ["tmpfs", "from the host", "refused"]
    assert not (tmp_path / "new").exists()


# ---- bad input: a clear error, exit 125, nothing left behind ---------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["nosuchimage:1"], "No such image"),
        (["-p", "8080:99999", "busybox", "true"], "99999"),
        (["-p", "eighty", "busybox", "true"], "eighty"),
        (["-m", "lots", "busybox", "true"], "lots"),
        (["-m", "1k", "busybox", "true"], "minimum"),
        (["--cpus", "abc", "busybox", "true"], "--cpus"),
        (["--cpus", "64", "busybox", "true"], "--cpus"),
        (["-v", "data:relative", "busybox", "true"], "absolute"),
        (["--name", "bad name!", "busybox", "true"], "invalid container name"),
        (["-e", "=x", "busybox", "true"], "environment"),
    ],
)
def test_bad_input_is_refused_cleanly(daemon: Daemon, args: list[str], message: str) -> None:
    names, veths = _names(daemon), _veths(daemon)
    out = daemon.cli("run", "--rm", *args, check=False)
    assert out.returncode == 125, out
    assert message in out.stderr
    assert _names(daemon) == names
    assert _veths(daemon) == veths


def test_command_not_found_is_127_and_leaves_nothing(daemon: Daemon) -> None:
    names, veths = _names(daemon), _veths(daemon)
    out = daemon.cli("run", "--name", "nocmd", "busybox", "no-such-command", check=False)
    assert out.returncode == 127, out
    assert "no-such-command" in out.stderr
    assert _names(daemon) == names
    assert _veths(daemon) == veths
    assert not _mounts_mentioning(str(daemon.root / "containers"))


def test_name_in_use_is_refused(daemon: Daemon) -> None:
    daemon.cli("run", "-d", "--name", "taken", "busybox", "sleep", "100")
    try:
        out = daemon.cli("run", "-d", "--name", "taken", "busybox", "true", check=False)
        assert out.returncode == 125
        assert "already in use" in out.stderr
        assert daemon.inspect("taken")["state"] == "running"
    finally:
        daemon.cli("rm", "-f", "taken")


# ---- lifecycle ---------------------------------------------------------------------------


def test_detached_ps_logs_stop_rm(daemon: Daemon) -> None:
    cid = daemon.cli("run", "-d", "--name", "lifecycle", "busybox", "sh", "-c",
                     "echo started; sleep 1000").stdout.strip()
    assert len(cid) == 64
    rows = {c["name"]: c for c in daemon.json_lines("ps", "--format", "json")}
    assert rows["lifecycle"]["state"] == "running"
    assert rows["lifecycle"]["id"] == cid
    assert rows["lifecycle"]["status"].startswith("Up")
    deadline = time.monotonic() + 5
    while "started" not in daemon.cli("logs", "lifecycle").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    daemon.cli("stop", "-t", "1", "lifecycle")
    assert time.monotonic() - started < 10
    info = daemon.inspect(cid[:12])
    assert info["state"] == "exited"
    assert info["exit_code"] == 137  # sh as pid 1 ignores SIGTERM: killed after the grace time
    assert "lifecycle" not in {c["name"] for c in daemon.json_lines("ps", "--format", "json")}
    assert "lifecycle" in _names(daemon)
    out = daemon.cli("rm", "lifecycle")
    assert "lifecycle" not in _names(daemon)
    assert out.returncode == 0
    assert not (daemon.root / "containers" / cid).exists()


def test_stop_with_a_handled_signal_is_graceful(daemon: Daemon) -> None:
    daemon.cli("run", "-d", "--name", "graceful", "busybox", "sh", "-c",
               "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    time.sleep(0.3)
    daemon.cli("stop", "graceful")
    assert daemon.inspect("graceful")["exit_code"] == 0
    daemon.cli("rm", "graceful")


def test_rm_of_a_running_container_needs_force(daemon: Daemon) -> None:
    daemon.cli("run", "-d", "--name", "busy", "busybox", "sleep", "1000")
    out = daemon.cli("rm", "busy", check=False)
    assert out.returncode != 0 and "force" in out.stderr
    daemon.cli("rm", "-f", "busy")
    assert "busy" not in _names(daemon)


def test_exec_sees_the_containers_pid_namespace_and_files(daemon: Daemon) -> None:
    daemon.cli("run", "-d", "--name", "exectarget", "busybox", "sh", "-c",
               "echo marker > /tmp/marker; sleep 1000")
    try:
        time.sleep(0.3)
        ps = daemon.cli("exec", "exectarget", "ps", "-o", "pid,args").stdout
        first = ps.splitlines()[1].split(None, 1)
        assert first == ["1", "sleep 1000"]  # sh exec'd its last command: it is pid 1
        assert daemon.cli("exec", "exectarget", "cat", "/tmp/marker").stdout == "marker\n"
        assert daemon.cli("exec", "exectarget", "sh", "-c", "exit 7", check=False).returncode == 7
        out = daemon.cli("exec", "-i", "exectarget", "cat", input=b"through stdin\n")
        assert out.stdout == "through stdin\n"
        assert daemon.cli("exec", "exectarget", "nosuchcmd", check=False).returncode == 127
    finally:
        daemon.cli("rm", "-f", "exectarget")


def test_memory_limit_oom_is_137_and_reported(daemon: Daemon) -> None:
    out = daemon.cli("run", "--name", "oomer", "-m", "16m", "busybox", "sh", "-c",
                     "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived", check=False)
    assert out.returncode == 137, out
    info = daemon.inspect("oomer")
    assert info["oom_killed"] is True
    daemon.cli("rm", "oomer")


def test_pids_limit(daemon: Daemon) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 0.5 & done; wait; echo all-forked"
    limited = daemon.cli("run", "--rm", "--pids-limit", "8", "busybox", "sh", "-c", script,
                         check=False)
    assert limited.returncode != 0
    assert "can't fork" in limited.stderr
    free = daemon.cli("run", "--rm", "busybox", "sh", "-c", script)
    assert free.stdout == "all-forked\n"


def test_writes_stay_in_the_container(daemon: Daemon) -> None:
    daemon.cli("run", "--name", "writer", "busybox", "sh", "-c", "echo mine > /etc/written")
    try:
        out = daemon.cli("run", "--rm", "busybox", "sh", "-c",
                         "test -e /etc/written && echo present || echo absent")
        assert out.stdout == "absent\n"
        # ... and the image's layers are untouched.
        image = json.loads(daemon.cli("image", "inspect", "busybox").stdout)[0]
        layers = Path(daemon.root, "images", "layers")
        assert not list(layers.glob("*/etc/written")), image["Id"]
    finally:
        daemon.cli("rm", "writer")


# ---- networking ------------------------------------------------------------------------


def test_published_port_reachable_and_gone_after_rm(daemon: Daemon) -> None:
    port = _free_port()
    cid = daemon.cli(
        "run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
        "mkdir -p /www && echo served-by-pyswarm > /www/index.html && httpd -f -p 80 -h /www",
    ).stdout.strip()
    try:
        assert _get(f"http://127.0.0.1:{port}/") == "served-by-pyswarm\n"
        assert cid in _nft_table(daemon)
        ports = daemon.json_lines("ps", "--format", "json")
        assert f"{port}->80/tcp" in next(c for c in ports if c["name"] == "web")["ports"]
        clash = daemon.cli("run", "-d", "-p", f"{port}:80", "busybox", "true", check=False)
        assert clash.returncode == 125 and "already" in clash.stderr
    finally:
        daemon.cli("rm", "-f", "web")
    assert cid not in _nft_table(daemon)
    with pytest.raises(AssertionError):
        _get(f"http://127.0.0.1:{port}/", attempts=3)


# ---- volumes ---------------------------------------------------------------------------


def test_named_volume_outlives_its_container(daemon: Daemon) -> None:
    daemon.cli("run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert "keep" in daemon.cli("volume", "ls", "-q").stdout.split()
    out = daemon.cli("run", "--rm", "-v", "keep:/data", "busybox", "cat", "/data/f")
    assert out.stdout == "kept\n"
    daemon.cli("run", "-d", "--name", "holder", "-v", "keep:/data", "busybox", "sleep", "100")
    refused = daemon.cli("volume", "rm", "keep", check=False)
    assert refused.returncode != 0 and "in use" in refused.stderr
    daemon.cli("rm", "-f", "holder")
    daemon.cli("volume", "rm", "keep")
    assert "keep" not in daemon.cli("volume", "ls", "-q").stdout.split()


# ---- the daemon restarts; containers do not ---------------------------------------------


def test_daemon_kill_keeps_containers_running(daemon: Daemon) -> None:
    cid = daemon.cli("run", "-d", "--name", "survivor", "busybox", "sh", "-c",
                     "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done").stdout.strip()
    pid = daemon.inspect(cid)["pid"]
    daemon.kill()
    assert Path(f"/proc/{pid}").exists()
    daemon.start()
    rows = {c["name"]: c for c in daemon.json_lines("ps", "--format", "json")}
    assert rows["survivor"]["id"] == cid and rows["survivor"]["state"] == "running"
    assert "tick" in daemon.cli("logs", "--tail", "1", "survivor").stdout
    daemon.cli("stop", "-t", "1", "survivor")
    assert daemon.inspect("survivor")["state"] == "exited"
    assert not Path(f"/proc/{pid}").exists()
    daemon.cli("rm", "survivor")


# ---- logs ------------------------------------------------------------------------------


def test_logs_rotate_and_tail(daemon: Daemon) -> None:
    daemon.cli("run", "--name", "chatty", "--log-opt", "max-size=2k", "--log-opt", "max-file=2",
               "busybox", "sh", "-c", "for i in $(seq 200); do echo line $i; done")
    info = daemon.inspect("chatty")
    bundle = daemon.root / "containers" / info["id"]
    files = sorted(p.name for p in bundle.glob("container.log*"))
    assert files == ["container.log", "container.log.1"]
    assert all(p.stat().st_size <= 2048 + 200 for p in bundle.glob("container.log*"))
    assert daemon.cli("logs", "--tail", "2", "chatty").stdout == "line 199\nline 200\n"
    daemon.cli("rm", "chatty")


def test_logs_follow_streams_until_exit(daemon: Daemon) -> None:
    daemon.cli("run", "-d", "--name", "follow", "busybox", "sh", "-c",
               "for i in 1 2 3; do echo n$i; sleep 0.2; done")
    out = daemon.cli("logs", "-f", "follow", timeout=20)
    assert out.stdout == "n1\nn2\nn3\n"
    daemon.cli("rm", "follow")


# ---- images ----------------------------------------------------------------------------


def test_commit_makes_an_image_of_the_changes(daemon: Daemon) -> None:
    daemon.cli("run", "--name", "tocommit", "busybox", "sh", "-c",
               "echo committed > /hello; rm /etc/group")
    daemon.cli("commit", "-c", 'CMD ["cat", "/hello"]', "tocommit", "committed:1")
    daemon.cli("rm", "tocommit")
    assert daemon.cli("run", "--rm", "committed:1").stdout == "committed\n"
    out = daemon.cli("run", "--rm", "committed:1", "sh", "-c", "test -e /etc/group || echo gone")
    assert out.stdout == "gone\n"
    daemon.cli("image", "rm", "committed:1")


def test_image_save_load_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    image_id = json.loads(daemon.cli("image", "inspect", "busybox").stdout)[0]["Id"]
    daemon.cli("image", "save", "-o", str(archive), "busybox:latest")
    daemon.cli("image", "tag", "busybox:latest", "roundtrip:1")
    daemon.cli("image", "rm", "roundtrip:1")
    out = daemon.cli("image", "load", "-i", str(archive))
    assert "busybox:latest" in out.stdout
    assert json.loads(daemon.cli("image", "inspect", "busybox").stdout)[0]["Id"] == image_id


def test_corrupt_archive_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar"
    daemon.cli("image", "save", "-o", str(archive), "busybox:latest")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    before = daemon.cli("image", "ls", "-q").stdout
    out = daemon.cli("image", "load", "-i", str(archive), check=False)
    assert out.returncode == 125
    assert out.stderr.strip()
    assert daemon.cli("image", "ls", "-q").stdout == before


def test_build_uses_the_cache(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nRUN echo built > /built\nCOPY note.txt /note.txt\n"
        'CMD ["cat", "/built"]\n')
    (tmp_path / "note.txt").write_text("one\n")
    first = daemon.cli("image", "build", "-t", "cached:1", str(tmp_path))
    assert "CACHED" not in first.stdout
    second = daemon.cli("image", "build", "-t", "cached:1", str(tmp_path))
    assert second.stdout.count("CACHED") >= 2
    (tmp_path / "note.txt").write_text("two\n")
    third = daemon.cli("image", "build", "-t", "cached:1", str(tmp_path))
    assert third.stdout.count("CACHED") == 1  # RUN still cached; COPY rebuilt
    assert daemon.cli("run", "--rm", "cached:1").stdout == "built\n"
    assert daemon.cli("run", "--rm", "cached:1", "cat", "/note.txt").stdout == "two\n"


def test_dockerfile_error_names_the_line(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n\nFROBNICATE now\n")
    out = daemon.cli("image", "build", "-t", "broken:1", str(tmp_path), check=False)
    assert out.returncode == 125
    assert "Dockerfile:3" in out.stderr


def test_no_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    import os

    from tests.engine_fixtures import PYSWARM

    out = subprocess.run([PYSWARM, "ps"], capture_output=True, text=True,
                         env=dict(os.environ, PYSWARM_RUN=str(tmp_path)))
    assert out.returncode == 125
    assert "pyswarm daemon -d" in out.stderr


# ---- registries --------------------------------------------------------------------------

from tests.test_registry_images import registry  # noqa: E402,F401  (the real docker-registry)


def test_push_and_pull_through_the_cli(daemon: Daemon, registry: str) -> None:  # noqa: F811
    ref = f"{registry}/demo/busybox:1"
    daemon.cli("image", "tag", "busybox:latest", ref)
    pushed = daemon.cli("image", "push", ref)
    assert pushed.stdout.strip()
    daemon.cli("image", "rm", ref)
    assert ref not in daemon.cli("image", "ls").stdout.replace("   ", " ")
    daemon.cli("image", "pull", ref)
    out = daemon.cli("run", "--rm", ref, "echo", "pulled and ran")
    assert out.stdout == "pulled and ran\n"
    missing = daemon.cli("image", "pull", f"{registry}/demo/nosuch:1", check=False)
    assert missing.returncode == 125 and missing.stderr.strip()
    daemon.cli("image", "rm", ref)
