"""The default seccomp profile, compiled once with libseccomp (through ctypes).

Policy: allow by default and fail with EPERM the system calls that Docker's default profile
does not allow a container with default capabilities (kernel modules, mounts, namespaces,
keyrings, clocks, tracing, BPF, NUMA placement, obsolete calls...). Beyond that:
``clone`` asking for a new user namespace gets EPERM, and ``clone3`` gets ENOSYS so that
libc falls back to ``clone``, whose flags a filter can inspect (what Docker does).
Not replicated: Docker's argument filter on ``personality`` (it is left allowed), and the
allowances Docker makes when extra capabilities are added (we never add any).

The filter is compiled in the zygote at start (libseccomp's BPF exported into memory), so
each container only pays one prctl. Without libseccomp.so.2 there is no filter, as in Docker
on a kernel or libc without seccomp support.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

DENIED = (
    "mount", "umount", "umount2", "pivot_root",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "query_module", "get_kernel_syms", "reboot", "swapon", "swapoff", "acct",
    "add_key", "request_key", "keyctl", "bpf", "perf_event_open", "ptrace",
    "process_vm_readv", "process_vm_writev", "open_by_handle_at", "name_to_handle_at",
    "setns", "unshare", "clock_settime", "clock_adjtime", "settimeofday", "stime", "adjtimex",
    "iopl", "ioperm", "userfaultfd", "quotactl", "lookup_dcookie", "move_pages", "mbind",
    "set_mempolicy", "get_mempolicy", "kcmp", "uselib", "ustat", "sysfs", "vm86", "vm86old",
    "nfsservctl", "_sysctl", "syslog", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
)

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_MASKED_EQ = 7
_CLONE_NEWUSER = 0x10000000


def _act_errno(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def compile_default() -> bytes | None:
    """The default profile as raw classic BPF, or None when libseccomp is not installed."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        return None
    try:
        if platform.machine() == "x86_64":  # 32-bit and x32 binaries get the same rules
            for arch in (b"x86", b"x32"):
                token = lib.seccomp_arch_resolve_name(arch)
                if token:
                    lib.seccomp_arch_add(ctx, token)
        eperm = _act_errno(errno.EPERM)
        for name in DENIED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == -1:  # unknown to libseccomp
                continue
            ret = lib.seccomp_rule_add_array(ctx, eperm, nr, 0, None)
            if nr >= 0:  # negative: a call of another arch only; failing there is fine
                _check(ret, name)
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        cmp = _ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER)
        _check(lib.seccomp_rule_add_array(ctx, eperm, clone, 1, ctypes.byref(cmp)), "clone")
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            _check(lib.seccomp_rule_add_array(ctx, _act_errno(errno.ENOSYS), clone3, 0, None),
                   "clone3")
        fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _check(ret: int, what: str) -> None:
    if ret < 0:
        raise OSError(-ret, f"seccomp rule {what}: {os.strerror(-ret)}")
