"""The engine's record of each container, persisted as ``<bundle>/config.json``.

The record holds what was asked and resolved at create time, and the last observed state.
The runtime's files in the same bundle (``state.json``, ``exit.json``) are the truth about
the process; the record is refreshed from them, so a daemon restart loses nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class PortRecord:
    host_ip: str
    host_port: int
    container_port: int
    proto: str


@dataclass
class MountRecord:
    type: str  # "bind" | "volume" | "tmpfs"
    source: str  # host path, or the volume's name
    destination: str
    read_only: bool = False
    anonymous: bool = False  # a volume made for this container alone (`-v /data`)


@dataclass
class OverlayRecord:
    """The container's interface on an overlay network (cluster tasks)."""

    network_id: str
    address: str  # CIDR
    ifname: str  # eth1, eth2, ...


@dataclass
class ContainerRecord:
    id: str
    name: str
    image: str
    image_id: str
    created: str
    command: list[str]
    env: list[str]
    workdir: str
    user: str
    hostname: str
    network: str
    memory_bytes: int = 0
    cpus: float = 0.0
    pids_limit: int = 0
    cpu_shares: int = 0
    stop_signal: int = 15
    auto_remove: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[PortRecord] = field(default_factory=list)
    mounts: list[MountRecord] = field(default_factory=list)
    ip_address: str = ""
    overlays: list[OverlayRecord] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)  # "host:ip", as asked
    log_max_size: int = 0
    log_max_files: int = 0
    # Observed.
    state: str = "created"  # created | running | exited | removing
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    started_at: str = ""
    finished_at: str = ""
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["ports"] = [PortRecord(**p) for p in values.get("ports", [])]
        values["mounts"] = [MountRecord(**m) for m in values.get("mounts", [])]
        values["overlays"] = [OverlayRecord(**o) for o in values.get("overlays", [])]
        return cls(**values)

    def save(self, bundle: Path) -> None:
        """Atomically: a daemon crash leaves the old record or the new one, never half of one.

        No fsync: the record must survive the daemon, not the machine. After a power loss
        no container survives either, and an fsync costs more than the rest of a start.
        """
        tmp = bundle / "config.json.tmp"
        tmp.write_text(self.to_json())
        os.replace(tmp, bundle / "config.json")

    @classmethod
    def load(cls, bundle: Path) -> ContainerRecord:
        return cls.from_dict(json.loads((bundle / "config.json").read_text()))
