"""Each node's whole NetworkState, built from a 3-node cluster the real loops allocated
(deltas: test_netdelta.py)."""

from __future__ import annotations

import asyncio

from pyswarm.common.netdelta import NetworkView
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.dispatcher.netpush import NetworkPush, matters
from pyswarm.manager.dispatcher.netstate import NetworkModel
from pyswarm.manager.loops.tasks import copy
from pyswarm.manager.store import Event
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from tests.unit.test_allocator_loop import (
    INGRESS,
    Cluster,
    network_spec,
    run,
    service_spec,
    until,
)

S = opb.TaskState


async def _cluster() -> tuple[Cluster, dict[str, opb.Task]]:
    """web (3 replicas, port 8080 in ingress mode) on "front"; db (dnsrr) on "back", placed
    on one node. Two web tasks and the db task run; the third web task is only assigned."""
    c = await Cluster.start(nodes=3)
    await c.deploy([service_spec("web", replicas=3, networks=("front",),
                                 ports=((80, 8080, INGRESS),)),
                    service_spec("db", networks=("back",), mode="dnsrr", aliases=("pg",))],
                   [network_spec("front"), network_spec("back")])
    web = sorted(await c.placed("s_web", 3), key=lambda t: t.slot)
    (db,) = await c.placed("s_db", 1)
    running = [web[0].id, web[1].id, db.id]
    await c.write(lambda tx: [tx.update(_state(tx.get("task", i), S.TASK_STATE_RUNNING))
                              for i in running])
    return c, {"web1": web[0], "web2": web[1], "web3": web[2], "db": db}


def _state(task: opb.Task, state: int) -> opb.Task:
    task = copy(task)
    task.status.state = state  # type: ignore[assignment]
    return task


def _states(c: Cluster) -> dict[str, cpb.NetworkState]:
    model = NetworkModel()
    model.load(c.store.view())
    return {f"n{i}": model.state(f"n{i}") for i in (1, 2, 3)}


def _settled(c: Cluster, tasks: dict[str, opb.Task]) -> bool:
    """Every node has its attachments: ingress, and the overlays of its tasks."""
    ingress = nets.ingress(c.store.view())
    assert ingress is not None
    want: dict[str, set[str]] = {f"n{i}": {ingress.id} for i in (1, 2, 3)}
    for task in tasks.values():
        want[task.node_id].update(a.network_id for a in task.networks
                                  if a.network_id != ingress.id)
    return all({a.network_id for a in c.node(n).attachments} == nets_
               for n, nets_ in want.items())


def test_a_nodes_state_has_its_peers_networks_addresses_and_the_running_tasks() -> None:
    async def body() -> None:
        c, tasks = await _cluster()
        await until(lambda: _settled(c, tasks), "node attachments")
        states = _states(c)
        front, back = c.network("s_front"), c.network("s_back")
        ingress = nets.ingress(c.store.view())
        assert ingress is not None
        for node_id, state in states.items():
            assert state.version == c.store.revision
            assert [(p.node_id, p.addr, p.ready) for p in state.peers] == [
                (f"n{i}", f"198.18.0.{i}", True) for i in (1, 2, 3) if f"n{i}" != node_id]
            node = c.node(node_id)
            assert list(state.node_attachments) == list(node.attachments)
            joined = {a.network_id for a in node.attachments}
            assert {n.id for n in state.networks} == joined
            assert ingress.id in joined
            names = [e.service_name for e in state.endpoints]
            # web is on ingress, so every node sees it; db only where "back" is.
            assert names == (["s_db", "s_web"] if back.id in joined else ["s_web"])
            web = next(e for e in state.endpoints if e.service_name == "s_web")
            assert list(web.aliases) == ["web"] and web.mode == "vip"
            assert [(p.target_port, p.published_port) for p in web.ports] == [(80, 8080)]
            assert {v.network_id for v in web.vips} == {front.id, ingress.id}
            assert [t.name for t in web.tasks] == ["s_web.1", "s_web.2"]  # running ones
            assert [t.task_id for t in web.tasks] == [tasks["web1"].id, tasks["web2"].id]
            assert web.tasks[0].node_id == tasks["web1"].node_id
            assert list(web.tasks[0].networks) == list(
                c.store.view().get("task", tasks["web1"].id).networks)
            if back.id in joined:
                db = next(e for e in state.endpoints if e.service_name == "s_db")
                assert db.mode == "dnsrr" and not db.vips
                assert list(db.aliases) == ["db", "pg"]
                assert [t.name for t in db.tasks] == ["s_db.1"]
        # A task asked to stop drops out at once, before it has stopped.
        await c.write(lambda tx: tx.update(_desired(tx.get("task", tasks["web1"].id))))
        for state in _states(c).values():
            web = next(e for e in state.endpoints if e.service_name == "s_web")
            assert [t.name for t in web.tasks] == ["s_web.2"]
        await c.stop()

    run(body)


def _desired(task: opb.Task) -> opb.Task:
    task = copy(task)
    task.desired_state = S.TASK_STATE_SHUTDOWN
    return task


def test_nodes_share_what_they_can_and_a_round_rebuilds_only_what_changed() -> None:
    async def body() -> None:
        c = await Cluster.start(nodes=3)
        await c.deploy([service_spec("web", replicas=1, ports=((80, 0, INGRESS),)),
                        service_spec("api", replicas=1, ports=((81, 0, INGRESS),))])
        await c.placed("s_web", 1)
        await c.placed("s_api", 1)
        await c.run_all()
        await until(lambda: all(c.node(f"n{i}").attachments for i in (1, 2, 3)), "ingress")
        push = NetworkPush(c.store)
        push.open()
        model = push.model
        views = {f"n{i}": NetworkView(f"n{i}") for i in (1, 2, 3)}
        for node_id, view in views.items():
            push.add(node_id, node_id, lambda: None)
            data = push.pull(node_id)
            assert data is not None
            view.apply(cpb.NetworkState.FromString(data))
        groups = {frozenset(a.network_id for a in c.node(n).attachments) for n in views}
        assert model.shared_builds == len(groups)  # joined once per set of networks
        assert model.endpoint_builds == 2          # each endpoint once, for every node
        assert push.pull("n1") is None             # nothing changed

        (web,) = c.tasks("s_web")
        await c.write(lambda tx: tx.update(_desired(tx.get("task", web.id))))
        await push.step()
        for node_id, view in views.items():
            data = push.pull(node_id)
            assert data is not None
            delta = cpb.NetworkState.FromString(data)
            assert delta.base_version == view.version  # a delta, against what it has
            (changed,) = delta.endpoints               # web alone, its task removed
            assert changed.service_name == "s_web" and not changed.tasks
            assert list(changed.removed_tasks) == [web.id]
            state = view.apply(delta)
            assert [len(e.tasks) for e in state.endpoints] == [1, 0]  # s_api, s_web
        assert model.whole_states == 3 and model.endpoint_builds == 2  # no whole state
        # A new session's whole state joins web's endpoint again, not api's.
        push.add("again", "n1", lambda: None)
        assert push.pull("again") is not None
        assert model.endpoint_builds == 3
        await push.stop()
        await c.stop()

    run(body)


def test_a_round_waits_until_what_was_pulled_has_drained() -> None:
    async def body() -> None:
        c = await Cluster.start(nodes=2)
        await c.deploy([service_spec("web", replicas=1, ports=((80, 0, INGRESS),))])
        (web,) = await c.placed("s_web", 1)
        await until(lambda: all(c.node(f"n{i}").attachments for i in (1, 2)), "ingress")
        pushes = {rate: NetworkPush(c.store, interval=0.01, bytes_per_second=rate)
                  for rate in (10.0, 1e9)}  # a whole state takes minutes / no time
        told: dict[float, int] = {rate: 0 for rate in pushes}
        for rate, push in pushes.items():
            await push.start()
            push.add("n1", "n1", lambda rate=rate: told.__setitem__(rate, told[rate] + 1))
            assert push.pull("n1") is not None  # the whole state: the debt to drain
        await c.write(lambda tx: tx.update(_state(tx.get("task", web.id),
                                                  S.TASK_STATE_RUNNING)))
        await until(lambda: told[1e9] == 1, "the unpaced push's round")
        await asyncio.sleep(0.3)
        assert told[10.0] == 0 and pushes[10.0].rounds == 0  # still draining
        for push in pushes.values():
            await push.stop()
        await c.stop()

    run(body)


def test_only_changes_a_node_could_see_start_a_round() -> None:
    svc = opb.Task(id="t", node_id="n1", desired_state=S.TASK_STATE_RUNNING)
    svc.status.state = S.TASK_STATE_STARTING
    running = _state(svc, S.TASK_STATE_RUNNING)
    reported = copy(running)
    reported.status.message = "still running"
    assert matters(Event("update", "task", running, svc))          # starts taking connections
    assert matters(Event("update", "task", _desired(running), running))  # stops
    assert not matters(Event("update", "task", reported, running))
    assert not matters(Event("update", "task", _state(svc, S.TASK_STATE_PREPARING), svc))
    node = opb.Node(id="n1")
    seen = copy(node)
    seen.description.hostname = "renamed"
    assert not matters(Event("update", "node", seen, node))
    down = copy(node)
    down.status.state = opb.NODE_STATE_READY
    assert matters(Event("update", "node", down, node))
