"""What the engine asks the runtime to run: a frozen, fully resolved container spec.

The engine resolves everything user-facing (image names, volume names, port strings, sizes)
before it builds one of these; the runtime only turns it into kernel objects. Nothing here is
parsed again below this line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class NetworkMode(str, Enum):  # noqa: UP042 (str() stays "NetworkMode.NONE")
    NONE = "none"  # a fresh network namespace with only `lo` (up)
    HOST = "host"  # the node's own network namespace
    BRIDGE = "bridge"  # join the prepared namespace at ContainerSpec.netns_path


class MountKind(str, Enum):  # noqa: UP042
    BIND = "bind"  # source is a host path (named volumes arrive here already resolved)
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class Mount:
    kind: MountKind
    target: str  # absolute path inside the container
    source: str = ""  # host path for BIND
    readonly: bool = False
    tmpfs_size: int | None = None  # bytes, TMPFS only


@dataclass(frozen=True)
class Resources:
    memory_bytes: int | None = None  # hard limit; swap limited to the same (no extra swap)
    cpus: float | None = None  # CFS quota: cpus * period
    cpu_shares: int | None = None  # relative weight (Docker's 1024 scale)
    pids_limit: int | None = None


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]  # argv; args[0] looked up on the container's PATH if not absolute
    env: tuple[str, ...] = ()  # "K=V"
    cwd: str = "/"
    user: str = ""  # "", "uid", "uid:gid", "name", "name:group" (resolved in the rootfs)


@dataclass(frozen=True)
class LogConfig:
    max_size: int = 10 * 1024 * 1024  # bytes per file before rotation; 0 = never rotate
    max_files: int = 1  # files kept in all, the current one included (Docker: max-file)


@dataclass(frozen=True)
class ContainerSpec:
    id: str  # 64 hex chars
    hostname: str
    # Image layer folders, bottom-most first (the base image's first layer first). The
    # runtime stacks them as overlayfs lowerdirs under a fresh writable layer.
    layers: tuple[str, ...]
    # The container's own folder: the runtime keeps its upper/work dirs, rootfs mount point,
    # log files and state files here. Exists before create() is called.
    bundle_dir: str
    process: ProcessSpec
    mounts: tuple[Mount, ...] = ()
    resources: Resources = field(default_factory=Resources)
    network_mode: NetworkMode = NetworkMode.NONE
    netns_path: str = ""  # for BRIDGE: a bind-mounted network namespace to join
    log: LogConfig = field(default_factory=LogConfig)
    stop_signal: int = 15
    # Extra /etc/hosts lines ("IP NAME"); /etc/hosts, /etc/hostname and /etc/resolv.conf
    # are always written by the runtime into the bundle and bind-mounted.
    extra_hosts: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    # Labels for the cgroup path and reporting; the runtime does not interpret them.
    cgroup_parent: str = "pyswarm"
