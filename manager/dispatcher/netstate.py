"""Each node's NetworkState: what it needs to wire overlays, the load balancer and DNS.

    peers             every other node: its underlay address and whether it is READY
    networks          the networks the node has an address on (Node.attachments: "ingress"
                      always, an overlay while one of its tasks is placed here)
    node_attachments  those addresses
    endpoints         every service attached to one of those networks, with the tasks that
                      take connections: observed RUNNING and desired RUNNING

Policy: the state is a pure function of one store snapshot, and its version is that
snapshot's revision (so it only grows, across manager restarts too).

A session is sent its whole state first, then deltas against what it was last delivered
(proto/cluster.proto says how a delta reads; common/netdelta.py applies them). The model
(NetworkModel) keeps the current parts — each peer, network, service header and connecting
task serialized once — and a log of what each round changed: peer ids, network ids,
services (with their networks before the round, so that what a node could see then is
known) and task ids per service. A round costs what changed, not what exists: it re-reads
only the objects whose store events it was given (Dirty), and nothing is built per node.

A session's delta since round r0 merges the log's rounds after r0 (once per r0 and round)
and keeps what its networks let it see (once per r0, its networks then and its networks
now): sessions at the same point with the same networks share the bytes, and a node's own
part is its attachments (always whole in a delta) and its own peer entry cut out. A node
whose networks changed gets the newly visible networks and endpoints whole and the others
removed. A session whose r0 the log no longer holds gets its whole state again. Whole
states are built from the same parts: what nodes on the same networks share is joined once
per round, and a service's whole endpoint once per change of it.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyswarm.common import taskstate
from pyswarm.common.protowire import varint, wrap
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.store import Event, ReadTx
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb

S = taskstate.S
NS, SE = cpb.NetworkState, cpb.ServiceEndpoint

# The log keeps at most this many rounds (a minute at one round each 50 ms) and this many
# changed ids in all; a session further behind gets its whole state again.
LOG_ROUNDS = 1200
LOG_ITEMS = 200_000


def takes_connections(task: opb.Task) -> bool:
    return (task.status.state == S.TASK_STATE_RUNNING
            and task.desired_state == S.TASK_STATE_RUNNING)


def task_name(task: opb.Task) -> str:
    """"web.2" for a replicated task, "web.<node id>" for a global one (Docker's names)."""
    return f"{task.service_name}.{task.slot or task.node_id}"


def endpoint(service: opb.Service, tasks: Iterable[opb.Task]) -> cpb.ServiceEndpoint:
    """A service's whole endpoint (tasks by name): the reference the parts below follow."""
    out = _header(service)
    for task in sorted(tasks, key=lambda t: (task_name(t), t.id)):
        out.tasks.append(_endpoint_task(task))
    return out


def _header(service: opb.Service) -> cpb.ServiceEndpoint:
    spec = service.spec
    names = nets.aliases(spec, (a for n in spec.task.networks for a in n.aliases))
    return cpb.ServiceEndpoint(
        service_id=service.id, service_name=spec.name, aliases=names,
        mode=spec.endpoint.mode or "vip", ports=service.endpoint.ports,
        vips=[cpb.VirtualIP(network_id=v.network_id, addr=v.addr)
              for v in service.endpoint.virtual_ips])


def _endpoint_task(task: opb.Task) -> cpb.EndpointTask:
    return cpb.EndpointTask(task_id=task.id, node_id=task.node_id, name=task_name(task),
                            networks=task.networks)


# ---- the wire ----------------------------------------------------------------------------
# States are assembled from serialized parts (common/protowire.py).

def _uint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def _strings(number: int, values: Iterable[str]) -> bytes:
    return b"".join(wrap(number, v.encode()) for v in values)


# ---- what changed ------------------------------------------------------------------------

@dataclass
class Dirty:
    """The objects the store events since the last round touched (ids): what a round must
    look at again. Tasks map to their service; a task that neither took connections before
    nor after an event is not noted (it is in no endpoint)."""

    nodes: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    tasks: dict[str, str] = field(default_factory=dict)

    def note(self, event: Event) -> None:
        obj = event.obj
        if event.kind == "task":
            old, new = event.old, (None if event.action == "delete" else obj)
            if ((old is not None and takes_connections(old))  # type: ignore[arg-type]
                    or (new is not None and takes_connections(new))):  # type: ignore[arg-type]
                self.tasks[obj.id] = obj.service_id  # type: ignore[attr-defined]
        elif event.kind == "node":
            self.nodes.add(obj.id)  # type: ignore[attr-defined]
        elif event.kind == "network":
            self.networks.add(obj.id)  # type: ignore[attr-defined]
        elif event.kind == "service":
            self.services.add(obj.id)  # type: ignore[attr-defined]

    def __bool__(self) -> bool:
        return bool(self.nodes or self.networks or self.services or self.tasks)


@dataclass
class Changes:
    """What one round changed."""

    round: int
    revision: int
    peers: set[str] = field(default_factory=set)        # node ids (added, changed, gone)
    networks: set[str] = field(default_factory=set)     # network ids
    # service id -> its networks before the round (None: it did not exist), for services
    # whose header or networks changed (or that came or went)
    services: dict[str, frozenset[str] | None] = field(default_factory=dict)
    tasks: dict[str, set[str]] = field(default_factory=dict)  # service id -> task ids
    nodes: set[str] = field(default_factory=set)        # nodes whose attachments changed
    touched: set[str] = field(default_factory=set)      # networks of changed endpoints

    def size(self) -> int:
        return (len(self.peers) + len(self.networks) + len(self.services)
                + sum(len(t) for t in self.tasks.values()))


@dataclass(frozen=True)
class Delivered:
    """What a session's node has: the state of `round`, sent as `version`, seen through
    `joined` (its networks then) with `attached` (its attachments then, serialized)."""

    round: int
    joined: frozenset[str]
    attached: bytes
    version: int


@dataclass
class _Service:
    name: str
    header: bytes               # its ServiceEndpoint without tasks, serialized
    networks: frozenset[str]


@dataclass(slots=True)
class _Task:
    data: bytes                 # ServiceEndpoint.tasks entry, serialized with its tag
    key: tuple[str, str]        # (name, id): the order of tasks in an endpoint
    version: int                # the task's meta.version it was built from


@dataclass
class _Merged:
    """The changes of every round after some r0, together."""

    peers: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    services: dict[str, frozenset[str] | None] = field(default_factory=dict)
    tasks: dict[str, set[str]] = field(default_factory=dict)


class NetworkModel:
    """The parts of every node's state at the last round, the log of rounds, and each
    session's whole state or delta from them. `state_for` is what NetworkPush asks."""

    def __init__(self, log_rounds: int = LOG_ROUNDS, log_items: int = LOG_ITEMS) -> None:
        self.log_rounds, self.log_items = log_rounds, log_items
        self.round = 0
        self.revision = 0
        self.view: ReadTx | None = None
        self.peers: dict[str, bytes] = {}        # node id -> NetworkState.peers entry
        self.networks: dict[str, bytes] = {}     # allocated network id -> networks entry
        self.services: dict[str, _Service] = {}
        self.tasks: dict[str, dict[str, _Task]] = {}  # service id -> connecting tasks
        self._attachments: dict[str, bytes] = {}  # node id -> its attachments, serialized
        self._log: deque[Changes] = deque()
        self._log_items = 0
        # Built lazily, for the current round only:
        self._merged: dict[int, _Merged] = {}
        self._peer_deltas: dict[int, tuple[bytes, dict[str, tuple[int, int]]]] = {}
        self._deltas: dict[tuple[int, frozenset[str], frozenset[str]], bytes] = {}
        self._whole_peers: tuple[bytes, dict[str, tuple[int, int]]] | None = None
        self._whole_shared: dict[frozenset[str], bytes] = {}
        # Built lazily, until what they hold changes:
        self._whole_endpoints: dict[str, bytes] = {}  # service id -> endpoints entry
        self._order: list[str] | None = None          # service ids by name
        # What building cost (the tests and the manager's counters read these).
        self.whole_states = 0       # whole states assembled for a session
        self.delta_states = 0       # deltas assembled for a session
        self.shared_builds = 0      # what a group of nodes shares, built (whole or delta)
        self.endpoint_builds = 0    # whole endpoints joined from their tasks

    # ---- rounds ----------------------------------------------------------------------------

    def load(self, view: ReadTx) -> None:
        """Start from a snapshot: everything in it, no history (every session whole)."""
        dirty = Dirty(nodes={n.id for n in view.all("node")},  # type: ignore[attr-defined]
                      networks={n.id for n in view.all("network")},  # type: ignore[attr-defined]
                      services={s.id for s in view.all("service")})  # type: ignore[attr-defined]
        for task in view.all("task"):
            if takes_connections(task):  # type: ignore[arg-type]
                dirty.tasks[task.id] = task.service_id  # type: ignore[attr-defined]
        self.advance(view, dirty)
        self._log.clear()
        self._log_items = 0

    def advance(self, view: ReadTx, dirty: Dirty) -> Changes | None:
        """Move to `view`, given every object written since the last view (`dirty`): the
        round's changes (logged), or None when no node's state changed."""
        ch = Changes(self.round + 1, view.revision)
        self.view, self.revision = view, view.revision
        for node_id in dirty.nodes:
            self._node(view, node_id, ch)
        for network_id in dirty.networks:
            network = view.get("network", network_id)
            data = (wrap(NS.NETWORKS_FIELD_NUMBER, network.SerializeToString())
                    if network is not None and network.subnet else None)  # type: ignore
            if _put(self.networks, network_id, data):
                ch.networks.add(network_id)
        services = set(dirty.services)
        if dirty.networks:  # the networks a service's targets name may have changed
            services.update(self.services)
            services.update(s.id for s in view.all("service"))  # type: ignore[attr-defined]
        for service_id in services:
            self._service(view, service_id, ch)
        for task_id, service_id in dirty.tasks.items():
            self._task(view, task_id, service_id, ch)
        if not (ch.peers or ch.networks or ch.services or ch.tasks or ch.nodes):
            return None
        for service_id in ch.tasks:
            service = self.services.get(service_id)
            if service is not None:
                ch.touched |= service.networks
        self.round = ch.round
        self._log.append(ch)
        self._log_items += ch.size()
        while self._log and (len(self._log) > self.log_rounds
                             or self._log_items > self.log_items):
            self._log_items -= self._log.popleft().size()
        self._merged.clear()
        self._peer_deltas.clear()
        self._deltas.clear()
        self._whole_shared.clear()
        if ch.peers:
            self._whole_peers = None
        return ch

    def _node(self, view: ReadTx, node_id: str, ch: Changes) -> None:
        node: opb.Node | None = view.get("node", node_id)  # type: ignore[assignment]
        peer = None
        if node is not None and node.status.addr:  # no session yet: no tunnel endpoint
            peer = wrap(NS.PEERS_FIELD_NUMBER, cpb.Peer(
                node_id=node_id, addr=node.status.addr,
                ready=node.status.state == opb.NODE_STATE_READY).SerializeToString())
        if _put(self.peers, node_id, peer):
            ch.peers.add(node_id)
        attached = (NS(node_attachments=node.attachments).SerializeToString()
                    if node is not None else None)
        if _put(self._attachments, node_id, attached):
            ch.nodes.add(node_id)

    def _service(self, view: ReadTx, service_id: str, ch: Changes) -> None:
        service: opb.Service | None = view.get("service", service_id)  # type: ignore
        old = self.services.get(service_id)
        new = None
        if service is not None:
            found, _ = nets.attachment_targets(view, service.spec)
            new = _Service(service.spec.name, _header(service).SerializeToString(),
                           frozenset(n.id for n, _ in found))
        if new == old:
            return
        if new is None:
            del self.services[service_id]
        else:
            self.services[service_id] = new
        ch.services.setdefault(service_id, old.networks if old is not None else None)
        for one in (old, new):
            if one is not None:
                ch.touched |= one.networks
        self._whole_endpoints.pop(service_id, None)
        self._order = None

    def _task(self, view: ReadTx, task_id: str, service_id: str, ch: Changes) -> None:
        task_id = sys.intern(task_id)  # kept as a key (store/__init__.py says why)
        tasks = self.tasks.setdefault(service_id, {})
        old = tasks.get(task_id)
        task: opb.Task | None = view.get("task", task_id)  # type: ignore[assignment]
        if task is None or not takes_connections(task):
            if old is None:
                return
            del tasks[task_id]
            if not tasks:
                del self.tasks[service_id]
        else:
            if old is not None and old.version == task.meta.version:
                return
            data = wrap(SE.TASKS_FIELD_NUMBER, _endpoint_task(task).SerializeToString())
            tasks[task_id] = _Task(data, (task_name(task), task_id), task.meta.version)
            if old is not None and old.data == data:
                return
        ch.tasks.setdefault(service_id, set()).add(task_id)
        self._whole_endpoints.pop(service_id, None)

    # ---- a session's state -----------------------------------------------------------------

    def state_for(self, node_id: str, had: Delivered | None) -> tuple[bytes | None, Delivered]:
        """What to send a node that has `had` (None: nothing yet): its whole state, a delta
        against `had`, or None when its state did not change — with what it has then."""
        joined, attached = self._joined(node_id)
        if had is None or had.round < self._oldest() or not had.version:
            # (a state of version 0, an empty store's, is no base: base_version 0 is whole)
            self.whole_states += 1
            data = b"".join((_uint(NS.VERSION_FIELD_NUMBER, self.revision),
                             self._cut(self._peers_whole(), node_id),
                             self._shared_whole(joined), attached))
            return data, Delivered(self.round, joined, attached, self.revision)
        if had.round == self.round and had.joined == joined and had.attached == attached:
            return None, had
        shared = self._shared_delta(had.round, had.joined, joined)
        peers = self._cut(self._peers_delta(had.round), node_id)
        if not shared and not peers and attached == had.attached:
            return None, Delivered(self.round, joined, attached, had.version)
        self.delta_states += 1
        data = b"".join((_uint(NS.VERSION_FIELD_NUMBER, self.revision),
                         _uint(NS.BASE_VERSION_FIELD_NUMBER, had.version), peers, shared,
                         attached))
        return data, Delivered(self.round, joined, attached, self.revision)

    def state(self, node_id: str) -> cpb.NetworkState:
        """A node's whole state, parsed (tests, tools)."""
        data, _ = self.state_for(node_id, None)
        return cpb.NetworkState.FromString(data or b"")

    def _oldest(self) -> int:
        """The oldest round a delta can start from."""
        return self._log[0].round - 1 if self._log else self.round

    def _joined(self, node_id: str) -> tuple[frozenset[str], bytes]:
        """The node's networks (allocated ones it has an address on) and its attachments on
        them, serialized."""
        node = self.view.get("node", node_id) if self.view is not None else None
        if node is None:
            return frozenset(), b""
        mine = [a for a in node.attachments if a.network_id in self.networks]  # type: ignore
        return (frozenset(a.network_id for a in mine),
                NS(node_attachments=mine).SerializeToString())

    @staticmethod
    def _cut(peers: tuple[bytes, dict[str, tuple[int, int]]], node_id: str) -> bytes:
        data, spans = peers
        span = spans.get(node_id)
        return data if span is None else data[:span[0]] + data[span[1]:]

    def _peers_whole(self) -> tuple[bytes, dict[str, tuple[int, int]]]:
        if self._whole_peers is None:
            self._whole_peers = _spans((i, self.peers[i]) for i in sorted(self.peers))
        return self._whole_peers

    def _shared_whole(self, joined: frozenset[str]) -> bytes:
        """The networks and endpoints of a node on exactly `joined`, serialized."""
        data = self._whole_shared.get(joined)
        if data is not None:
            return data
        self.shared_builds += 1
        if self._order is None:
            self._order = sorted(self.services, key=lambda i: (self.services[i].name, i))
        parts = [self.networks[n] for n in sorted(joined)]
        parts += [self._whole_endpoint(i) for i in self._order
                  if self.services[i].networks & joined]
        data = self._whole_shared[joined] = b"".join(parts)
        return data

    def _whole_endpoint(self, service_id: str) -> bytes:
        data = self._whole_endpoints.get(service_id)
        if data is None:
            self.endpoint_builds += 1
            tasks = sorted(self.tasks.get(service_id, {}).values(), key=lambda t: t.key)
            data = self._whole_endpoints[service_id] = wrap(
                NS.ENDPOINTS_FIELD_NUMBER,
                self.services[service_id].header + b"".join(t.data for t in tasks))
        return data

    def _merge(self, since: int) -> _Merged:
        merged = self._merged.get(since)
        if merged is not None:
            return merged
        merged = self._merged[since] = _Merged()
        start = since + 1 - self._log[0].round if self._log else 0
        for i in range(start, len(self._log)):
            ch = self._log[i]
            merged.peers |= ch.peers
            merged.networks |= ch.networks
            for service_id, before in ch.services.items():
                merged.services.setdefault(service_id, before)  # the oldest: at `since`
            for service_id, task_ids in ch.tasks.items():
                merged.tasks.setdefault(service_id, set()).update(task_ids)
        return merged

    def _peers_delta(self, since: int) -> tuple[bytes, dict[str, tuple[int, int]]]:
        found = self._peer_deltas.get(since)
        if found is None:
            m = self._merge(since)
            found = self._peer_deltas[since] = _spans(
                (i, self.peers.get(i) or wrap(NS.REMOVED_PEERS_FIELD_NUMBER, i.encode()))
                for i in sorted(m.peers))
        return found

    def _shared_delta(self, since: int, before: frozenset[str], now: frozenset[str]) -> bytes:
        """What changed since round `since` for a node on `before` then and `now` now:
        networks and endpoints, with what it no longer sees removed."""
        key = (since, before, now)
        data = self._deltas.get(key)
        if data is not None:
            return data
        self.shared_builds += 1
        m = self._merge(since)
        parts = [self.networks[n] for n in sorted((m.networks & before & now) | (now - before))]
        parts.append(_strings(NS.REMOVED_NETWORKS_FIELD_NUMBER, sorted(before - now)))
        candidates = set(m.services) | set(m.tasks)
        if before != now:
            candidates |= set(self.services)
        entries: list[tuple[str, str, bytes]] = []
        removed: list[str] = []
        for service_id in candidates:
            service = self.services.get(service_id)
            then = (m.services[service_id] if service_id in m.services
                    else service.networks if service is not None else None)
            was = then is not None and bool(then & before)
            visible = service is not None and bool(service.networks & now)
            if was and not visible:
                removed.append(service_id)
            elif visible and not was:
                assert service is not None
                entries.append((service.name, service_id, self._whole_endpoint(service_id)))
            elif visible and (service_id in m.services or service_id in m.tasks):
                assert service is not None
                entries.append((service.name, service_id,
                                wrap(NS.ENDPOINTS_FIELD_NUMBER,
                                     service.header + self._tasks_delta(
                                         service_id, m.tasks.get(service_id, set())))))
        parts += [data for _, _, data in sorted(entries)]
        parts.append(_strings(NS.REMOVED_ENDPOINTS_FIELD_NUMBER, sorted(removed)))
        data = self._deltas[key] = b"".join(parts)
        return data

    def _tasks_delta(self, service_id: str, task_ids: set[str]) -> bytes:
        tasks = self.tasks.get(service_id, {})
        here = sorted((tasks[i] for i in task_ids if i in tasks), key=lambda t: t.key)
        gone = sorted(i for i in task_ids if i not in tasks)
        return (b"".join(t.data for t in here)
                + _strings(SE.REMOVED_TASKS_FIELD_NUMBER, gone))


def _put(parts: dict[str, bytes], key: str, data: bytes | None) -> bool:
    """Set or (None) drop a part; whether it changed."""
    if parts.get(key) == data:
        return False
    if data is None:
        del parts[key]
    else:
        parts[key] = data
    return True


def _spans(items: Iterable[tuple[str, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The parts joined, and where each one's bytes are (to cut a node's own out)."""
    spans: dict[str, tuple[int, int]] = {}
    chunks = []
    offset = 0
    for key, data in items:
        spans[key] = (offset, offset + len(data))
        offset += len(data)
        chunks.append(data)
    return b"".join(chunks), spans
