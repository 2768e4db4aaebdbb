"""Each node's NetworkState: what it needs to wire overlays, the load balancer and DNS.

    peers             every other node: its underlay address and whether it is READY
    networks          the networks the node has an address on (Node.attachments: "ingress"
                      always, an overlay while one of its tasks is placed here)
    node_attachments  those addresses
    endpoints         every service attached to one of those networks, with the tasks that
                      take connections: observed RUNNING and desired RUNNING

Policy: the state is a pure function of one store snapshot, and its version is that
snapshot's revision (so it only grows, across manager restarts too). A round builds the
parts that nodes share once — each peer, network and service endpoint serialized once,
each distinct set of networks' endpoints joined once — and a node's state is those bytes
concatenated (a protobuf message is the concatenation of its fields). An endpoint is rebuilt
only when its service or one of its connecting tasks changed since the last round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.store import ReadTx
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S


def takes_connections(task: opb.Task) -> bool:
    return (task.status.state == S.TASK_STATE_RUNNING
            and task.desired_state == S.TASK_STATE_RUNNING)


def task_name(task: opb.Task) -> str:
    """"web.2" for a replicated task, "web.<node id>" for a global one (Docker's names)."""
    return f"{task.service_name}.{task.slot or task.node_id}"


def endpoint(service: opb.Service, tasks: Iterable[opb.Task]) -> cpb.ServiceEndpoint:
    spec = service.spec
    names = nets.aliases(spec, (a for n in spec.task.networks for a in n.aliases))
    out = cpb.ServiceEndpoint(
        service_id=service.id, service_name=spec.name, aliases=names,
        mode=spec.endpoint.mode or "vip", ports=service.endpoint.ports,
        vips=[cpb.VirtualIP(network_id=v.network_id, addr=v.addr)
              for v in service.endpoint.virtual_ips])
    for task in sorted(tasks, key=task_name):
        out.tasks.add(task_id=task.id, node_id=task.node_id, name=task_name(task),
                      networks=task.networks)
    return out


def _field(**one: object) -> bytes:
    """One field of a NetworkState, serialized (tag, length and value)."""
    return cpb.NetworkState(**one).SerializeToString()  # type: ignore[arg-type]


@dataclass
class _Cached:
    """A service's serialized endpoint; `stamp` is unique to each build of it."""

    key: tuple[object, ...]
    networks: frozenset[str]
    data: bytes
    stamp: int


# The parts of one node's serialized state: peers (without itself), what its group of nodes
# with the same networks shares (networks and endpoints), its own attachments.
Parts = tuple[bytes, bytes, bytes]


@dataclass
class Round:
    """The shared parts of every node's state at one store revision."""

    revision: int
    nodes: dict[str, opb.Node]
    builder: Builder
    peers: bytes = b""
    peer_span: dict[str, tuple[int, int]] = field(default_factory=dict)
    network_data: dict[str, bytes] = field(default_factory=dict)
    endpoints: list[_Cached] = field(default_factory=list)
    _shared: dict[frozenset[str], bytes] = field(default_factory=dict)

    def parts(self, node_id: str) -> Parts:
        """The node's NetworkState (without its version) as serialized parts; equal parts
        mean an equal state, and a part unchanged since the last round is the same object."""
        node = self.nodes.get(node_id)
        start, end = self.peer_span.get(node_id, (0, 0))
        peers = self.peers[:start] + self.peers[end:]
        if node is None:
            return peers, b"", b""
        joined = frozenset(a.network_id for a in node.attachments
                           if a.network_id in self.network_data)
        mine = _field(node_attachments=[a for a in node.attachments if a.network_id in joined])
        shared = self._shared.get(joined)
        if shared is None:
            shared = self._shared[joined] = self.builder.shared(self, joined)
        return peers, shared, mine

    def state(self, node_id: str) -> cpb.NetworkState:
        state = cpb.NetworkState.FromString(b"".join(self.parts(node_id)))
        state.version = self.revision
        return state


def serialized(version: int, parts: Parts) -> bytes:
    """A whole NetworkState, serialized, from a round's parts."""
    return _field(version=version) + b"".join(parts)


class Builder:
    """Builds rounds, keeping between rounds each service's endpoint while it is unchanged
    and what each group of nodes shares while none of its parts changed."""

    def __init__(self) -> None:
        self._endpoints: dict[str, _Cached] = {}
        self._groups: dict[frozenset[str], tuple[tuple[object, ...], bytes]] = {}
        self._stamp = 0

    def build(self, view: ReadTx) -> Round:
        nodes: dict[str, opb.Node] = {n.id: n for n in view.all("node")}  # type: ignore[misc]
        out = Round(view.revision, nodes, self)
        peers = []
        offset = 0
        for node_id in sorted(nodes):
            node = nodes[node_id]
            if not node.status.addr:
                continue  # no session yet: not a tunnel endpoint (workers refuse '' there)
            data = _field(peers=[cpb.Peer(node_id=node_id, addr=node.status.addr,
                                          ready=node.status.state == opb.NODE_STATE_READY)])
            out.peer_span[node_id] = (offset, offset + len(data))
            offset += len(data)
            peers.append(data)
        out.peers = b"".join(peers)
        for network in sorted(view.all("network"), key=lambda n: n.id):
            if network.subnet:  # allocated
                out.network_data[network.id] = _field(networks=[network])
        cache: dict[str, _Cached] = {}
        for service in sorted(view.all("service"), key=lambda s: s.spec.name):
            cached = self._endpoint(view, service)  # type: ignore[arg-type]
            cache[service.id] = cached
            if cached.networks:
                out.endpoints.append(cached)
        self._endpoints = cache
        live = {frozenset(a.network_id for a in n.attachments) for n in nodes.values()}
        self._groups = {k: v for k, v in self._groups.items() if k in live}
        return out

    def shared(self, round: Round, joined: frozenset[str]) -> bytes:
        """The networks and endpoints of nodes on exactly `joined`, serialized; the bytes of
        the last round while none of them changed."""
        included = [e for e in round.endpoints if e.networks & joined]
        networks = sorted(joined)
        signature = (tuple(round.network_data[n] for n in networks),
                     tuple(e.stamp for e in included))
        cached = self._groups.get(joined)
        if cached is not None and cached[0] == signature:
            return cached[1]
        data = b"".join(signature[0]) + b"".join(e.data for e in included)
        self._groups[joined] = (signature, data)
        return data

    def _endpoint(self, view: ReadTx, service: opb.Service) -> _Cached:
        found, _ = nets.attachment_targets(view, service.spec)
        network_ids = frozenset(n.id for n, _ in found)
        tasks = [t for t in view.find("task", service_id=service.id)
                 if takes_connections(t)]  # type: ignore[arg-type]
        key = (service.meta.version, tuple(sorted(network_ids)),
               tuple(sorted((t.id, t.meta.version) for t in tasks)))
        cached = self._endpoints.get(service.id)
        if cached is not None and cached.key == key:
            return cached
        self._stamp += 1
        data = _field(endpoints=[endpoint(service, tasks)])  # type: ignore[arg-type]
        return _Cached(key, network_ids, data, self._stamp)
