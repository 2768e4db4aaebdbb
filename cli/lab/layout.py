"""What a lab is called on this machine: names, addresses, folders (pure, no I/O).

A lab named NAME owns, and is the only owner of:

- a bridge in the host namespace, ``pslab-<key>`` (``key`` is NAME, or a digest of it when
  NAME is too long for the kernel's 15-character interface names), holding the host's
  address on the lab subnet (``.254`` of a /24);
- per node K: the network namespace ``pslab-<NAME>-nodeK`` with ``eth0`` at ``.K``, the
  host end of its veth ``psl-<key>-K`` on the bridge, the state folder
  ``/var/lib/pyswarm-lab/<NAME>/nodeK``, the run folder ``/run/pyswarm-lab/<NAME>/nodeK``
  and the cgroup parent ``pyswarm-lab-<NAME>-nodeK`` of its containers; on a manager of a
  lab with ``--store etcd``, its etcd member ``etcdK``, with its data in ``nodeK/etcd`` and
  its log in ``nodeK/etcd.log`` under the state folder;
- ``/var/lib/pyswarm-lab/<NAME>/lab.json``, the lab's own record.

Everything `lab down` removes is derived from these names, so a lab leaves no trace even
when its record was lost.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

STATE_BASE = Path("/var/lib/pyswarm-lab")
RUN_BASE = Path("/run/pyswarm-lab")
NETNS_DIR = Path("/run/netns")  # where iproute2 keeps named network namespaces
DEFAULT_NAME = "default"
DEFAULT_SUBNET = "198.18.0.0/24"  # RFC 2544's benchmarking range: never a real network
# Each node is a real daemon (about 60 MB and a zygote); past a few dozen a 2-core machine
# only thrashes. The veth names have room for two digits.
MAX_NODES = 64

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,29}")
_KEY_LEN = 7  # "pslab-" + 7 and "psl-" + 7 + "-" + 2 digits both fit IFNAMSIZ (15)


class LayoutError(ValueError):
    """Bad input for a lab, naming the field."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LayoutError(f'invalid --name "{name}": use 1 to 30 of a-z, 0-9 and "-", '
                          f"starting with a letter or digit")
    return name


def key(name: str) -> str:
    """The short form of a lab name used in interface names."""
    if len(name) <= _KEY_LEN:
        return name
    return hashlib.sha256(name.encode()).hexdigest()[:_KEY_LEN]


def bridge_name(name: str) -> str:
    return f"pslab-{key(name)}"


def lab_dir(name: str) -> Path:
    return STATE_BASE / name


def run_dir(name: str) -> Path:
    return RUN_BASE / name


def state_file(name: str) -> Path:
    return lab_dir(name) / "lab.json"


def parse_subnet(text: str, nodes: int) -> ipaddress.IPv4Network:
    """The lab subnet: IPv4, with room for ``nodes`` addresses below the host's."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise LayoutError(f'invalid --subnet "{text}": {exc}') from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise LayoutError(f'invalid --subnet "{text}": the lab underlay is IPv4')
    if net.num_addresses - 3 < nodes:  # network, broadcast and the host's own address
        raise LayoutError(f'invalid --subnet "{text}": too small for {nodes} nodes')
    return net


def host_address(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The host's address on the bridge: the last usable one (.254 of a /24)."""
    return net.broadcast_address - 1


@dataclass(frozen=True)
class NodeLayout:
    """Names and places of node ``index`` (1-based) of lab ``lab``."""

    lab: str
    index: int
    address: str  # on the lab subnet, without prefix

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def netns(self) -> str:
        return f"pslab-{self.lab}-{self.name}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def veth(self) -> str:
        """The host end; the node's end is ``eth0`` inside its namespace."""
        return f"psl-{key(self.lab)}-{self.index}"

    @property
    def root(self) -> Path:
        return lab_dir(self.lab) / self.name

    @property
    def run(self) -> Path:
        return run_dir(self.lab) / self.name

    @property
    def cgroup_parent(self) -> str:
        return f"pyswarm-lab-{self.lab}-{self.name}"

    @property
    def pid_file(self) -> Path:
        return self.run / "pyswarm.pid"

    @property
    def socket(self) -> Path:
        return self.run / "pyswarm.sock"

    @property
    def member(self) -> str:
        """The lab's name for the etcd member on this node (when it runs one)."""
        return f"etcd{self.index}"

    @property
    def etcd_dir(self) -> Path:
        return self.root / "etcd"

    @property
    def etcd_log(self) -> Path:
        return self.root / "etcd.log"

    def env(self) -> dict[str, str]:
        """The node's PYSWARM_* settings: what its daemon and its CLI read.

        Bridge, subnet and nftables table stay the defaults: each node has a network
        namespace of its own, so they cannot clash with another node's or the host's. The
        service DNS forwards nothing: lab nodes have no way off the machine, and must not.
        """
        return {"PYSWARM_ROOT": str(self.root), "PYSWARM_RUN": str(self.run),
                "PYSWARM_NODE_NAME": self.name, "PYSWARM_CGROUP_PARENT": self.cgroup_parent,
                "PYSWARM_DNS_UPSTREAMS": "none"}


def node_layouts(lab: str, net: ipaddress.IPv4Network, nodes: int) -> list[NodeLayout]:
    return [NodeLayout(lab, k, str(net.network_address + k)) for k in range(1, nodes + 1)]
