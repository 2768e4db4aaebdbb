"""The last steps before a container process runs, shared by a container's init and by exec.

Called once the process stands in the container's namespaces and root. Policy, in order:
user and groups from the container's /etc files; the bounding set cut to Docker's 14
default capabilities; setgroups/setgid/setuid keeping those capabilities (KEEPCAPS) and
making them permitted and effective again, inheritable and ambient empty (as Docker since
20.10.14, CVE-2022-24769: a non-root user then runs with no capabilities after execve, a
root user with the 14); no_new_privs; the seccomp filter; every fd but 0, 1, 2 closed;
SIGPIPE/SIGXFSZ/SIGINT back to their defaults (Python and the zygote ignore them); umask
022; execve with args[0] looked up on the container's PATH. Any failure raises ExecError
with the text the user sees.
"""

from __future__ import annotations

import os
import signal

from . import syscalls as sc
from .spec import ProcessSpec
from .users import resolve

# CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
# SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
DEFAULT_CAPS = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31)
DEFAULT_CAP_MASK = sum(1 << c for c in DEFAULT_CAPS)  # 0xa80425fb
ABORTED = "start aborted by the shim"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExecError(Exception):
    """A failure the user should read as is."""


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def build_env(env: tuple[str, ...], home: str) -> dict[str, str]:
    """The process environment: the spec's, plus PATH and HOME when it lacks them."""
    out: dict[str, str] = {}
    for kv in env:
        k, _, v = kv.partition("=")
        out[k] = v
    out.setdefault("PATH", DEFAULT_PATH)
    out.setdefault("HOME", home)
    return out


def look_path(name: str, path: str) -> str:
    """Go's exec.LookPath, as runc uses it, with Docker's error text."""
    if "/" in name:
        return name
    for d in path.split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ExecError(f'exec: "{name}": executable file not found in $PATH')


def _cwd_error(cwd: str, e: OSError) -> ExecError:
    reason = "not a directory" if e.errno == 17 else (e.strerror or str(e)).lower()
    return ExecError(f'chdir to cwd ("{cwd}") set in config.json failed: {reason}')


def _cap_last() -> int:
    try:
        return int(_read_text("/proc/sys/kernel/cap_last_cap"))
    except ValueError:
        return 40


def exec_process(process: ProcessSpec, seccomp_bpf: bytes | None, *, error_fd: int,
                 make_cwd: bool, go_fd: int | None = None, cap_last: int | None = None
                 ) -> None:
    """Become `process` (never returns on success). `error_fd` (close-on-exec) stays open
    so that a failing execve can still be reported through it. With `go_fd`, wait for one
    byte on it before the execve (EOF instead means: give up)."""
    if not process.args:
        raise ExecError("no command given")
    try:
        user = resolve(process.user, _read_text("/etc/passwd"), _read_text("/etc/group"))
    except LookupError as e:
        raise ExecError(str(e)) from None
    env = build_env(process.env, user.home)
    if make_cwd:  # Docker creates a missing working directory
        try:
            os.makedirs(process.cwd, 0o755, exist_ok=True)
        except OSError as e:
            raise _cwd_error(process.cwd, e) from None

    last = _cap_last() if cap_last is None else cap_last
    for cap in range(last + 1):
        if cap not in DEFAULT_CAPS:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    sc.capset(DEFAULT_CAP_MASK, DEFAULT_CAP_MASK, 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    try:
        os.chdir(process.cwd)
    except OSError as e:
        raise _cwd_error(process.cwd, e) from None
    path = look_path(process.args[0], env["PATH"])
    if seccomp_bpf:
        sc.seccomp_set_filter(seccomp_bpf)
    if go_fd is not None and not os.read(go_fd, 1):
        raise ExecError(ABORTED)
    os.closerange(3, error_fd)
    os.closerange(error_fd + 1, 1 << 20)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    os.umask(0o022)
    try:
        os.execve(path, list(process.args), env)
    except OSError as e:
        raise ExecError(f'exec: "{process.args[0]}": {(e.strerror or str(e)).lower()}') from None
