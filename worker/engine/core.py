"""The node engine: containers, images and volumes on this node (what dockerd is to docker).

The engine resolves what a user asked for (image references, ``-p``, ``-v``, sizes) into a
frozen ``ContainerSpec``, prepares the network, hands the spec to the runtime and keeps a
record of the container. It is synchronous and thread-safe; ``service.py`` runs it from the
daemon's asyncio loop and watches for exits.

Policy:
- Creating a container is all or nothing: every step registers its undo, and a failure at
  any step undoes the steps before it (veth, nftables rules, new volumes, the bundle).
- When a container exits its network and cgroup go at once (published ports stop answering
  right away); its writable layer and logs stay until ``rm``.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import ipaddress
import os
import re
import secrets
import shutil
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyswarm.common.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from pyswarm.common.paths import EngineConfig
from pyswarm.common.units import parse_signal, parse_size
from pyswarm.proto import engine_pb2 as pb
from pyswarm.worker.engine.names import generate_name, validate_name
from pyswarm.worker.engine.records import (
    ContainerRecord,
    MountRecord,
    OverlayRecord,
    PortRecord,
)
from pyswarm.worker.engine.volumes import VolumeStore, parse_volume_arg
from pyswarm.worker.images.store import Image, ImageStore
from pyswarm.worker.network.node import NodeNetwork
from pyswarm.worker.network.ports import parse_publish
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

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_MEMORY = 6 * 1024 * 1024  # Docker's floor: below it a container cannot even start
_ENV_RE = re.compile(r"^[^=\s][^=]*=", re.S)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Engine:
    def __init__(
        self,
        cfg: EngineConfig,
        runtime: Runtime,
        images: ImageStore,
        network: NodeNetwork,
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.images = images
        self.network = network
        self.volumes = VolumeStore(cfg.volumes_dir)
        self._lock = threading.RLock()
        self._records: dict[str, ContainerRecord] = {}
        cfg.containers_dir.mkdir(parents=True, exist_ok=True)

    # ---- records -------------------------------------------------------------------------

    def bundle(self, cid: str) -> Path:
        return self.cfg.containers_dir / cid

    def restore(self) -> list[str]:
        """Re-adopt every container recorded on disk; returns the ids still running.

        Containers keep running across a daemon restart (their shims own them); the ones
        that exited meanwhile are finished off here as if we had seen them exit.
        """
        running = []
        for config in sorted(self.cfg.containers_dir.glob("*/config.json")):
            bundle = config.parent
            try:
                record = ContainerRecord.load(bundle)
            except (ValueError, TypeError, OSError):
                continue  # a bundle torn by a crash during create: nothing ran from it
            self._records[record.id] = record
            if record.state == "running":
                if self.runtime.state(str(bundle)).status == "running":
                    running.append(record.id)
                else:
                    self.on_exit(record.id)
        return running

    def resolve(self, ref: str) -> ContainerRecord:
        """By full id, name, or unique id prefix (Docker's order)."""
        with self._lock:
            if ref in self._records:
                return self._records[ref]
            for record in self._records.values():
                if record.name == ref.removeprefix("/"):
                    return record
            matches = [r for cid, r in self._records.items() if ref and cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple containers match the prefix {ref}: be more precise")
        raise NotFound(f"No such container: {ref}")

    def list(self, all: bool = False) -> list[ContainerRecord]:
        with self._lock:
            records = list(self._records.values())
        records.sort(key=lambda r: r.created, reverse=True)
        return [r for r in records if all or r.state == "running"]

    def _save(self, record: ContainerRecord) -> None:
        record.save(self.bundle(record.id))

    # ---- create --------------------------------------------------------------------------

    def create(self, req: pb.CreateContainerRequest) -> ContainerRecord:
        """Create and start a container; all or nothing."""
        image = self.images.get(req.image)
        with contextlib.ExitStack() as undo:
            record, spec = self._reserve(req, image, undo)
            record.save(self.bundle(record.id))
            try:
                state = self.runtime.create(spec)
            except RuntimeFailure:
                self.runtime.delete(spec.bundle_dir)
                raise
            record.state, record.pid, record.started_at = "running", state.pid, state.started_at
            self._save(record)
            undo.pop_all()
        return record

    def _reserve(
        self, req: pb.CreateContainerRequest, image: Image, undo: contextlib.ExitStack
    ) -> tuple[ContainerRecord, ContainerSpec]:
        """Validate the request and claim the name, folder, volumes and network."""
        cid = secrets.token_hex(32)
        process = self._process(req, image)
        resources = self._resources(req)
        network = req.network or "bridge"
        if network not in ("bridge", "none", "host"):
            raise InvalidArgument(
                f'invalid --network "{network}": this node has "bridge", "none" and "host"'
            )
        bindings = [parse_publish(p) for p in req.publish]
        if bindings and network != "bridge":
            raise InvalidArgument(f"published ports need the bridge network, not {network}")
        if req.overlays and network != "bridge":
            raise InvalidArgument(f"overlay networks need the bridge network, not {network}")
        dns_servers = [_check_dns(s) for s in req.dns]
        extra_hosts = [_host_line(h) for h in req.extra_hosts]
        stop_signal = parse_signal(req.stop_signal) if req.stop_signal else signal.SIGTERM
        log = LogConfig(
            max_size=req.log_max_size if req.log_max_size > 0 else LogConfig.max_size,
            max_files=req.log_max_files if req.log_max_files > 0 else LogConfig.max_files,
        )
        for key in req.labels:
            if not key:
                raise InvalidArgument("a label needs a key")

        with self._lock:
            taken = {r.name for r in self._records.values()}
            if req.name:
                name = validate_name(req.name)
                if name in taken:
                    owner = next(r for r in self._records.values() if r.name == name)
                    raise Conflict(
                        f'the container name "/{name}" is already in use by container '
                        f'"{owner.id}". Remove (or rename) that container to reuse the name.'
                    )
            else:
                name = generate_name(taken)
            # Hold the name while the rest is set up: a placeholder record.
            record = ContainerRecord(
                id=cid, name=name, image=req.image, image_id=image.id, created=now(),
                command=list(process.args), env=list(process.env), workdir=process.cwd,
                user=process.user, hostname=req.hostname or cid[:12], network=network,
                memory_bytes=resources.memory_bytes or 0, cpus=resources.cpus or 0.0,
                pids_limit=resources.pids_limit or 0, cpu_shares=resources.cpu_shares or 0,
                stop_signal=int(stop_signal), auto_remove=req.auto_remove,
                labels=dict(req.labels), log_max_size=log.max_size,
                log_max_files=log.max_files, state="creating", dns=list(dns_servers),
                extra_hosts=list(req.extra_hosts),
            )
            self._records[cid] = record
        undo.callback(self._forget, cid)

        bundle = self.bundle(cid)
        bundle.mkdir(parents=True)
        undo.callback(shutil.rmtree, bundle, True)

        mounts = self._mounts(req, record, undo)

        netns_path = ""
        if network == "bridge":
            attachment = self.network.attach(cid)
            undo.callback(self.network.detach, cid)
            record.ip_address = attachment.ip
            netns_path = attachment.netns_path
            if bindings:
                published = self.network.publish(cid, attachment.ip, bindings)
                record.ports = [
                    PortRecord(b.host_ip, b.host_port, b.container_port, b.proto)
                    for b in published
                ]
            if req.overlays:
                endpoints = self.network.attach_overlays(
                    cid, [(o.network_id, o.address) for o in req.overlays])
                record.overlays = [OverlayRecord(e.network_id, e.address, e.ifname)
                                   for e in endpoints]
        spec = ContainerSpec(
            id=cid,
            hostname=record.hostname,
            layers=tuple(image.layer_dirs),
            bundle_dir=str(bundle),
            process=ProcessSpec(
                args=process.args,
                env=(*process.env, f"HOSTNAME={record.hostname}"),
                cwd=process.cwd,
                user=process.user,
            ),
            mounts=mounts,
            resources=resources,
            network_mode=NetworkMode(network),
            netns_path=netns_path,
            log=log,
            stop_signal=int(stop_signal),
            extra_hosts=tuple(extra_hosts),
            dns_servers=tuple(dns_servers),
            cgroup_parent=self.cfg.cgroup_parent,
        )
        return record, spec

    def _forget(self, cid: str) -> None:
        with self._lock:
            self._records.pop(cid, None)

    @staticmethod
    def _process(req: pb.CreateContainerRequest, image: Image) -> ProcessSpec:
        """Docker's rules for argv, env, workdir and user over the image's config."""
        config = image.config.get("config") or {}
        image_entrypoint = config.get("Entrypoint") or []
        entrypoint = list(req.entrypoint) if req.entrypoint_set else image_entrypoint
        if req.cmd:
            cmd = list(req.cmd)
        elif req.entrypoint_set:
            cmd = []  # a new entrypoint resets the image's Cmd, as in Docker
        else:
            cmd = config.get("Cmd") or []
        args = tuple(entrypoint + cmd)
        if not args:
            raise InvalidArgument("no command specified: the image has no Cmd and none was given")
        env: dict[str, str] = {}
        for item in [*(config.get("Env") or []), *req.env]:
            if not _ENV_RE.match(item):
                raise InvalidArgument(f'invalid environment variable "{item}": expected KEY=VALUE')
            key, _, value = item.partition("=")
            env[key] = value
        env.setdefault("PATH", DEFAULT_PATH.split("=", 1)[1])
        workdir = req.workdir or config.get("WorkingDir") or "/"
        if not workdir.startswith("/"):
            raise InvalidArgument(f'invalid working directory "{workdir}": must be absolute')
        return ProcessSpec(
            args=args,
            env=tuple(f"{k}={v}" for k, v in env.items()),
            cwd=workdir,
            user=req.user or config.get("User") or "",
        )

    @staticmethod
    def _resources(req: pb.CreateContainerRequest) -> Resources:
        if req.memory_bytes < 0 or 0 < req.memory_bytes < MIN_MEMORY:
            raise InvalidArgument(
                f"invalid memory limit {req.memory_bytes} bytes: the minimum is 6MB"
            )
        ncpu = os.cpu_count() or 1
        if req.cpus < 0 or req.cpus > ncpu:
            raise InvalidArgument(
                f"invalid --cpus {req.cpus}: must be between 0.01 and {ncpu} (the CPUs here)"
            )
        if 0 < req.cpus < 0.01:
            raise InvalidArgument(f"invalid --cpus {req.cpus}: the minimum is 0.01")
        if req.pids_limit < 0:
            raise InvalidArgument(f"invalid --pids-limit {req.pids_limit}: must be positive")
        if req.cpu_shares < 0:
            raise InvalidArgument(f"invalid --cpu-shares {req.cpu_shares}")
        return Resources(
            memory_bytes=req.memory_bytes or None,
            cpus=req.cpus or None,
            cpu_shares=req.cpu_shares or None,
            pids_limit=req.pids_limit or None,
        )

    def _mounts(
        self, req: pb.CreateContainerRequest, record: ContainerRecord, undo: contextlib.ExitStack
    ) -> tuple[Mount, ...]:
        mounts: list[Mount] = []
        destinations: set[str] = set()

        def claim(dest: str) -> None:
            if dest in destinations:
                raise InvalidArgument(f"duplicate mount point: {dest}")
            destinations.add(dest)

        for text in req.volumes:
            arg = parse_volume_arg(text)
            claim(arg.destination)
            if arg.kind == "bind":
                source = Path(arg.source)
                if not source.exists():
                    source.mkdir(parents=True)  # docker -v creates a missing host folder
                mounts.append(Mount(MountKind.BIND, arg.destination, str(source), arg.read_only))
                record.mounts.append(
                    MountRecord("bind", str(source), arg.destination, arg.read_only)
                )
                continue
            volume, created = self.volumes.create(arg.source)
            if created:
                undo.callback(self.volumes.remove, volume.name, [], True)
            mounts.append(
                Mount(MountKind.BIND, arg.destination, str(volume.mountpoint), arg.read_only)
            )
            record.mounts.append(
                MountRecord("volume", volume.name, arg.destination, arg.read_only,
                            anonymous=not arg.source)
            )
        for text in req.tmpfs:
            dest, _, options = text.partition(":")
            if not dest.startswith("/"):
                raise InvalidArgument(f'invalid --tmpfs "{text}": the path must be absolute')
            claim(dest)
            size = None
            for option in filter(None, options.split(",")):
                key, _, value = option.partition("=")
                if key != "size":
                    raise InvalidArgument(f'invalid --tmpfs "{text}": unknown option "{key}"')
                size = parse_size(value, what="tmpfs size")
            mounts.append(Mount(MountKind.TMPFS, dest, tmpfs_size=size))
            record.mounts.append(MountRecord("tmpfs", "tmpfs", dest))
        return tuple(mounts)

    # ---- lifecycle -----------------------------------------------------------------------

    def shim_pidfd(self, cid: str) -> int | None:
        return self.runtime.shim_pidfd(str(self.bundle(cid)))

    def on_exit(self, cid: str) -> ContainerRecord | None:
        """The container's process has ended: record how, release its network and cgroup.

        Returns the record, or None if it was removed (``--rm``)."""
        with self._lock:
            record = self._records.get(cid)
        if record is None or record.state == "exited":
            return record
        bundle = self.bundle(cid)
        state = self.runtime.state(str(bundle))
        record.state = "exited"
        record.pid = 0
        record.exit_code = state.exit_code if state.exit_code is not None else 255
        record.oom_killed = state.oom_killed
        record.finished_at = state.finished_at or now()
        record.error = state.error
        if record.auto_remove:
            self.remove(cid, force=True, volumes=True)  # releases cgroup and network too
            return None
        self.runtime.delete(str(bundle))
        if record.network == "bridge":
            self.network.detach(cid)
        self._save(record)
        return record

    def kill(self, ref: str, sig: int) -> ContainerRecord:
        record = self.resolve(ref)
        if record.state != "running":
            raise Conflict(f"container {record.name} is not running")
        self.runtime.kill(str(self.bundle(record.id)), sig)
        return record

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        record = self.resolve(ref)
        bundle = self.bundle(record.id)
        if record.state == "running":
            if not force:
                raise Conflict(
                    f"you cannot remove a running container {record.id[:12]}. "
                    f"Stop the container before attempting removal or force remove"
                )
        # delete() kills what still runs and releases mounts and cgroups.
        self.runtime.delete(str(bundle))
        if record.network == "bridge":
            self.network.detach(record.id)
        with self._lock:
            self._records.pop(record.id, None)
        if volumes:
            for mount in record.mounts:
                if mount.anonymous:
                    with contextlib.suppress(NotFound):
                        self.volumes.remove(mount.source, [], force=True)
        shutil.rmtree(bundle, ignore_errors=True)
        return record.id

    def volume_users(self, name: str) -> builtins.list[str]:
        with self._lock:
            return [
                r.id for r in self._records.values()
                if any(m.type == "volume" and m.source == name for m in r.mounts)
            ]

    def image_in_use(self, image_id: str) -> bool:
        with self._lock:
            return any(r.image_id == image_id for r in self._records.values())

    def commit(self, req: pb.CommitRequest) -> Image:
        record = self.resolve(req.container)
        parent = self.images.get(record.image_id)
        config = apply_changes(parent.config.get("config") or {}, list(req.changes))
        return self.images.commit(
            parent,
            self.bundle(record.id) / "upper",
            config=config,
            comment=req.comment,
            ref=req.ref or None,
            created_by=f"commit {record.name}" + (f" by {req.author}" if req.author else ""),
        )

    def exec_process(self, start: pb.ExecStart) -> tuple[ContainerRecord, ProcessSpec]:
        record = self.resolve(start.container)
        if record.state != "running":
            raise Conflict(f"container {record.name} is not running")
        if not start.args:
            raise InvalidArgument("exec needs a command")
        env = dict(e.split("=", 1) for e in record.env if "=" in e)
        for item in start.env:
            if not _ENV_RE.match(item):
                raise InvalidArgument(f'invalid environment variable "{item}": expected KEY=VALUE')
            key, _, value = item.partition("=")
            env[key] = value
        return record, ProcessSpec(
            args=tuple(start.args),
            env=tuple(f"{k}={v}" for k, v in env.items()),
            cwd=start.workdir or record.workdir,
            user=start.user or record.user,
        )

def _check_dns(server: str) -> str:
    try:
        return str(ipaddress.ip_address(server))
    except ValueError:
        raise InvalidArgument(f'invalid dns server "{server}": not an IP address') from None


def _host_line(entry: str) -> str:
    """An extra_hosts entry "host:ip" (Docker's --add-host) as an /etc/hosts line."""
    host, sep, ip = entry.partition(":")
    if not sep or not host or any(c.isspace() for c in host):
        raise InvalidArgument(f'invalid extra_hosts entry "{entry}": expected host:ip')
    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise InvalidArgument(f'invalid extra_hosts entry "{entry}": "{ip}" is not an IP '
                              f"address") from None
    return f"{address}\t{host}"


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """``commit -c``: Dockerfile instructions that change only the config (CMD, ENV, ...)
    applied to a copy of an image config's "config" section."""
    from pyswarm.worker.images import dockerfile as df

    result = copy.deepcopy(config)
    for change in changes:
        try:
            instructions = df.parse(change)
        except InvalidArgument as exc:
            raise InvalidArgument(f'invalid change "{change}": {exc}') from None
        for inst in instructions:
            if inst.cmd not in df.CONFIG_ONLY:
                raise InvalidArgument(
                    f'invalid change "{change}": {inst.cmd} cannot be applied by commit '
                    f"(only {', '.join(sorted(df.CONFIG_ONLY))})"
                )
            env = df.substitution_env(result, {})
            df.apply_config(result, inst, env)
    return result
