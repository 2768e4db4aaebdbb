"""Each filter alone: when it applies, what it accepts, how it explains failures."""

from __future__ import annotations

import pytest

from pyswarm.manager.scheduler.filters import (
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    ReadyFilter,
    ResourceFilter,
)
from pyswarm.manager.scheduler.nodeinfo import NodeInfo, build_node_infos
from tests.unit.cluster_builders import GB, NOW, S, make_node, make_service, make_task


def info(node=None, tasks=()):
    node = node or make_node("n1")
    return build_node_infos([node], tasks, NOW)[node.id]


def pending(**kw):
    return make_task("p", make_service(**kw), node="", state=S.TASK_STATE_PENDING)


@pytest.mark.parametrize("state, availability, ok", [
    ("ready", "active", True),
    ("ready", "pause", False),
    ("ready", "drain", False),
    ("down", "active", False),
    ("unknown", "active", False),
    ("disconnected", "active", False),
])
def test_ready_filter(state, availability, ok):
    flt = ReadyFilter()
    assert flt.applies(pending())
    assert flt.check(info(make_node("n1", state=state, availability=availability))) is ok


def test_ready_filter_explain():
    assert ReadyFilter().explain(1) == "1 node not available for new tasks"
    assert ReadyFilter().explain(3) == "3 nodes not available for new tasks"


def test_resource_filter_counts_live_tasks_reservations():
    svc = make_service(reserve_memory=3 * GB, reserve_cpus=1)
    running = [make_task(f"r{i}", svc, node="n1") for i in range(2)]
    done = make_task("done", svc, node="n1", state=S.TASK_STATE_COMPLETE)
    flt = ResourceFilter()
    assert flt.applies(pending(reserve_memory=2 * GB))
    node = make_node("n1", memory=8 * GB)
    assert flt.check(info(node, [*running, done]))            # 8 - 6 >= 2
    assert not flt.check(info(node, [*running, running[0]]))  # 8 - 9 < 2
    assert flt.explain(2) == "2 nodes had insufficient memory"


@pytest.mark.parametrize("cpus, memory, text", [
    (8, 0, "1 node had insufficient CPU"),
    (0, 16 * GB, "1 node had insufficient memory"),
    (8, 16 * GB, "1 node had insufficient resources"),
])
def test_resource_filter_explain_names_the_resource(cpus, memory, text):
    flt = ResourceFilter()
    flt.applies(pending(reserve_cpus=cpus, reserve_memory=memory))
    assert not flt.check(info(make_node("n1", cpus=4, memory=8 * GB)))
    assert flt.explain(1) == text


def test_resource_filter_skips_tasks_without_reservations():
    assert not ResourceFilter().applies(pending())


def test_constraint_filter():
    flt = ConstraintFilter()
    assert not ConstraintFilter().applies(pending())
    assert flt.applies(pending(constraints=["node.labels.zone == west"]))
    assert flt.check(info(make_node("n1", labels={"zone": "west"})))
    assert not flt.check(info(make_node("n1", labels={"zone": "east"})))
    assert flt.explain(1) == "1 node did not satisfy constraint node.labels.zone == west"


def test_constraint_filter_several_and_invalid():
    flt = ConstraintFilter()
    flt.applies(pending(constraints=["node.labels.a == 1", "node.labels.b == 2"]))
    assert not flt.check(info(make_node("n1", labels={"b": "2"})))
    assert not flt.check(info(make_node("n2", labels={"a": "1"})))
    assert flt.explain(2) == "2 nodes did not satisfy constraints"
    bad = ConstraintFilter()
    assert bad.applies(pending(constraints=["node.colour == red"]))
    assert not bad.check(info())
    assert 'invalid constraint "node.colour == red"' in bad.explain(1)


def test_host_port_filter():
    svc = make_service("web", host_ports=[8080])
    flt = HostPortFilter()
    assert not HostPortFilter().applies(pending())
    assert flt.applies(make_task("p", svc, node="", state=S.TASK_STATE_PENDING))
    assert flt.check(info())
    assert not flt.check(info(tasks=[make_task("w", svc, node="n1")]))
    assert flt.explain(1) == "host-mode port 8080/tcp in use on 1 node"


def test_max_replicas_filter():
    svc = make_service(max_replicas=2)
    flt = MaxReplicasFilter()
    assert not MaxReplicasFilter().applies(pending())
    assert flt.applies(make_task("p", svc, node="", state=S.TASK_STATE_PENDING))
    one = [make_task("a", svc, node="n1")]
    two = [*one, make_task("b", svc, node="n1")]
    assert flt.check(info(tasks=one))
    assert not flt.check(info(tasks=two))
    assert flt.explain(3) == "max replicas per node limit exceeded on 3 nodes"


def test_node_info_counts():
    svc = make_service(reserve_cpus=0.5, host_ports=[53])
    tasks = [make_task("a", svc, node="n1"),
             make_task("stopping", svc, node="n1", desired=S.TASK_STATE_SHUTDOWN),
             make_task("elsewhere", svc, node="gone")]
    failed = [make_task("f1", svc, node="n1", state=S.TASK_STATE_FAILED, at=NOW - 10),
              make_task("f2", svc, node="n1", state=S.TASK_STATE_FAILED, at=NOW - 3600),
              # Told to stop (its node went down, a scale-down): its end is no failure of
              # the service on that node, which must not be shunned when it is back.
              make_task("lost", svc, node="n1", state=S.TASK_STATE_FAILED, at=NOW - 5,
                        desired=S.TASK_STATE_SHUTDOWN)]
    got: NodeInfo = build_node_infos({"n1": make_node("n1")}, [*tasks, *failed], NOW)["n1"]
    assert got.tasks_by_service["svc"] == 1 and got.total_tasks == 1  # stopping not counted
    assert got.reserved.nano_cpus == 1_000_000_000                     # ... but it holds cpu
    assert got.host_ports == {(53, "tcp"): 2}  # held by each task until it ends
    assert got.recent_failures == {"svc": [NOW - 10]}
