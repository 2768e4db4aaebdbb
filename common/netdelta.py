"""A node's side of the NetworkState stream: whole states and deltas in, the whole state out.

    view = NetworkView(node_id)
    state = view.apply(message.network)   # the node's whole current NetworkState
    # or, when the whole message is not needed each time (simulated nodes):
    view.update(message.network)          # merge only
    view.version, view.peers, view.networks, view.endpoints, view.task_ids(service_id)
    state = view.state()                  # built on demand, kept until the next change

A message with base_version 0 is whole and resets the view. Any other is a delta against
the state of that version (proto/cluster.proto says how a delta reads); one whose base is
not the view's version raises StaleDelta and changes nothing: the node has missed a
message, and should end its session (a new session starts with a whole state).

Peers naming the node itself are dropped when the view knows the node's id.

The whole state is deterministic: peers by node id, networks by id, endpoints by service
name (then id), an endpoint's tasks by name (then id); node_attachments as last sent.
Taking a message costs a dict update per entry in it (the view keeps the message's own
parts, no copies); state() serializes again only the endpoints that changed since the
last call, then parses the whole once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyswarm.common.protowire import wrap
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

NS, SE = cpb.NetworkState, cpb.ServiceEndpoint


class StaleDelta(Exception):
    """A delta against a state this view does not have."""

    def __init__(self, have: int, base: int) -> None:
        super().__init__(f"NetworkState delta against version {base}, "
                         f"but this node has version {have}")
        self.have, self.base = have, base


@dataclass
class _Endpoint:
    entry: cpb.ServiceEndpoint        # as last received: its own fields (tasks aside)
    # task id -> task; None while they are those of `whole` (an endpoint received whole is
    # split into a dict only once a delta changes its tasks)
    _tasks: dict[str, cpb.EndpointTask] | None = None
    whole: cpb.ServiceEndpoint | None = None
    data: bytes | None = None         # the whole NetworkState.endpoints entry, serialized

    @property
    def key(self) -> tuple[str, str]:
        return self.entry.service_name, self.entry.service_id

    @property
    def tasks(self) -> dict[str, cpb.EndpointTask]:
        if self._tasks is None:
            whole = self.whole.tasks if self.whole is not None else ()
            self._tasks = {t.task_id: t for t in whole}
            self.whole = None
        return self._tasks

    def header(self) -> cpb.ServiceEndpoint:
        out = SE()
        out.CopyFrom(self.entry)
        out.ClearField("tasks")
        out.ClearField("removed_tasks")
        return out

    def serialized(self) -> bytes:
        if self.data is None:
            out = self.header()
            tasks = list(self.whole.tasks) if self.whole is not None else list(self.tasks.values())
            keys = [(t.name, t.task_id) for t in tasks]
            if any(a > b for a, b in zip(keys, keys[1:], strict=False)):
                tasks = [t for _, t in sorted(zip(keys, tasks, strict=True),
                                              key=lambda kt: kt[0])]
            out.tasks.extend(tasks)
            self.data = wrap(NS.ENDPOINTS_FIELD_NUMBER, out.SerializeToString())
        return self.data


class NetworkView:
    """The node's state, kept as the messages' own parts (no copy): taking a delta costs
    about a dict update per entry in it."""

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self.version = 0
        self._peers: dict[str, cpb.Peer] = {}
        self._networks: dict[str, opb.Network] = {}
        self._attachments: list[opb.NetworkAttachment] = []
        self._endpoints: dict[str, _Endpoint] = {}
        self._state: cpb.NetworkState | None = None

    # ---- what the node has -----------------------------------------------------------------

    @property
    def peers(self) -> dict[str, cpb.Peer]:
        return dict(self._peers)

    @property
    def networks(self) -> dict[str, opb.Network]:
        return dict(self._networks)

    @property
    def attachments(self) -> list[opb.NetworkAttachment]:
        return list(self._attachments)

    @property
    def endpoints(self) -> dict[str, cpb.ServiceEndpoint]:
        """Service id -> its endpoint without tasks (task_ids / state() have those)."""
        return {k: e.header() for k, e in self._endpoints.items()}

    def task_ids(self, service_id: str) -> list[str]:
        """The service's connecting tasks, by name."""
        found = self._endpoints.get(service_id)
        if found is None:
            return []
        return [i for _, i in sorted((t.name, i) for i, t in found.tasks.items())]

    # ---- messages in -----------------------------------------------------------------------

    def apply(self, msg: cpb.NetworkState) -> cpb.NetworkState:
        """Take a whole state or a delta; the node's whole state after it."""
        self.update(msg)
        return self.state()

    def update(self, msg: cpb.NetworkState) -> None:
        """Take a whole state or a delta (StaleDelta: a delta not against this version).
        The view keeps parts of `msg`: do not modify it afterwards."""
        if msg.base_version:
            if msg.base_version != self.version:
                raise StaleDelta(self.version, msg.base_version)
        else:
            self._peers.clear()
            self._networks.clear()
            self._endpoints.clear()
        self._state = None
        self.version = msg.version
        peers = self._peers
        for node_id in msg.removed_peers:
            peers.pop(node_id, None)
        for peer in msg.peers:
            peers[peer.node_id] = peer
        if self.node_id:
            peers.pop(self.node_id, None)
        networks = self._networks
        for network_id in msg.removed_networks:
            networks.pop(network_id, None)
        for network in msg.networks:
            networks[network.id] = network
        self._attachments = list(msg.node_attachments)
        endpoints = self._endpoints
        for service_id in msg.removed_endpoints:
            endpoints.pop(service_id, None)
        for entry in msg.endpoints:
            found = endpoints.get(entry.service_id)
            if found is None:
                endpoints[entry.service_id] = _Endpoint(entry, whole=entry)
                continue
            found.entry, found.data = entry, None
            tasks = found.tasks
            for task_id in entry.removed_tasks:
                tasks.pop(task_id, None)
            for task in entry.tasks:
                tasks[task.task_id] = task

    # ---- the whole state -------------------------------------------------------------------

    def state(self) -> cpb.NetworkState:
        """The node's whole state (base_version 0). Do not modify it: it is kept until the
        next update."""
        if self._state is None:
            head = NS(version=self.version)
            head.peers.extend(self._peers[k] for k in sorted(self._peers))
            head.networks.extend(self._networks[k] for k in sorted(self._networks))
            head.node_attachments.extend(self._attachments)
            parts = [head.SerializeToString()]
            parts += [e.serialized() for e in sorted(self._endpoints.values(),
                                                      key=lambda e: e.key)]
            self._state = NS.FromString(b"".join(parts))
        return self._state

