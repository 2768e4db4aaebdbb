"""A task's networks and DNS in the container request, and the controller's wait for them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.agent import controller as controller_module
from pyswarm.worker.agent.controller import Report, TaskController
from pyswarm.worker.agent.spec import container_request, missing_networks

S = opb.TaskState


def task(*networks: tuple[str, str]) -> opb.Task:
    t = opb.Task(id="t1", service_id="s1", service_name="stack_web", slot=1, node_id="n1",
                 desired_state=S.TASK_STATE_RUNNING,
                 status=opb.TaskStatus(state=S.TASK_STATE_ASSIGNED))
    t.spec.container.image = "busybox"
    t.spec.container.extra_hosts.append("registry.local:192.0.2.10")
    for network_id, cidr in networks:
        t.networks.add(network_id=network_id, addresses=[cidr])
    return t


def test_request_carries_overlays_in_task_order_dns_and_extra_hosts() -> None:
    t = task(("back", "10.214.2.5/24"), ("front", "10.214.1.5/24"))
    req = container_request(t, "node-1", dns=["10.213.0.1"])
    assert [(o.network_id, o.address) for o in req.overlays] == [
        ("back", "10.214.2.5/24"), ("front", "10.214.1.5/24")]
    assert list(req.dns) == ["10.213.0.1"] and req.network == "bridge"
    assert list(req.extra_hosts) == ["registry.local:192.0.2.10"]
    assert not container_request(task(), "node-1").dns  # no service DNS: the host's resolvers


def test_missing_networks() -> None:
    t = task(("back", "10.214.2.5/24"), ("front", "10.214.1.5/24"))
    assert missing_networks(t, {"front"}) == ["back"]
    assert missing_networks(t, {"front", "back", "other"}) == []


class FakeEngine:
    def __init__(self) -> None:
        self.networks: dict[str, object] = {}
        self.requests: list[Any] = []
        self.images = SimpleNamespace(get=lambda ref: object())
        self.network = SimpleNamespace(
            overlays=SimpleNamespace(networks=lambda: dict(self.networks)),
            service_dns="10.213.0.1")

    def create(self, request: Any) -> Any:
        self.requests.append(request)
        return SimpleNamespace(id="c" * 64, pid=42, state="running")


class FakeWatcher:
    def watch(self, cid: str) -> None:
        pass

    async def wait(self, record: Any) -> Any:
        await asyncio.Event().wait()  # never exits in these tests


def make(engine: FakeEngine, t: opb.Task) -> tuple[TaskController, list[int]]:
    states: list[int] = []

    def report(r: Report) -> None:
        states.append(r.status.state)

    c = TaskController(t, engine, FakeWatcher(), report, "node-1")  # type: ignore[arg-type]
    return c, states


async def run_until(c: TaskController, states: list[int], state: int) -> None:
    runner = asyncio.ensure_future(c.run())
    try:
        for _ in range(200):
            if state in states or runner.done():
                break
            await asyncio.sleep(0.05)
    finally:
        runner.cancel()


def test_task_waits_for_its_network_then_starts_with_it() -> None:
    async def go() -> None:
        engine = FakeEngine()
        c, states = make(engine, task(("back", "10.214.2.5/24")))
        runner = asyncio.ensure_future(c.run())
        for _ in range(40):
            await asyncio.sleep(0.01)
        assert c.status.state == S.TASK_STATE_PREPARING and not engine.requests
        engine.networks["back"] = object()  # the NetworkState has arrived
        for _ in range(100):
            if c.status.state == S.TASK_STATE_RUNNING:
                break
            await asyncio.sleep(0.05)
        runner.cancel()
        assert c.status.state == S.TASK_STATE_RUNNING
        (req,) = engine.requests
        assert [o.network_id for o in req.overlays] == ["back"]
        assert list(req.dns) == ["10.213.0.1"]

    asyncio.run(go())


def test_task_whose_network_never_comes_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "NETWORK_WAIT", 0.3)

    async def go() -> None:
        engine = FakeEngine()
        c, states = make(engine, task(("back", "10.214.2.5/24")))
        await run_until(c, states, S.TASK_STATE_REJECTED)
        assert c.status.state == S.TASK_STATE_REJECTED and not engine.requests
        assert "network back is not available on this node" in c.status.err

    asyncio.run(go())
