"""The allocator loop in the manager's pipeline, over a real (in-memory) store: the
orchestrator creates NEW tasks, the allocator gives them addresses and makes them PENDING,
the scheduler places them; a fake worker moves placed tasks to RUNNING when asked.

`Cluster` here is also the harness of the NetworkState and dispatcher tests."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pyswarm.common import taskstate
from pyswarm.common.errors import Conflict
from pyswarm.manager import control
from pyswarm.manager.allocator import networks as nets
from pyswarm.manager.loops.allocator import AllocatorLoop
from pyswarm.manager.loops.orchestrator import Orchestrator
from pyswarm.manager.loops.scheduler import Scheduler
from pyswarm.manager.loops.tasks import copy
from pyswarm.manager.store import MemoryBackend, Store
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from tests.unit.cluster_builders import make_node

S = opb.TaskState
INGRESS = opb.PUBLISH_MODE_INGRESS
HOST = opb.PUBLISH_MODE_HOST


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def service_spec(name: str, *, replicas: int = 1, networks: tuple[str, ...] = ("default",),
                 ports: tuple[tuple[int, int, int], ...] = (), mode: str = "vip",
                 aliases: tuple[str, ...] = (), stack: str = "s") -> opb.ServiceSpec:
    """A stack service as the loader makes it: names scoped "<stack>_<name>"; ports are
    (target, published, publish mode)."""
    spec = opb.ServiceSpec(name=f"{stack}_{name}")
    spec.task.container.image = "busybox"
    spec.task.restart.delay_set = True  # replacements at once
    spec.replicated.replicas = replicas
    spec.endpoint.mode = mode
    for network in networks:
        spec.task.networks.add(target=f"{stack}_{network}", aliases=aliases)
    for target, published, publish in ports:
        spec.endpoint.ports.add(protocol="tcp", target_port=target, published_port=published,
                                publish_mode=publish)  # type: ignore[arg-type]
    return spec


def network_spec(name: str, subnet: str = "", stack: str = "s") -> opb.NetworkSpec:
    return opb.NetworkSpec(name=f"{stack}_{name}", driver="overlay", subnet=subnet)


class Cluster:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.allocator = AllocatorLoop(store)
        self._loops: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, nodes: int = 3, store: Store | None = None) -> Cluster:
        if store is None:
            store = await Store.open(MemoryBackend())
            await store.update(lambda tx: [tx.create(_node(i)) for i in range(1, nodes + 1)])
        cluster = cls(store)
        for loop in (Orchestrator(store).run, cluster.allocator.run, Scheduler(store).run):
            cluster._loops.append(asyncio.create_task(loop()))
        await until(lambda: nets.ingress(store.view()) is not None and all(
            n.attachments for n in store.view().all("node")), "ingress, every node on it")
        return cluster

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def deploy(self, services: list[opb.ServiceSpec],
                     networks: list[opb.NetworkSpec] | None = None, stack: str = "s") -> None:
        if networks is None:
            networks = [network_spec("default", stack=stack)]
        req = cpb.DeployStackRequest(name=stack, services=services, networks=networks)
        await self.store.update(lambda tx: control.deploy_stack(tx, req))

    def tasks(self, service: str = "") -> list[opb.Task]:
        view = self.store.view()
        if not service:
            return view.all("task")  # type: ignore[return-value]
        found = view.find("service", name=service)
        return view.find("task", service_id=found[0].id) if found else []  # type: ignore

    def service(self, name: str) -> opb.Service:
        return self.store.view().find("service", name=name)[0]  # type: ignore[return-value]

    def network(self, name: str) -> opb.Network:
        return self.store.view().find("network", name=name)[0]  # type: ignore[return-value]

    def node(self, node_id: str) -> opb.Node:
        return self.store.view().get("node", node_id)  # type: ignore[return-value]

    async def placed(self, service: str, count: int) -> list[opb.Task]:
        """Wait until `count` live tasks of the service are placed on nodes."""
        def live() -> list[opb.Task]:
            return [t for t in self.tasks(service) if t.desired_state == S.TASK_STATE_RUNNING
                    and t.status.state >= S.TASK_STATE_ASSIGNED
                    and not taskstate.is_terminal(t.status.state)]
        await until(lambda: len(live()) == count, f"{count} tasks of {service} placed")
        return live()

    async def run_all(self) -> None:
        """The fake worker: every placed task that should run is RUNNING."""
        await self.store.update(lambda tx: [
            tx.update(_with_state(t, S.TASK_STATE_RUNNING)) for t in tx.all("task")
            if t.status.state == S.TASK_STATE_ASSIGNED and t.desired_state == S.TASK_STATE_RUNNING])

    async def end(self, task_id: str, state: int = S.TASK_STATE_FAILED) -> None:
        await self.store.update(lambda tx: tx.update(_with_state(tx.get("task", task_id), state)))

    async def write(self, fn: Callable[[Any], object]) -> None:
        await self.store.update(fn)


def _node(i: int) -> opb.Node:
    node = make_node(f"n{i}")
    node.status.addr = f"198.18.0.{i}"
    return node


def _with_state(task: Any, state: int) -> opb.Task:
    task = copy(task)
    task.status.state = state
    return task


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


def live_addresses(cluster: Cluster) -> list[str]:
    """Every address a live task or a node holds (one entry per holder)."""
    view = cluster.store.view()
    out = [a for t in view.all("task") if not taskstate.is_terminal(t.status.state)
           for n in t.networks for a in n.addresses]
    out += [a for n in view.all("node") for att in n.attachments for a in att.addresses]
    return out


# ---- tests ---------------------------------------------------------------------------------


def test_tasks_get_an_address_on_each_network_before_the_scheduler_sees_them() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", replicas=3, networks=("front", "back"),
                                     aliases=("www",))],
                       [network_spec("front"), network_spec("back")])
        tasks = await c.placed("s_web", 3)
        front, back = c.network("s_front"), c.network("s_back")
        for task in tasks:
            assert [a.network_id for a in task.networks] == [front.id, back.id]
            assert list(task.networks[0].aliases) == ["web", "www"]
            for attachment, network in zip(task.networks, (front, back), strict=True):
                addr = ipaddress.IPv4Interface(attachment.addresses[0])
                assert addr.network == ipaddress.IPv4Network(network.subnet)
            assert task.endpoint == c.service("s_web").endpoint
        assert len(set(live_addresses(c))) == len(live_addresses(c))
        await c.stop()

    run(body)


def test_only_services_publishing_in_ingress_mode_join_ingress() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", replicas=2, ports=((80, 8080, INGRESS),)),
                        service_spec("api", ports=((80, 0, INGRESS),)),
                        service_spec("db", ports=((5432, 5432, HOST),)),
                        service_spec("worker")])
        ingress = nets.ingress(c.store.view())
        assert ingress is not None and ingress.subnet == "10.212.0.0/16"
        assert ingress.vni == nets.INGRESS_VNI
        for name, joins in (("s_web", True), ("s_api", True), ("s_db", False),
                            ("s_worker", False)):
            for task in await c.placed(name, 2 if name == "s_web" else 1):
                on = {a.network_id for a in task.networks}
                assert (ingress.id in on) == joins, name
                assert c.network("s_default").id in on
        await c.stop()

    run(body)


def test_every_node_is_on_ingress_and_on_an_overlay_from_its_first_task_of_it() -> None:
    async def body() -> None:
        c = await Cluster.start(nodes=3)
        ingress = nets.ingress(c.store.view())
        assert ingress is not None

        def networks_of(node_id: str) -> set[str]:
            return {a.network_id for a in c.node(node_id).attachments}

        await until(lambda: all(networks_of(f"n{i}") == {ingress.id} for i in (1, 2, 3)),
                    "every node on ingress")
        await c.deploy([service_spec("web", replicas=1)])
        (task,) = await c.placed("s_web", 1)
        overlay = c.network("s_default").id
        await until(lambda: networks_of(task.node_id) == {ingress.id, overlay},
                    "the task's node on the overlay")
        others = [f"n{i}" for i in (1, 2, 3) if f"n{i}" != task.node_id]
        assert all(networks_of(n) == {ingress.id} for n in others)
        addr = next(a for a in c.node(task.node_id).attachments if a.network_id == overlay)
        assert ipaddress.IPv4Interface(addr.addresses[0]) in ipaddress.IPv4Network(
            c.network("s_default").subnet)
        # Scale to zero: the task ends, but the node keeps its place on the overlay (a
        # replacement landing there must not race the overlay's teardown) ...
        spec = service_spec("web", replicas=0)
        await c.deploy([spec])
        await until(lambda: all(t.desired_state > S.TASK_STATE_RUNNING
                                for t in c.tasks("s_web")), "shut down asked")
        await c.end(task.id, S.TASK_STATE_SHUTDOWN)
        await asyncio.sleep(0.3)
        assert networks_of(task.node_id) == {ingress.id, overlay}
        # ... until the network itself goes.
        service_id = c.service("s_web").id

        def remove(tx: Any) -> None:
            tx.delete("service", service_id)
            tx.delete("network", overlay)

        await c.store.update(remove)
        await until(lambda: networks_of(task.node_id) == {ingress.id}, "the node left it")
        await c.stop()

    run(body)


def test_tasks_wait_in_new_for_a_missing_network_and_go_on_once_it_exists() -> None:
    async def body() -> None:
        c = await Cluster.start()
        spec = service_spec("web")
        spec.task.networks.add(target="shared")  # an external network, not there yet
        await c.deploy([spec])
        await until(lambda: any(t.status.message == "network shared not found"
                                for t in c.tasks("s_web")), "the reason shown")
        assert all(t.status.state == S.TASK_STATE_NEW for t in c.tasks("s_web"))
        shared = opb.Network(id="sharedid")
        shared.spec.name = "shared"
        shared.spec.driver = "overlay"
        await c.write(lambda tx: tx.create(shared))
        (task,) = await c.placed("s_web", 1)
        assert "sharedid" in {a.network_id for a in task.networks}
        await c.stop()

    run(body)


def test_addresses_are_freed_when_a_task_ends_and_never_given_twice() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", replicas=4)])
        tasks = await c.placed("s_web", 4)
        await c.run_all()
        holder = c.allocator.alloc
        space = holder.spaces[c.network("s_default").id]
        gone = tasks[0]
        slot = space.slot(gone.networks[0].addresses[0])
        assert slot is not None and space.pool.owner(slot) == gone.id
        await c.end(gone.id)  # FAILED: the orchestrator replaces it
        replaced = await c.placed("s_web", 4)
        assert gone.id not in {t.id for t in replaced}
        assert space.pool.owner(slot) is None and not holder.holds(gone.id)
        # Freed addresses go back at the end of the line: the replacement got a new one.
        assert gone.networks[0].addresses[0] not in live_addresses(c)
        addrs = live_addresses(c)
        assert len(set(addrs)) == len(addrs)
        await c.stop()

    run(body)


def test_a_restarted_allocator_rebuilds_from_the_store_and_reuses_nothing_in_use() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", replicas=3, ports=((80, 0, INGRESS),))])
        tasks = await c.placed("s_web", 3)
        await c.run_all()
        await c.end(tasks[0].id, S.TASK_STATE_FAILED)
        await c.placed("s_web", 3)
        before_port = c.service("s_web").endpoint.ports[0].published_port
        await c.stop()

        again = await Cluster.start(store=c.store)
        await again.deploy([service_spec("web", replicas=3, ports=((80, 0, INGRESS),)),
                            service_spec("api", replicas=3, ports=((81, 0, INGRESS),))])
        await again.placed("s_api", 3)
        addrs = live_addresses(again)
        assert len(set(addrs)) == len(addrs)
        vips = [v.addr for s in again.store.view().all("service")
                for v in s.endpoint.virtual_ips]
        assert len(set(vips)) == len(vips)
        assert again.service("s_web").endpoint.ports[0].published_port == before_port
        assert again.service("s_api").endpoint.ports[0].published_port != before_port
        assert len(again.store.view().find("network", name="ingress")) == 1  # idempotent
        # The rebuilt memory holds exactly what live tasks and nodes hold.
        held = sum(len(space.pool) for space in again.allocator.alloc.spaces.values())
        assert held == len(addrs)
        await again.stop()

    run(body)


def test_published_ports_allocated_kept_and_conflicts_refused_whole_at_deploy() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", ports=((80, 8080, INGRESS), (443, 0, INGRESS)))])
        await c.placed("s_web", 1)
        ports = {(p.target_port, p.published_port) for p in c.service("s_web").endpoint.ports}
        dynamic = next(pub for target, pub in ports if target == 443)
        assert (80, 8080) in ports and 30000 <= dynamic <= 32767
        # An update keeps the port it was given.
        await c.deploy([service_spec("web", replicas=2,
                                     ports=((80, 8080, INGRESS), (443, 0, INGRESS)))])
        await c.placed("s_web", 2)
        assert dynamic in {p.published_port for p in c.service("s_web").endpoint.ports}
        # Another stack asking for 8080, or for the dynamic port: refused, nothing applied.
        revision = c.store.revision
        for port in (8080, dynamic):
            with pytest.raises(Conflict, match=f"port {port}/tcp is already published by "
                                               "service s_web"):
                await c.deploy([service_spec("other", ports=((80, port, INGRESS),),
                                             stack="t"),
                                service_spec("fine", stack="t")],
                               [network_spec("default", stack="t")], stack="t")
        assert c.store.revision == revision
        assert not c.store.view().find("service", name="t_fine")
        # Host-mode ports are each node's business: no clash with ingress ones.
        await c.deploy([service_spec("h", ports=((80, 8080, HOST),), stack="t")],
                       [network_spec("default", stack="t")], stack="t")
        await c.placed("t_h", 1)
        await c.stop()

    run(body)


def test_overlapping_subnets_are_refused_whole_at_deploy() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web")], [network_spec("default", "10.1.0.0/24")])
        await c.placed("s_web", 1)
        assert c.network("s_default").subnet == "10.1.0.0/24"
        revision = c.store.revision
        for subnet, clash in (("10.1.0.128/25", "network s_default"),
                              ("10.212.3.0/24", "the ingress network"),
                              ("10.215.0.0/24", "the service VIP pool")):
            with pytest.raises(Conflict, match=f"subnet {subnet} overlaps {clash}"):
                await c.deploy([service_spec("api", stack="t")],
                               [network_spec("default", subnet, stack="t")], stack="t")
        with pytest.raises(Conflict, match="already has subnet 10.1.0.0/24"):
            await c.deploy([service_spec("web")], [network_spec("default", "10.2.0.0/24")])
        assert c.store.revision == revision
        await c.stop()

    run(body)


def test_a_service_created_outside_a_deploy_with_a_taken_port_waits_and_says_why() -> None:
    async def body() -> None:
        c = await Cluster.start()
        await c.deploy([service_spec("web", ports=((80, 8080, INGRESS),))])
        await c.placed("s_web", 1)
        clash = service_spec("other", ports=((80, 8080, INGRESS),), stack="t")
        clash.task.networks[0].target = "s_default"
        await c.write(lambda tx: control.create_service(tx, clash))
        reason = "service t_other: port 8080/tcp is already published by another service"
        await until(lambda: [t.status.message for t in c.tasks("t_other")] == [reason],
                    "the reason shown")
        assert [t.status.state for t in c.tasks("t_other")] == [S.TASK_STATE_NEW]
        # Once the port is free, the waiting task goes on.
        await c.write(lambda tx: control.remove_service(tx, "s_web"))
        await c.placed("t_other", 1)
        await c.stop()

    run(body)


def test_a_deploy_larger_than_one_backend_commit_is_placed_whole() -> None:
    # etcd caps the operations of one transaction (--max-txn-ops, 128 by default): the
    # orchestrator's and the scheduler's passes must split their writes, or a service of a
    # few hundred replicas is never created or never placed (the loop failed at each pass).
    async def body() -> None:
        backend = MemoryBackend()
        backend.max_ops = 50
        store = await Store.open(backend)
        await store.batch(lambda tx: [tx.create(_node(i)) for i in range(1, 4)])
        c = await Cluster.start(store=store)
        await c.deploy([service_spec("web", replicas=200)])  # a /24 network holds 253
        tasks = await c.placed("s_web", 200)
        assert sorted(t.slot for t in tasks) == list(range(1, 201))
        assert {t.node_id for t in tasks} == {"n1", "n2", "n3"}
        await c.stop()

    run(body)
