"""The scheduling pass: spread, feasibility in batches, unplaced reasons, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from pyswarm.manager.scheduler.nodeinfo import build_node_infos
from pyswarm.manager.scheduler.pipeline import schedule
from tests.unit.cluster_builders import GB, NOW, S, make_node, make_service, make_task


def pending(svc, n, prefix=None):
    prefix = prefix or svc.id
    return [make_task(f"{prefix}.{i}", svc, slot=i + 1, node="", state=S.TASK_STATE_PENDING)
            for i in range(n)]


def place(tasks, nodes, live=(), failed=()):
    infos = build_node_infos(nodes, [*live, *failed], NOW)
    return schedule(tasks, infos, NOW)


def per_node(decisions):
    return Counter(node for _, node in decisions.assigned)


THREE = [make_node("n1"), make_node("n2"), make_node("n3")]


# ---- spread --------------------------------------------------------------------------

@pytest.mark.parametrize("replicas, nodes, expected", [
    (6, 3, [2, 2, 2]),
    (7, 3, [3, 2, 2]),
    (2, 3, [1, 1]),
    (10, 1, [10]),
])
def test_spread_evenly(replicas, nodes, expected):
    decisions = place(pending(make_service(), replicas), THREE[:nodes])
    assert sorted(per_node(decisions).values(), reverse=True) == expected
    assert not decisions.unplaced


def test_spread_counts_existing_tasks_of_the_service_first():
    svc = make_service()
    live = [make_task(f"l{i}", svc, node="n1") for i in range(2)]
    decisions = place(pending(svc, 4), THREE, live=live)
    assert per_node(decisions) == {"n2": 2, "n3": 2}


def test_then_fewest_tasks_overall():
    other = make_service("other")
    live = [make_task("o1", other, node="n1"), make_task("o2", other, node="n2")]
    decisions = place(pending(make_service(), 1), THREE, live=live)
    assert decisions.assigned == [("svc.0", "n3")]


def test_nodes_with_recent_failures_of_the_service_rank_last():
    svc = make_service()
    failed = [make_task("f", svc, node="n1", state=S.TASK_STATE_FAILED, at=NOW - 30)]
    decisions = place(pending(svc, 2), THREE, failed=failed)
    assert per_node(decisions) == {"n2": 1, "n3": 1}
    old = [make_task("f", svc, node="n1", state=S.TASK_STATE_FAILED, at=NOW - 600)]
    assert place(pending(svc, 1), THREE, failed=old).assigned == [("svc.0", "n1")]


def test_ties_break_by_node_id_and_results_are_reproducible():
    nodes = [make_node(f"n{i}") for i in (5, 3, 9, 1)]
    first = place(pending(make_service(), 3), nodes)
    assert [n for _, n in first.assigned] == ["n1", "n3", "n5"]
    assert place(pending(make_service(), 3), list(reversed(nodes))) == first


def test_placement_preference_spreads_over_label_values():
    nodes = [make_node("a1", labels={"zone": "a"}), make_node("a2", labels={"zone": "a"}),
             make_node("a3", labels={"zone": "a"}), make_node("b1", labels={"zone": "b"})]
    svc = make_service(preferences=["node.labels.zone"])
    decisions = place(pending(svc, 4), nodes)
    zones = Counter(node[0] for _, node in decisions.assigned)
    assert zones == {"a": 2, "b": 2}


def test_batches_of_several_services_see_each_other():
    a, b = make_service("a"), make_service("b")
    decisions = place([*pending(a, 3), *pending(b, 3)], THREE)
    assert sorted(per_node(decisions).values()) == [2, 2, 2]


# ---- feasibility and reasons ---------------------------------------------------------

def test_resources_prevent_placement_with_reason():
    nodes = [make_node("n1", memory=1 * GB), make_node("n2", memory=1 * GB),
             make_node("n3", state="down")]
    decisions = place(pending(make_service(reserve_memory=2 * GB), 2), nodes)
    assert decisions.assigned == []
    assert decisions.unplaced == dict.fromkeys(
        ["svc.0", "svc.1"],
        "no suitable node (1 node not available for new tasks; "
        "2 nodes had insufficient memory)")


def test_resources_run_out_within_a_batch():
    nodes = [make_node("n1", memory=4 * GB), make_node("n2", memory=2 * GB)]
    decisions = place(pending(make_service(reserve_memory=2 * GB), 4), nodes)
    assert per_node(decisions) == {"n1": 2, "n2": 1}
    assert decisions.unplaced == {"svc.3": "no suitable node (2 nodes had insufficient memory)"}


def test_max_replicas_per_node():
    decisions = place(pending(make_service(max_replicas=1), 4), THREE)
    assert sorted(per_node(decisions).values()) == [1, 1, 1]
    assert decisions.unplaced == {
        "svc.3": "no suitable node (max replicas per node limit exceeded on 3 nodes)"}


def test_host_port_conflicts():
    web = make_service("web", host_ports=[8080])
    live = [make_task("old", web, node="n1")]
    decisions = place(pending(web, 3), THREE, live=live)
    assert per_node(decisions) == {"n2": 1, "n3": 1}
    assert decisions.unplaced == {
        "web.2": "no suitable node (host-mode port 8080/tcp in use on 3 nodes)"}


def test_constraints_in_reason():
    nodes = [make_node("n1", labels={"zone": "east"}), make_node("n2", availability="pause")]
    decisions = place(pending(make_service(constraints=["node.labels.zone == west"]), 1),
                      nodes)
    assert decisions.unplaced == {"svc.0": "no suitable node (1 node not available for new "
                                           "tasks; 1 node did not satisfy constraint "
                                           "node.labels.zone == west)"}


def test_no_nodes_at_all():
    decisions = place(pending(make_service(), 1), [])
    assert decisions.unplaced == {"svc.0": "no suitable node (no nodes in the cluster)"}


def test_tasks_naming_their_node_are_checked_only_there():
    g = make_service("g", mode="global", reserve_memory=2 * GB)
    tasks = [make_task(f"g.{n}", g, slot=0, node=n, state=S.TASK_STATE_PENDING)
             for n in ("n1", "n2", "gone")]
    nodes = [make_node("n1"), make_node("n2", memory=1 * GB)]
    decisions = place(tasks, nodes)
    assert decisions.assigned == [("g.n1", "n1")]
    assert decisions.unplaced == {
        "g.n2": "no suitable node (1 node had insufficient memory)",
        "g.gone": "no suitable node (node gone no longer exists)"}
