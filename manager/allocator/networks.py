"""The cluster's address plan and how specs name networks.

    10.214.0.0/16   overlay networks, a /24 each (unless the stack gives a subnet)
    10.215.0.0/16   service virtual IPs, one per service and network (never inside a
                    network's subnet: VIP traffic is routed through each node's host
                    namespace, where nftables DNATs it to a task)
    10.212.0.0/16   "ingress", the routing mesh every node takes part in (VNI 4096).
                    Not Docker's 10.0.0.0/24 nor 10.255/16: each node routes this subnet
                    into its ingress bridge, so it must not hold addresses the hosts
                    need (a cloud resolver at 10.255.255.53 was hidden by 10.255/16).

A task spec names its networks by cluster name ("<stack>_<name>", as the stack loader
scopes them) or by id. A service that publishes a port in ingress mode is attached to
"ingress" as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pyswarm.manager.loops.tasks import new_id
from pyswarm.manager.store import ReadTx, WriteTx
from pyswarm.proto import objects_pb2 as opb

OVERLAY_POOL = ipaddress.IPv4Network("10.214.0.0/16")
OVERLAY_PREFIX = 24
VIP_POOL = ipaddress.IPv4Network("10.215.0.0/16")
INGRESS_NAME = "ingress"
INGRESS_SUBNET = ipaddress.IPv4Network("10.212.0.0/16")
INGRESS_LABEL = "pyswarm.network.ingress"
INGRESS_VNI = 4096
FIRST_VNI = 4097
LAST_VNI = (1 << 24) - 1
STACK_LABEL = "com.docker.stack.namespace"


def is_ingress(network: opb.Network) -> bool:
    return network.spec.labels.get(INGRESS_LABEL) == "true"


def ensure_ingress(tx: WriteTx) -> opb.Network | None:
    """Create the "ingress" network unless the cluster has one; the new network, if any."""
    if any(is_ingress(n) for n in tx.all("network")) or tx.find("network", name=INGRESS_NAME):
        return None
    network = opb.Network(id=new_id())
    network.spec.name = INGRESS_NAME
    network.spec.driver = "overlay"
    network.spec.subnet = str(INGRESS_SUBNET)
    network.spec.labels[INGRESS_LABEL] = "true"
    tx.create(network)
    return network


def ingress(tx: ReadTx) -> opb.Network | None:
    for network in tx.find("network", name=INGRESS_NAME):
        if is_ingress(network):
            return network
    return None


def resolve(tx: ReadTx, target: str) -> opb.Network | None:
    """The network a spec names: by id, else by its (unique) name."""
    network = tx.get("network", target)
    if network is not None:
        return network  # type: ignore[return-value]
    found = tx.find("network", name=target)
    return found[0] if len(found) == 1 else None  # type: ignore[return-value]


def publishes_ingress(spec: opb.ServiceSpec) -> bool:
    return any(p.publish_mode == opb.PUBLISH_MODE_INGRESS for p in spec.endpoint.ports)


def short_name(spec: opb.ServiceSpec) -> str:
    """The name a service has inside its stack ("web" for "shop_web"); "" outside a stack."""
    stack = spec.labels.get(STACK_LABEL, "")
    prefix = f"{stack}_"
    if stack and spec.name.startswith(prefix) and len(spec.name) > len(prefix):
        return spec.name[len(prefix):]
    return ""


def aliases(spec: opb.ServiceSpec, extra: Iterable[str] = ()) -> list[str]:
    """A task's names on a network: its service's short name, then the spec's aliases."""
    out: list[str] = []
    for name in (short_name(spec), *extra):
        if name and name not in out and name != spec.name:
            out.append(name)
    return out


def attachment_targets(
    tx: ReadTx, spec: opb.ServiceSpec,
    configs: Iterable[opb.NetworkAttachmentConfig] | None = None,
) -> tuple[list[tuple[opb.Network, list[str]]], list[str]]:
    """The networks a service's tasks attach to (those of `configs`, a task's frozen spec,
    when given), each with its aliases there, and the targets that name no network (yet).
    Ingress comes last, for services publishing in ingress mode."""
    found: list[tuple[opb.Network, list[str]]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for config in spec.task.networks if configs is None else configs:
        network = resolve(tx, config.target)
        if network is None:
            missing.append(config.target)
        elif network.id not in seen:
            seen.add(network.id)
            found.append((network, aliases(spec, config.aliases)))
    if publishes_ingress(spec):
        network = ingress(tx)
        if network is None:
            missing.append(INGRESS_NAME)
        elif network.id not in seen:
            found.append((network, []))
    return found, missing
