"""The container's filesystem view, built inside its fresh mount namespace.

Everything here runs in the container's init before pivot_root, so every mount lives and dies
with the container's mount namespace: the host never sees them, and nothing is left mounted
when the container (or a failed start) goes away. Policy, as Docker's defaults:

- the root is an overlay of the image layers (top layer leftmost) under the bundle's
  ``upper/``; / is made rslave first so nothing propagates back to the host;
- /proc, /dev (tmpfs with null zero full random urandom tty), /dev/pts (own instance),
  /dev/shm (64 MiB), /dev/mqueue, /sys read-only;
- the user's bind and tmpfs mounts, then /etc/hosts, /etc/hostname, /etc/resolv.conf from the
  bundle (unless the user mounted over them);
- Docker's masked paths (/dev/null over files, a read-only tmpfs over directories) and
  read-only /proc paths;
- every path inside the rootfs is resolved with symlinks confined to the rootfs, so an image
  cannot point a mount at the host.
"""

from __future__ import annotations

import os
import stat

from . import syscalls as sc
from .spec import ContainerSpec, Mount, MountKind

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
ETC_FILES = ("hosts", "hostname", "resolv.conf")

_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
              ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))
_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
_PAGE = 4096


def secure_join(root: str, path: str) -> str:
    """`root` + `path` with every symlink on the way resolved as if `root` were /."""
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        cur = os.path.join(root, *done, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(40, f"too many levels of symbolic links in {path}")
            target = os.readlink(cur)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
        else:
            done.append(part)
    return os.path.join(root, *done)


def overlay_options(layers: tuple[str, ...], bundle: str) -> tuple[str, bool]:
    """(mount data, short form?). Lower layers go top-first. When the absolute form would not
    fit in a page (or a path holds an option separator), the short form names the layers
    through symlinks <bundle>/l/<n> and the upper and work dirs relative to the bundle (the
    mount resolves them against the caller's cwd, so the caller chdirs into the bundle
    first), as Docker's overlay2 driver does."""
    data = (f"lowerdir={':'.join(reversed(layers))},"
            f"upperdir={bundle}/upper,workdir={bundle}/work")
    plain = not any(c in p for p in (*layers, bundle) for c in ",:")  # option separators
    if len(data) < _PAGE and plain:
        return data, False
    lower = ":".join(f"l/{i:x}" for i in reversed(range(len(layers))))
    return f"lowerdir={lower},upperdir=upper,workdir=work", True


def _link_layers(layers: tuple[str, ...], bundle: str) -> None:
    links = os.path.join(bundle, "l")
    if os.path.isdir(links):
        for name in os.listdir(links):
            os.unlink(os.path.join(links, name))
    else:
        os.mkdir(links)
    for i, layer in enumerate(layers):
        os.symlink(layer, os.path.join(links, f"{i:x}"))


def _mkdir_p(path: str) -> None:
    os.makedirs(path, 0o755, exist_ok=True)


def _touch(path: str) -> None:
    if not os.path.lexists(path):
        _mkdir_p(os.path.dirname(path))
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _mount_dev(rootfs: str) -> None:
    dev = secure_join(rootfs, "/dev")
    _mkdir_p(dev)
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, "mode=755,size=65536k")
    for name, major, minor in _DEVICES:
        os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in _DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    for d, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o755)):
        os.mkdir(f"{dev}/{d}", mode)
    sc.mount("devpts", f"{dev}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,gid=5")
    sc.mount("shm", f"{dev}/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    try:
        sc.mount("mqueue", f"{dev}/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)
    except OSError:
        pass  # optional, as in Docker on kernels without POSIX message queues


def _user_mount(rootfs: str, m: Mount) -> None:
    target = secure_join(rootfs, m.target)
    if m.kind is MountKind.TMPFS:
        _mkdir_p(target)
        data = "mode=1777" + (f",size={m.tmpfs_size}" if m.tmpfs_size else "")
        flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if m.readonly else 0)
        sc.mount("tmpfs", target, "tmpfs", flags, data)
        return
    if os.path.isdir(m.source):
        _mkdir_p(target)
    else:
        _touch(target)
    sc.mount(m.source, target, None, sc.MS_BIND | sc.MS_REC)
    if m.readonly:
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def _mask_and_protect(rootfs: str) -> None:
    null = f"{rootfs}/dev/null"
    for p in MASKED_PATHS:
        target = rootfs + p
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount(null, target, None, sc.MS_BIND)
    for p in READONLY_PATHS:
        target = rootfs + p
        if not os.path.lexists(target):
            continue
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
                 | _NOSUID_NODEV_NOEXEC)


def setup(spec: ContainerSpec, lower_fallback: str) -> None:
    """Build the rootfs at <bundle>/rootfs and pivot into it. Runs in the container's init,
    already in its own mount namespace. `lower_fallback` is an empty folder used as the
    only lower layer when the spec has none."""
    b = spec.bundle_dir
    rootfs = f"{b}/rootfs"
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    layers = spec.layers or (lower_fallback,)
    data, short = overlay_options(layers, b)
    if short:
        _link_layers(layers, b)
        os.chdir(b)
    sc.mount("overlay", rootfs, "overlay", 0, data)

    proc = secure_join(rootfs, "/proc")
    _mkdir_p(proc)
    sc.mount("proc", proc, "proc", _NOSUID_NODEV_NOEXEC)
    _mount_dev(rootfs)
    sys_ = secure_join(rootfs, "/sys")
    _mkdir_p(sys_)
    sc.mount("sysfs", sys_, "sysfs", _NOSUID_NODEV_NOEXEC | sc.MS_RDONLY)

    for m in spec.mounts:
        _user_mount(rootfs, m)
    user_targets = {os.path.normpath(m.target) for m in spec.mounts}
    for name in ETC_FILES:
        if f"/etc/{name}" in user_targets:
            continue
        target = secure_join(rootfs, f"/etc/{name}")
        _touch(target)
        sc.mount(f"{b}/{name}", target, None, sc.MS_BIND)
    _mask_and_protect(rootfs)

    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def etc_files(spec: ContainerSpec, host_resolv_conf: str) -> dict[str, str]:
    """Contents of the bundle's hosts, hostname and resolv.conf.

    resolv.conf: the spec's DNS servers, or else the host's file without loopback
    nameservers (unreachable from a container), or else Google's, as Docker does."""
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
             "ff02::2\tip6-allrouters", *spec.extra_hosts]
    if spec.dns_servers:
        resolv = [f"nameserver {s}" for s in spec.dns_servers]
    else:
        resolv = [ln for ln in host_resolv_conf.splitlines()
                  if not (ln.startswith("nameserver") and
                          (ln.split()[1:2] or [""])[0].startswith(("127.", "::1")))]
        if not any(ln.startswith("nameserver") for ln in resolv):
            resolv += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return {"hosts": "\n".join(hosts) + "\n", "hostname": spec.hostname + "\n",
            "resolv.conf": "\n".join(resolv) + "\n"}
