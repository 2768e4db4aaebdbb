"""NetworkState deltas: the manager sends a session its whole state, then deltas against what
it last pulled (netpush/netstate); the node merges them (common/netdelta.NetworkView) into
exactly the whole state the manager would have built for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyswarm.common.netdelta import NetworkView, StaleDelta
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.dispatcher import netstate
from pyswarm.manager.dispatcher.netpush import NetworkPush
from pyswarm.manager.dispatcher.netstate import NetworkModel, takes_connections
from pyswarm.manager.store import MemoryBackend, ReadTx, Store, WriteTx
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent.agent import Agent

S = opb.TaskState


# ---- the reference: a node's whole state, straight from a snapshot ---------------------------

def reference(view: ReadTx, node_id: str) -> cpb.NetworkState:
    """What the manager built for a node before deltas, written plainly."""
    out = cpb.NetworkState()
    for node in sorted(view.all("node"), key=lambda n: n.id):  # type: ignore[attr-defined]
        if node.status.addr and node.id != node_id:  # type: ignore[attr-defined]
            out.peers.add(node_id=node.id, addr=node.status.addr,  # type: ignore
                          ready=node.status.state == opb.NODE_STATE_READY)  # type: ignore
    allocated = {n.id: n for n in view.all("network") if n.subnet}  # type: ignore
    me: Any = view.get("node", node_id)
    joined = ({a.network_id for a in me.attachments if a.network_id in allocated}
              if me is not None else set())
    out.networks.extend(allocated[i] for i in sorted(joined))
    if me is not None:
        out.node_attachments.extend(a for a in me.attachments if a.network_id in joined)
    services: Any = view.all("service")
    for service in sorted(services, key=lambda s: (s.spec.name, s.id)):
        found, _ = nets.attachment_targets(view, service.spec)
        if {n.id for n, _ in found} & joined:
            tasks: Any = view.find("task", service_id=service.id)
            out.endpoints.append(netstate.endpoint(
                service, [t for t in tasks if takes_connections(t)]))
    return out


def same(state: cpb.NetworkState, want: cpb.NetworkState) -> bool:
    """Equal but for the version (a state unchanged over rounds keeps its version)."""
    a, b = cpb.NetworkState(), cpb.NetworkState()
    a.CopyFrom(state)
    b.CopyFrom(want)
    a.version = b.version = 0
    return a == b


# ---- a small cluster the property test writes at random -----------------------------------

NODES = ["n1", "n2", "n3", "n4"]
NETS = ["na", "nb", "nc"]
SERVICES = ["s1", "s2", "s3"]
TASKS = [f"t{i}" for i in range(8)]


def _subset(items: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(items), unique=True, max_size=len(items))


OPS = st.one_of(
    st.tuples(st.just("node"), st.sampled_from(NODES), st.sampled_from(["", "a", "b"]),
              st.booleans(), _subset(NETS), st.integers(0, 1)),
    st.tuples(st.just("node-delete"), st.sampled_from(NODES)),
    st.tuples(st.just("network"), st.sampled_from(NETS), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("network-delete"), st.sampled_from(NETS)),
    st.tuples(st.just("service"), st.sampled_from(SERVICES), _subset(NETS), st.booleans(),
              st.integers(0, 2)),
    st.tuples(st.just("service-delete"), st.sampled_from(SERVICES)),
    st.tuples(st.just("task"), st.sampled_from(TASKS), st.sampled_from(NODES), st.booleans(),
              st.booleans(), st.integers(1, 3), _subset(NETS)),
    st.tuples(st.just("task-delete"), st.sampled_from(TASKS)),
    st.tuples(st.just("round")),
    st.tuples(st.just("round")),
    st.tuples(st.just("pull"), st.integers(0, 2)),
    st.tuples(st.just("pull"), st.integers(0, 1)),
    st.tuples(st.just("reconnect"), st.integers(0, 2)),
)


def _write(tx: WriteTx, op: tuple[Any, ...]) -> None:
    kind, name = op[0], op[1]
    if kind.endswith("-delete"):
        kind = kind[:-len("-delete")]
        if tx.get(kind, name) is not None:
            tx.delete(kind, name)
        return
    old: Any = tx.get(kind, name)
    obj: Any = {"node": opb.Node, "network": opb.Network, "service": opb.Service,
                "task": opb.Task}[kind]()
    obj.id = name
    if old is not None:
        obj.meta.CopyFrom(old.meta)
    if kind == "node":
        _, _, addr, ready, attached, variant = op
        obj.status.addr = f"198.18.{ord(addr)}.{name[1:]}" if addr else ""
        obj.status.state = opb.NODE_STATE_READY if ready else opb.NODE_STATE_DOWN
        for network in attached:
            obj.attachments.add(network_id=network,
                                addresses=[f"10.{NETS.index(network)}.{variant}.{name[1:]}/24"])
    elif kind == "network":
        _, _, allocated, vni = op
        obj.spec.name = f"net-{name}"
        obj.subnet = f"10.{NETS.index(name)}.0.0/16" if allocated else ""
        obj.vni = 4097 + vni
    elif kind == "service":
        _, _, targets, by_name, variant = op
        obj.spec.name = f"stack_{name}"
        obj.spec.labels["com.docker.stack.namespace"] = "stack"
        obj.spec.endpoint.mode = "dnsrr" if variant == 2 else "vip"
        for network in targets:
            obj.spec.task.networks.add(target=f"net-{network}" if by_name else network,
                                       aliases=[f"alias{variant}"])
            if variant != 2:
                obj.endpoint.virtual_ips.add(network_id=network,
                                             addr=f"10.{NETS.index(network)}.255.{variant}")
        obj.endpoint.ports.add(protocol="tcp", target_port=80, published_port=8000 + variant)
    else:
        _, _, node, running, desired, slot, attached = op
        service = SERVICES[TASKS.index(name) % len(SERVICES)]  # a task's service never changes
        obj.service_id = service
        obj.service_name = f"stack_{service}"
        obj.slot = slot
        obj.node_id = node
        obj.status.state = S.TASK_STATE_RUNNING if running else S.TASK_STATE_STARTING
        obj.desired_state = S.TASK_STATE_RUNNING if desired else S.TASK_STATE_SHUTDOWN
        for network in attached:
            obj.networks.add(network_id=network,
                             addresses=[f"10.{NETS.index(network)}.1.{TASKS.index(name)}/16"])
    if old is None:
        tx.create(obj)
    else:
        tx.update(obj)


class Session:
    """One node's session as the dispatcher drives it: notified, it pulls and applies."""

    def __init__(self, push: NetworkPush, node_id: str, key: str) -> None:
        self.push, self.node_id, self.key = push, node_id, key
        self.view = NetworkView(node_id)
        self.notified = True  # its first state: pulled once ready, unasked
        self.wholes = self.deltas = 0  # wholes: after the first
        push.add(key, node_id, self._notify)

    def _notify(self) -> None:
        assert not self.notified, "one notice until the session pulls"
        self.notified = True

    def pull(self) -> cpb.NetworkState | None:
        self.notified = False
        data = self.push.pull(self.key)
        if data is None:
            return None
        message = cpb.NetworkState.FromString(data)
        before = self.view.version
        if message.base_version:
            self.deltas += 1
        elif before:  # a whole state again (version 0, an empty store's, is no base)
            self.wholes += 1
        self.view.apply(message)
        assert self.view.version == self.push.model.revision >= before  # never older
        return message


async def _random_run(ops: list[tuple[Any, ...]], log_rounds: int) -> list[Session]:
    store = await Store.open(MemoryBackend())
    push = NetworkPush(store)
    push.model = NetworkModel(log_rounds=log_rounds)
    push.open()
    sessions = [Session(push, node_id, node_id) for node_id in ("n1", "n2", "n3")]
    generation = 0

    def check() -> None:
        view = push.model.view
        assert view is not None
        for s in sessions:
            if not s.notified:  # told nothing: its node has the state of the last round
                assert same(s.view.state(), reference(view, s.node_id)), s.node_id

    for op in ops:
        if op[0] == "round":
            await push.step()
            if sessions[0].notified:  # the first session keeps up, the others pull below
                sessions[0].pull()
        elif op[0] == "pull":
            if sessions[op[1]].notified:
                sessions[op[1]].pull()
        elif op[0] == "reconnect":
            old = sessions[op[1]]
            push.remove(old.key)
            generation += 1
            sessions[op[1]] = Session(push, old.node_id, f"{old.node_id}.{generation}")
        else:
            await store.update(lambda tx, op=op: _write(tx, op))
        check()
    await push.step()
    for s in sessions:
        if s.notified:
            s.pull()
    check()
    await push.stop()
    return sessions


# A cluster to start from (or not): every network allocated, nodes on them, services and
# tasks on them; then the sessions get their first states.
SEED: list[tuple[Any, ...]] = [
    *[("network", n, True, 0) for n in NETS],
    ("node", "n1", "a", True, ["na"], 0), ("node", "n2", "a", True, ["na", "nb"], 0),
    ("node", "n3", "a", True, ["nb", "nc"], 0), ("node", "n4", "a", True, NETS, 0),
    ("service", "s1", ["na"], False, 0), ("service", "s2", ["nb"], True, 1),
    ("service", "s3", ["na", "nc"], False, 2),
    *[("task", t, NODES[i % 4], True, True, i % 3 + 1, NETS[: i % 3 + 1])
      for i, t in enumerate(TASKS) if i % 4],
    ("round",), ("pull", 1), ("pull", 2)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=60), seeded=st.booleans(),
       log_rounds=st.sampled_from([2, 1000]))
def test_deltas_applied_by_a_node_give_exactly_its_whole_state(
        ops: list[tuple[Any, ...]], seeded: bool, log_rounds: int) -> None:
    sessions = asyncio.run(_random_run((SEED if seeded else []) + ops, log_rounds))
    if log_rounds == 1000:  # the log holds every round: one whole state per session
        assert all(s.wholes == 0 for s in sessions)


def test_a_slow_session_gets_one_delta_over_the_rounds_it_skipped() -> None:
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        ops: list[tuple[Any, ...]] = [
            ("network", "na", True, 0), ("network", "nb", True, 0),
            ("node", "n1", "a", True, ["na"], 0), ("node", "n2", "a", True, ["na", "nb"], 0),
            ("service", "s1", ["na"], False, 0), ("service", "s2", ["nb"], True, 1)]
        for op in ops:
            await store.update(lambda tx, op=op: _write(tx, op))
        push = NetworkPush(store)
        push.open()
        fast, slow = Session(push, "n1", "fast"), Session(push, "n2", "slow")
        fast.pull()
        slow.pull()
        later: list[tuple[Any, ...]] = [
            ("task", "t0", "n1", True, True, 1, ["na"]),        # s1 gets a task
            ("task", "t3", "n2", True, True, 2, ["na"]),        # and another
            ("node", "n3", "a", True, ["na"], 0),               # a peer joins
            ("task", "t0", "n1", True, False, 1, ["na"]),       # the first stops
            ("node", "n2", "a", True, ["na"], 0),               # slow leaves nb
            ("service", "s1", ["na"], False, 2),                # s1 changes (dnsrr)
            ("node", "n3", "b", False, ["na"], 0)]              # the peer moves, down
        for op in later:
            await store.update(lambda tx, op=op: _write(tx, op))
            await push.step()
            if fast.notified:
                fast.pull()
        assert slow.notified and fast.deltas >= 5
        delta = slow.pull()  # one delta for seven rounds
        assert delta is not None and delta.base_version > 0
        assert [p.node_id for p in delta.peers] == ["n3"]
        assert list(delta.removed_networks) == ["nb"] and list(delta.removed_endpoints) == ["s2"]
        (s1,) = delta.endpoints
        assert s1.mode == "dnsrr" and [t.task_id for t in s1.tasks] == ["t3"]
        for s in (fast, slow):
            assert same(s.view.state(), reference(store.view(), s.node_id))
        assert slow.pull() is None  # nothing more
        await push.stop()

    asyncio.run(body())


def test_one_task_starting_among_ten_thousand_sends_each_node_a_few_hundred_bytes() -> None:
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        nodes, services, per_service = 1000, 20, 500
        node_ids = [f"node{i:04d}xxxxxxxxxxxxxxxxxx" for i in range(nodes)]  # 25 chars

        def cluster(tx: WriteTx) -> None:
            network_ids = [f"net{name}xxxxxxxxxxxxxxxxxxxxxx"[:25] for name in ("front", "back")]
            for j, name in enumerate(("front", "back")):
                tx.create(opb.Network(id=network_ids[j],
                                      spec=opb.NetworkSpec(name=name, driver="overlay"),
                                      subnet=f"10.{20 + j}.0.0/16", vni=4097 + j))
            for i, node_id in enumerate(node_ids):
                node = opb.Node(id=node_id)
                node.status.addr = f"198.18.{i // 250}.{i % 250}"
                node.status.state = opb.NODE_STATE_READY
                for j, network_id in enumerate(network_ids):
                    if i % 3 == 2 and j == 1:
                        continue  # a third of the nodes is on "front" only
                    node.attachments.add(network_id=network_id,
                                         addresses=[f"10.{20 + j}.{200 + i // 250}.{i % 250}/16"])
                tx.create(node)
            for k in range(services):
                network_id = network_ids[k % 2]
                service = opb.Service(id=f"svc{k:02d}xxxxxxxxxxxxxxxxxxxx")
                service.spec.name = f"scale_web{k:02d}"
                service.spec.task.networks.add(target=network_id)
                service.endpoint.virtual_ips.add(network_id=network_id,
                                                 addr=f"10.{20 + k % 2}.255.{k}")
                tx.create(service)
                for slot in range(1, per_service + 1):
                    task = _running(f"task{k:02d}{slot:04d}xxxxxxxxxxxxxxx", service, slot,
                                    node_ids[(k * per_service + slot) % nodes], network_id)
                    tx.create(task)

        await store.update(cluster)
        push = NetworkPush(store)
        push.open()
        model = push.model
        sessions = {n: Session(push, n, n) for n in node_ids}
        sample = [sessions[node_ids[i]] for i in (0, 1, 2)]  # these apply what they get
        whole = 0
        for s in sessions.values():
            if s in sample:
                s.pull()
            else:
                s.notified = False
                whole = max(whole, len(push.pull(s.key) or b""))
        assert whole > 500_000  # what every node was sent at each change before deltas
        built = (model.whole_states, model.shared_builds, model.endpoint_builds)
        assert built[1] == 2 and built[2] == services  # two groups; each endpoint once

        service: Any = store.view().get("service", "svc00xxxxxxxxxxxxxxxxxxxx")
        await store.update(lambda tx: tx.create(_running(
            "tasknewxxxxxxxxxxxxxxxxxx", service, per_service + 1, node_ids[1],
            service.spec.task.networks[0].target)))
        await push.step()
        told = [s for s in sessions.values() if s.notified]
        assert len(told) == nodes  # every node is on "front", svc00's network
        sizes = []
        for s in told:
            if s in sample:
                delta = s.pull()
                assert delta is not None and delta.base_version
                sizes.append(delta.ByteSize())
            else:
                s.notified = False
                sizes.append(len(push.pull(s.key) or b""))
        assert max(sizes) < 500, max(sizes)
        for s in sample:
            assert same(s.view.state(), reference(store.view(), s.node_id))
        # No whole state, no whole endpoint: one delta shared by each group of nodes.
        assert model.whole_states == built[0] and model.endpoint_builds == built[2]
        assert model.shared_builds - built[1] == 2
        await push.stop()

    asyncio.run(body())


def _running(task_id: str, service: opb.Service, slot: int, node_id: str,
             network_id: str) -> opb.Task:
    task = opb.Task(id=task_id, service_id=service.id, service_name=service.spec.name,
                    slot=slot, node_id=node_id, desired_state=S.TASK_STATE_RUNNING)
    task.status.state = S.TASK_STATE_RUNNING
    task.networks.add(network_id=network_id, addresses=[f"10.20.{slot // 250}.{slot % 250}/16"])
    return task


def test_a_session_behind_what_the_log_holds_gets_its_whole_state() -> None:
    async def body() -> None:
        store = await Store.open(MemoryBackend())
        await store.update(lambda tx: _write(tx, ("node", "n1", "a", True, [], 0)))
        push = NetworkPush(store)
        push.model = NetworkModel(log_rounds=2)
        push.open()
        s = Session(push, "n1", "n1")
        s.pull()
        for i in range(2, 5):
            await store.update(lambda tx, i=i: _write(tx, ("node", f"n{i}", "a", True, [], 0)))
            await push.step()
        state = s.pull()
        assert state is not None and state.base_version == 0 and len(state.peers) == 3
        assert same(s.view.state(), reference(store.view(), "n1"))
        await push.stop()

    asyncio.run(body())


# ---- the node's side -----------------------------------------------------------------------

def test_a_view_merges_deltas_drops_itself_and_refuses_a_delta_it_cannot_apply() -> None:
    view = NetworkView("me")
    whole = cpb.NetworkState(version=5, peers=[cpb.Peer(node_id="b", addr="2"),
                                               cpb.Peer(node_id="me", addr="0"),
                                               cpb.Peer(node_id="a", addr="1")])
    web = whole.endpoints.add(service_id="w", service_name="web")
    web.tasks.add(task_id="t2", name="web.2")
    web.tasks.add(task_id="t1", name="web.1")
    whole.endpoints.add(service_id="d", service_name="db")
    state = view.apply(whole)
    assert [p.node_id for p in state.peers] == ["a", "b"]           # by id, itself dropped
    assert [e.service_name for e in state.endpoints] == ["db", "web"]
    assert [t.name for t in state.endpoints[1].tasks] == ["web.1", "web.2"]

    delta = cpb.NetworkState(version=7, base_version=5, removed_peers=["a"],
                             removed_endpoints=["d"])
    changed = delta.endpoints.add(service_id="w", service_name="web", mode="dnsrr",
                                  removed_tasks=["t1"])
    changed.tasks.add(task_id="t3", name="web.3")
    state = view.apply(delta)
    assert state.version == 7 and state.base_version == 0
    assert [p.node_id for p in state.peers] == ["b"]
    (web,) = state.endpoints
    assert web.mode == "dnsrr" and [t.task_id for t in web.tasks] == ["t2", "t3"]
    assert not web.removed_tasks and view.task_ids("w") == ["t2", "t3"]

    with pytest.raises(StaleDelta):
        view.apply(cpb.NetworkState(version=9, base_version=6, removed_peers=["b"]))
    assert view.version == 7 and list(view.peers) == ["b"]  # unchanged
    assert view.apply(cpb.NetworkState(version=3)).peers == []  # whole: a reset


def test_the_agent_hands_on_whole_states_and_reconnects_on_a_stale_delta() -> None:
    received: list[cpb.NetworkState] = []
    agent = Agent(engine=None, watcher=None, node_id="me",  # type: ignore[arg-type]
                  channel_factory=lambda _: None,  # type: ignore[arg-type,return-value]
                  on_network_state=received.append)

    def message(**network: Any) -> cpb.SessionMessage:
        return cpb.SessionMessage(session_id="s", heartbeat_period_ms=60_000,
                                  network=cpb.NetworkState(**network))

    stream = [message(version=2, peers=[cpb.Peer(node_id="a"), cpb.Peer(node_id="me")]),
              message(version=3, base_version=2, peers=[cpb.Peer(node_id="b")]),
              message(version=5, base_version=4, removed_peers=["a"])]  # one was missed

    class Call:  # a session's stream: what the node writes, and what it reads
        def __init__(self) -> None:
            self.written: list[cpb.SessionUp] = []

        async def write(self, message: cpb.SessionUp) -> None:
            self.written.append(message)

        async def __aiter__(self) -> Any:
            for m in stream:
                yield m

        def cancel(self) -> None:
            pass

    call = Call()

    class Stub:
        def Session(self) -> Any:  # noqa: N802 - gRPC's name
            return call

    with pytest.raises(StaleDelta):
        asyncio.run(agent._session(Stub()))
    assert [[p.node_id for p in s.peers] for s in received] == [["a"], ["a", "b"]]
    assert agent.network_state is received[-1] and agent.network_state.version == 3
    assert call.written[0].open.node_id == "me"
