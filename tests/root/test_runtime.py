"""The container runtime against the real kernel: isolation, limits, exec, logs, re-adoption
and clean failure. Each test runs busybox containers over a throw-away layer."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pyswarm.common.errors import RuntimeFailure
from pyswarm.worker.runtime import syscalls as sc
from pyswarm.worker.runtime.runtime import Runtime
from pyswarm.worker.runtime.spec import (
    ContainerSpec,
    LogConfig,
    Mount,
    MountKind,
    NetworkMode,
    ProcessSpec,
    Resources,
)

pytestmark = pytest.mark.root

CGROUP_PARENT = "pyswarm-test-rt"
APPLETS = ("sh ls cat echo id hostname mount sleep wc ps grep head tail seq dd touch "
           "kill true false env readlink").split()


def busybox_layer(path: Path) -> Path:
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "mnt"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/busybox", path / "bin/busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return path


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_layer(tmp_path_factory.mktemp("layer"))


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    r = Runtime()
    r.start()
    yield r
    r.close()
    for d in r.driver.dirs(CGROUP_PARENT):
        try:
            os.rmdir(d)
        except OSError:
            pass


class Containers:
    """Makes bundles and specs; deletes every container it started at the end."""

    def __init__(self, rt: Runtime, layer: Path, tmp: Path) -> None:
        self.rt, self.layer, self.tmp = rt, layer, tmp
        self.bundles: list[str] = []

    def spec(self, *args: str, **kw: object) -> ContainerSpec:
        n = len(self.bundles)
        bundle = self.tmp / f"c{n}"
        bundle.mkdir()
        self.bundles.append(str(bundle))
        process = kw.pop("process", ProcessSpec(args=args, env=("PATH=/bin",)))
        base = ContainerSpec(id=os.urandom(32).hex(), hostname=f"box{n}",
                             layers=(str(self.layer),), bundle_dir=str(bundle),
                             process=process,  # type: ignore[arg-type]
                             cgroup_parent=CGROUP_PARENT)
        return replace(base, **kw)  # type: ignore[arg-type]

    def wait(self, bundle: str, timeout: float = 20) -> None:
        fd = self.rt.shim_pidfd(bundle)
        if fd is None:
            return
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, "container did not exit in time"
        finally:
            os.close(fd)

    def run(self, *args: str, **kw: object) -> tuple[int | None, str]:
        """Run to completion; (exit code, stdout+stderr text from the json log)."""
        spec = self.spec(*args, **kw)
        self.rt.create(spec)
        self.wait(spec.bundle_dir)
        state = self.rt.state(spec.bundle_dir)
        return state.exit_code, log_text(spec.bundle_dir)

    def cleanup(self) -> None:
        for b in self.bundles:
            self.rt.delete(b)


def log_text(bundle: str, name: str = "container.log") -> str:
    path = Path(bundle) / name
    if not path.exists():
        return ""
    return "".join(json.loads(line)["log"] for line in path.read_text().splitlines())


@pytest.fixture
def ct(rt: Runtime, layer: Path, tmp_path: Path) -> Iterator[Containers]:
    c = Containers(rt, layer, tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


# ---- isolation -------------------------------------------------------------------------


def test_runs_as_pid_1_and_sees_no_host_process(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "echo pid=$$; ls /proc")
    assert code == 0
    assert "pid=1\n" in out
    pids = {int(w) for w in out.split() if w.isdigit()}
    assert os.getpid() not in pids and max(pids) < 50


def test_own_hostname_and_etc_files(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "hostname; cat /etc/hostname; grep localhost /etc/hosts",
                       hostname="web-1", extra_hosts=("10.0.0.5 db",))
    assert code == 0
    assert out.splitlines()[:2] == ["web-1", "web-1"]
    assert "127.0.0.1" in out


def test_host_mounts_are_invisible_and_mount_is_refused(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "cat /proc/mounts; mount -t tmpfs x /mnt; echo rc=$?")
    assert code == 0
    points = {line.split()[1] for line in out.splitlines() if len(line.split()) == 6}
    assert "/" in points and "/proc" in points
    assert not any(p.startswith(("/work", "/sys/fs/cgroup", "/tmp/")) for p in points)
    assert "rc=0" not in out and "rc=" in out
    # ... and nothing of the container is mounted on the host.
    assert ct.bundles[0] not in Path("/proc/self/mountinfo").read_text()


def test_masked_and_readonly_proc_paths(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "echo h > /proc/sysrq-trigger; echo rc=$?; "
                       "echo size=$(cat /proc/kcore | wc -c); ls /sys/firmware | wc -l")
    assert code == 0
    assert "rc=1" in out
    assert "size=0" in out
    assert out.strip().endswith("0")


def test_default_capabilities_seccomp_and_no_new_privs(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "grep -E 'Cap(Eff|Bnd|Amb)|NoNewPrivs|Seccomp:' "
                       "/proc/self/status")
    assert code == 0
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert fields["CapEff"] == "00000000a80425fb"
    assert fields["CapBnd"] == "00000000a80425fb"
    assert fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_user_nobody(ct: Containers) -> None:
    spec_process = ProcessSpec(args=("sh", "-c", "id; grep CapEff /proc/self/status"),
                               env=("PATH=/bin",), user="nobody")
    code, out = ct.run(process=spec_process)
    assert code == 0
    assert "uid=65534" in out and "gid=65534" in out
    assert "CapEff:\t0000000000000000" in out


def test_only_stdio_fds_and_loopback_only_network(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "ls /proc/self/fd; echo --; cat /proc/net/dev")
    fds, _, net = out.partition("--\n")
    assert code == 0
    assert fds.split() in (["0", "1", "2"], ["0", "1", "2", "3"])
    ifaces = [line.split(":")[0].strip() for line in net.splitlines()[2:]]
    assert ifaces == ["lo"]


def test_writes_stay_in_the_containers_upper_layer(ct: Containers) -> None:
    code, _ = ct.run("sh", "-c", "echo hi > /data.txt && rm /bin/true")
    assert code == 0
    assert not (ct.layer / "data.txt").exists() and (ct.layer / "bin/true").is_symlink()
    upper = Path(ct.bundles[0]) / "upper"
    assert (upper / "data.txt").read_text() == "hi\n"
    assert (upper / "bin/true").is_char_device()  # overlay whiteout, as image commit reads it
    code, out = ct.run("sh", "-c", "cat /data.txt || echo no-data; ls /bin/true")
    assert code == 0 and "no-data" in out and "hi" not in out and "/bin/true" in out


def test_bind_and_tmpfs_mounts(ct: Containers, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in.txt").write_text("from host\n")
    mounts = (Mount(MountKind.BIND, "/data", str(vol), readonly=True),
              Mount(MountKind.TMPFS, "/scratch", tmpfs_size=1 << 20))
    code, out = ct.run("sh", "-c", "cat /data/in.txt; touch /data/x || echo ro; "
                       "touch /scratch/y && echo tmp-ok", mounts=mounts)
    assert code == 0
    assert "from host" in out and "ro" in out and "tmp-ok" in out
    assert not (vol / "x").exists()


# ---- limits ----------------------------------------------------------------------------


def test_memory_limit_oom_kill(ct: Containers) -> None:
    code, _ = ct.run("sh", "-c", "tail /dev/zero",
                     resources=Resources(memory_bytes=32 << 20))
    state = ct.rt.state(ct.bundles[0])
    assert code == 137
    assert state.oom_killed


def test_pids_limit(ct: Containers) -> None:
    code, out = ct.run("sh", "-c", "for i in $(seq 20); do sleep 5 & done; echo done",
                       resources=Resources(pids_limit=10))
    assert "can't fork" in out or "Resource temporarily unavailable" in out


def test_cpu_quota_and_shares_are_written(ct: Containers) -> None:
    spec = ct.spec("sleep", "30", resources=Resources(cpus=0.5, cpu_shares=512))
    ct.rt.create(spec)
    cpu = next(d for d in ct.rt.driver.dirs(f"{CGROUP_PARENT}/{spec.id}") if "cpu" in d)
    if ct.rt.driver.version == 1:
        assert Path(cpu, "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert Path(cpu, "cpu.shares").read_text().strip() == "512"
    else:
        assert Path(cpu, "cpu.max").read_text().split() == ["50000", "100000"]
    ct.rt.delete(spec.bundle_dir)
    assert not any(os.path.exists(d) for d in ct.rt.driver.dirs(f"{CGROUP_PARENT}/{spec.id}"))


# ---- exec, signals, re-adoption --------------------------------------------------------


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_exec_joins_the_container(ct: Containers) -> None:
    spec = ct.spec("sh", "-c", "echo secret > /tmp/mark; exec sleep 30")
    ct.rt.create(spec)
    fds_before = sorted(os.listdir("/proc/self/fd"))
    p = ct.rt.exec(spec.bundle_dir, ProcessSpec(args=("sh", "-c", "ps; cat /tmp/mark; "
                                                       "hostname; grep -E 'CapEff|Seccomp:' "
                                                       "/proc/self/status; exit 3"),
                                                 env=("PATH=/bin",)), stdin=False)
    out = _read_all(p.stdout)
    assert select.select([p.status_fd], [], [], 10)[0]
    assert p.wait() == 3
    p.close()
    lines = out.splitlines()
    assert any(line.split()[:3] == ["1", "root", "sleep"] for line in lines)
    assert "secret" in lines and spec.hostname in lines
    assert "CapEff:\t00000000a80425fb" in lines and "Seccomp:\t2" in lines

    p = ct.rt.exec(spec.bundle_dir, ProcessSpec(args=("cat",), env=("PATH=/bin",)),
                   stdin=True)
    assert p.stdin is not None
    os.write(p.stdin, b"piped\n")
    os.close(p.stdin)
    p.stdin = None
    assert _read_all(p.stdout) == "piped\n"
    assert p.wait() == 0
    p.close()

    with pytest.raises(RuntimeFailure, match="executable file not found"):
        ct.rt.exec(spec.bundle_dir, ProcessSpec(args=("nosuch",)), stdin=False)
    assert sorted(os.listdir("/proc/self/fd")) == fds_before  # nothing leaked here


def test_kill_and_delete(ct: Containers) -> None:
    spec = ct.spec("sleep", "30")
    state = ct.rt.create(spec)
    assert state.status == "running" and state.pid > 0
    assert ct.rt.state(spec.bundle_dir).status == "running"
    ct.rt.kill(spec.bundle_dir, signal.SIGKILL)
    ct.wait(spec.bundle_dir)
    done = ct.rt.state(spec.bundle_dir)
    assert done.status == "exited" and done.exit_code == 137 and not done.oom_killed
    assert done.finished_at.endswith("Z")
    ct.rt.delete(spec.bundle_dir)
    ct.rt.delete(spec.bundle_dir)  # idempotent
    assert Path(spec.bundle_dir).is_dir()


DAEMON = textwrap.dedent("""
    import pickle, sys, time
    from pyswarm.worker.runtime.runtime import Runtime
    spec = pickle.loads(bytes.fromhex(sys.argv[1]))
    rt = Runtime(); rt.start()
    st = rt.create(spec)
    print(rt.zygote_pid, st.shim_pid, st.pid, flush=True)
    time.sleep(60)
""")


def test_containers_survive_the_daemon_and_are_readopted(ct: Containers) -> None:
    import pickle

    spec = ct.spec("sleep", "30")
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, pickle.dumps(spec).hex()],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        zygote, shim, init = map(int, daemon.stdout.readline().split())
    finally:
        daemon.kill()
        daemon.wait()
    # The zygote follows the daemon (PR_SET_PDEATHSIG); the shim and the container stay.
    for _ in range(200):
        if not os.path.exists(f"/proc/{zygote}") or \
                Path(f"/proc/{zygote}/stat").read_text().split(") ")[1][0] == "Z":
            break
        select.select([], [], [], 0.01)
    else:
        pytest.fail("the zygote outlived its daemon")
    os.kill(shim, 0)
    os.kill(init, 0)
    fresh = Runtime()
    state = fresh.state(spec.bundle_dir)
    assert (state.status, state.pid, state.shim_pid) == ("running", init, shim)
    fresh.kill(spec.bundle_dir, signal.SIGTERM)  # pid 1 has no handler: ignored
    assert fresh.state(spec.bundle_dir).status == "running"
    fresh.kill(spec.bundle_dir, signal.SIGKILL)
    ct.wait(spec.bundle_dir)
    assert (Path(spec.bundle_dir) / "exit.json").exists()
    assert fresh.state(spec.bundle_dir).exit_code == 137


# ---- logs ------------------------------------------------------------------------------


def test_json_file_logs(ct: Containers) -> None:
    code, _ = ct.run("sh", "-c", "echo out; echo err >&2; printf partial")
    assert code == 0
    lines = [json.loads(x) for x in
             (Path(ct.bundles[0]) / "container.log").read_text().splitlines()]
    got = {(rec["stream"], rec["log"]) for rec in lines}
    assert got == {("stdout", "out\n"), ("stderr", "err\n"), ("stdout", "partial")}
    assert all(rec["time"].endswith("Z") and len(rec["time"]) == 30 for rec in lines)


def test_the_log_exists_when_create_returns(ct: Containers) -> None:
    # `run --rm` opens the log right after create; the container may be finished and its
    # bundle removed before the reader's next poll, so the file must be there already.
    spec = ct.spec("sh", "-c", "sleep 0.2; echo late")
    ct.rt.create(spec)
    path = Path(spec.bundle_dir) / "container.log"
    assert path.exists()
    with open(path, "rb") as early:
        ct.wait(spec.bundle_dir)
        path.unlink()  # what --rm does to the bundle
        assert json.loads(early.read())["log"] == "late\n"


def test_log_rotation(ct: Containers) -> None:
    code, _ = ct.run("sh", "-c", "for i in $(seq 100); do echo line $i; done",
                     log=LogConfig(max_size=500, max_files=3))
    assert code == 0
    b = Path(ct.bundles[0])
    assert {p.name for p in b.glob("container.log*")} == \
        {"container.log", "container.log.1", "container.log.2"}
    for p in b.glob("container.log*"):
        assert p.stat().st_size <= 500
    assert log_text(str(b)).splitlines()[-1] == "line 100"


# ---- failures leave nothing behind -----------------------------------------------------


def _zygote_children(rt: Runtime) -> str:
    pid = rt.zygote_pid
    return "".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))


@pytest.mark.parametrize(("process", "message"), [
    (ProcessSpec(args=("nosuch",), env=("PATH=/bin",)),
     'exec: "nosuch": executable file not found in $PATH'),
    (ProcessSpec(args=("true",), user="foo"), "unable to find user foo"),
    (ProcessSpec(args=("/bin/true",), cwd="/etc/passwd"), "chdir to cwd"),
])
def test_failed_create_leaves_nothing(ct: Containers, process: ProcessSpec,
                                      message: str) -> None:
    spec = ct.spec(process=process)
    with pytest.raises(RuntimeFailure) as err:
        ct.rt.create(spec)
    assert message in str(err.value)
    assert spec.bundle_dir not in Path("/proc/self/mountinfo").read_text()
    assert not any(os.path.exists(d) for d in ct.rt.driver.dirs(f"{CGROUP_PARENT}/{spec.id}"))
    assert _zygote_children(ct.rt).split() == []
    assert not (Path(spec.bundle_dir) / "state.json").exists()


def test_failed_cgroup_setup_leaves_nothing(ct: Containers) -> None:
    spec = ct.spec("sleep", "30", resources=Resources(pids_limit=-5))
    with pytest.raises(RuntimeFailure, match="cgroup set-up"):
        ct.rt.create(spec)
    assert not any(os.path.exists(d) for d in ct.rt.driver.dirs(f"{CGROUP_PARENT}/{spec.id}"))
    assert _zygote_children(ct.rt).split() == []


def test_many_layers_stack_top_first(ct: Containers, tmp_path: Path) -> None:
    layers = [str(ct.layer)]
    for i in range(70):  # ~9 KiB of absolute lowerdirs: needs the short form
        d = tmp_path / "layers" / f"{i:064x}"
        d.mkdir(parents=True)
        (d / "f").write_text(f"{i}\n")
        layers.append(str(d))
    code, out = ct.run("cat", "/f", layers=tuple(layers))
    assert (code, out) == (0, "69\n")


# ---- network modes ---------------------------------------------------------------------


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A network namespace kept alive by a bind mount, as worker/network prepares them."""
    path = tmp_path / "netns"
    path.touch()
    pid = os.fork()
    if pid == 0:
        try:
            sc.unshare(sc.CLONE_NEWNET)
            sc.mount("/proc/self/ns/net", str(path), None, sc.MS_BIND)
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    try:
        yield str(path)
    finally:
        sc.umount2(str(path), sc.MNT_DETACH)


def test_bridge_mode_joins_the_prepared_namespace(ct: Containers, netns: str) -> None:
    code, out = ct.run("readlink", "/proc/self/ns/net", network_mode=NetworkMode.BRIDGE,
                       netns_path=netns)
    assert (code, out) == (0, f"net:[{os.stat(netns).st_ino}]\n")


def test_host_mode_shares_the_hosts_namespace(ct: Containers) -> None:
    code, out = ct.run("readlink", "/proc/self/ns/net", network_mode=NetworkMode.HOST)
    assert (code, out) == (0, os.readlink("/proc/self/ns/net") + "\n")
