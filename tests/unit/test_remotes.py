"""Where a node's next session goes (worker/agent/remotes.py)."""

from __future__ import annotations

from pyswarm.worker.agent.remotes import LOCAL, Remotes


def test_a_worker_stays_with_a_working_manager_and_moves_round_the_list_on_failure() -> None:
    saved: list[list[str]] = []
    r = Remotes(["a:2377"], on_learned=saved.append)
    assert r.pick() == "a:2377"
    r.worked("a:2377")
    r.learned(["a:2377", "b:2377", "c:2377"])
    assert saved == [["a:2377", "b:2377", "c:2377"]], "kept for the next start"
    assert r.pick() == "a:2377", "the list does not move a working session"
    r.failed("a:2377")
    assert r.pick() == "b:2377"
    r.failed("b:2377")
    r.failed("c:2377")
    assert r.pick() == "a:2377", "round the list"


def test_a_follower_s_refusal_sends_the_node_to_the_leader_it_names() -> None:
    r = Remotes(["a:2377", "b:2377", "c:2377"])
    r.redirected("a:2377", "c:2377")
    assert r.pick() == "c:2377"
    r.failed("c:2377")  # the named leader died meanwhile: back to the list
    assert r.pick() == "b:2377"


def test_a_manager_node_reaches_its_own_manager_locally_and_others_over_tls() -> None:
    r = Remotes([], local=True, own="m2:2377")
    assert r.pick() == LOCAL
    r.learned(["m1:2377", "m2:2377", "m3:2377"])  # the leader's first
    assert r.addrs == [LOCAL, "m1:2377", "m3:2377"], "its own address is LOCAL"
    r.redirected(LOCAL, "m1:2377")
    assert r.pick() == "m1:2377"
    r.worked("m1:2377")
    r.failed("m1:2377")  # the leader died: try the others, its own manager among them
    assert r.pick() == "m3:2377"
    r.redirected("m3:2377", "m2:2377")  # it leads now itself
    assert r.pick() == LOCAL
