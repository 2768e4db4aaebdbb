"""Where a node keeps its state, and the knobs that let several engines share one machine.

One engine owns one state folder (``PYSWARM_ROOT``, like ``/var/lib/docker``) and one run
folder (``PYSWARM_RUN``, like ``/run/docker``) holding its API socket. Tests and the lab
give each engine its own pair, its own bridge and its own nftables table, so that they never
touch the user's engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/var/lib/pyswarm"
DEFAULT_RUN = "/run/pyswarm"
DEFAULT_BRIDGE = "psw0"
# Clear of Docker's 172.17.0.0/16 so both can run on one host.
DEFAULT_SUBNET = "10.213.0.0/16"
DEFAULT_NFT_TABLE = "pyswarm"
# Containers' cgroups live under <hierarchy>/<cgroup parent>/<id>; lab nodes each take their own.
DEFAULT_CGROUP_PARENT = "pyswarm"


@dataclass(frozen=True)
class EngineConfig:
    root: Path
    run_dir: Path
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    nft_table: str = DEFAULT_NFT_TABLE
    cgroup_parent: str = DEFAULT_CGROUP_PARENT
    # Where the node's service DNS forwards names that are not the cluster's: "" = the
    # host's /etc/resolv.conf, "none" = nowhere (SERVFAIL at once: labs and tests, whose
    # nodes must not send queries off the machine), else "IP[,IP...]".
    dns_upstreams: str = ""

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "pyswarm.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pyswarm.pid"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    @property
    def network_dir(self) -> Path:
        return self.run_dir / "network"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EngineConfig:
        e = os.environ if env is None else env
        return cls(
            root=Path(e.get("PYSWARM_ROOT", DEFAULT_ROOT)),
            run_dir=Path(e.get("PYSWARM_RUN", DEFAULT_RUN)),
            bridge=e.get("PYSWARM_BRIDGE", DEFAULT_BRIDGE),
            subnet=e.get("PYSWARM_SUBNET", DEFAULT_SUBNET),
            nft_table=e.get("PYSWARM_NFT_TABLE", DEFAULT_NFT_TABLE),
            cgroup_parent=e.get("PYSWARM_CGROUP_PARENT", DEFAULT_CGROUP_PARENT),
            dns_upstreams=e.get("PYSWARM_DNS_UPSTREAMS", ""),
        )
