"""`pyswarm lab up --store etcd`: the pure parts (no root, no process started).

The flags' rules and their messages, the command line each etcd member is started with, the
store URL node1's `pyswarm init` is given, and NODE arguments naming one member (`etcd2`).
"""

from __future__ import annotations

import argparse
import ipaddress

import pytest

from pyswarm.cli import lab as lab_cli
from pyswarm.cli.lab import build, etcd, layout, ops, state
from pyswarm.cli.lab.layout import LayoutError, NodeLayout

NET = ipaddress.ip_network("198.18.0.0/24")


def request(nodes: int = 5, managers: int = 1, store: str = "sqlite") -> build.UpRequest:
    return build.check_request("t", nodes, managers, "198.18.0.0/24", None, True, [], store)


def members(count: int, lab: str = "t") -> list[NodeLayout]:
    return layout.node_layouts(lab, NET, count)


def a_lab(nodes: int = 5, managers: int = 3, store: str = "etcd") -> state.Lab:
    lab = state.Lab("t", str(NET), "pslab-t", "198.18.0.254", store=store)
    for n in layout.node_layouts("t", NET, nodes):
        lab.nodes.append(state.Node(n.index, n.address,
                                    "manager" if n.index <= managers else "worker"))
    return lab


# ---- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize("nodes, managers, store", [
    (1, 1, "sqlite"), (3, 1, "sqlite"), (1, 1, "etcd"), (3, 1, "etcd"), (3, 3, "etcd"),
    (5, 3, "etcd"), (5, 5, "etcd"), (9, 7, "etcd")])
def test_accepted_shapes(nodes: int, managers: int, store: str) -> None:
    req = request(nodes, managers, store)
    assert (req.nodes, req.managers, req.store) == (nodes, managers, store)


def test_the_default_store_is_sqlite() -> None:
    req = build.check_request("t", 3, 1, "198.18.0.0/24", None, True, [])
    assert req.store == "sqlite"


@pytest.mark.parametrize("nodes, managers, store, words", [
    (3, 1, "raft", ['invalid --store "raft"', "sqlite", "etcd"]),
    (3, 1, "", ['invalid --store ""']),
    (5, 3, "sqlite", ["invalid --managers 3", "needs --store etcd"]),
    (5, 2, "sqlite", ["invalid --managers 2", "needs --store etcd"]),
    (5, 2, "etcd", ["invalid --managers 2 with --store etcd", "1, 3, 5 or 7", "majority"]),
    (5, 4, "etcd", ["invalid --managers 4", "1, 3, 5 or 7"]),
    (12, 9, "etcd", ["invalid --managers 9", "1, 3, 5 or 7"]),
    (2, 3, "etcd", ["invalid --managers 3", "--nodes (2)"]),
    (3, 0, "etcd", ["invalid --managers 0"]),
])
def test_refused_shapes_name_the_flag(nodes: int, managers: int, store: str,
                                      words: list[str]) -> None:
    with pytest.raises(LayoutError) as exc:
        request(nodes, managers, store)
    for word in words:
        assert word in str(exc.value)


def test_a_manager_cannot_be_standalone_with_etcd_either() -> None:
    with pytest.raises(LayoutError, match="invalid --standalone 2: node2 is a manager"):
        build.check_request("t", 5, 3, "198.18.0.0/24", None, True, [2], "etcd")


# ---- the members' command lines --------------------------------------------------------


def flags(argv: list[str]) -> dict[str, str]:
    assert argv[0] == etcd.ETCD
    # a Go bool flag takes its value only as --flag=value ("--flag true" is refused)
    rest = [part for a in argv[1:] for part in (a.split("=", 1) if a.startswith("--") else [a])]
    assert all(a.startswith("--") for a in rest[::2])
    return dict(zip(rest[::2], rest[1::2], strict=True))


def test_a_new_member_of_three() -> None:
    three = members(3)
    f = flags(etcd.command(three[1], three, existing=False))
    assert f["--name"] == "node2"
    assert f["--data-dir"] == "/var/lib/pyswarm-lab/t/node2/etcd"
    assert f["--listen-client-urls"] == "http://198.18.0.2:2379,http://127.0.0.1:2379"
    assert f["--advertise-client-urls"] == "http://198.18.0.2:2379"
    assert f["--listen-peer-urls"] == "http://198.18.0.2:2380"
    assert f["--initial-advertise-peer-urls"] == "http://198.18.0.2:2380"
    assert f["--initial-cluster"] == ("node1=http://198.18.0.1:2380,"
                                      "node2=http://198.18.0.2:2380,"
                                      "node3=http://198.18.0.3:2380")
    assert f["--initial-cluster-token"] == "t"  # the lab's name
    assert f["--initial-cluster-state"] == "new"
    assert f["--max-request-bytes"] == str(10 * 1024 * 1024)
    assert f["--pre-vote"] == "true"
    # etcd's default 128 ops per txn: what the manager's EtcdBackend assumes.
    assert "--max-txn-ops" not in f


def test_a_restarted_member_joins_the_existing_cluster() -> None:
    three = members(3)
    f = flags(etcd.command(three[2], three, existing=True))
    assert f["--initial-cluster-state"] == "existing"
    assert f["--data-dir"] == "/var/lib/pyswarm-lab/t/node3/etcd"
    assert f["--initial-cluster"] == etcd.initial_cluster(three)


def test_a_one_member_cluster() -> None:
    one = members(1, lab="e1")
    f = flags(etcd.command(one[0], one, existing=False))
    assert f["--initial-cluster"] == "node1=http://198.18.0.1:2380"
    assert f["--initial-cluster-token"] == "e1"
    assert etcd.store_url(one) == "etcd://198.18.0.1:2379"


def test_a_node_outside_the_members_is_refused() -> None:
    five = members(5)
    with pytest.raises(ValueError, match="node4"):
        etcd.command(five[3], five[:3], existing=False)


def test_init_is_given_every_member_s_client_endpoint() -> None:
    assert etcd.store_url(members(3)) == ("etcd://198.18.0.1:2379,198.18.0.2:2379,"
                                          "198.18.0.3:2379")


def test_a_process_is_a_member_by_its_data_dir() -> None:
    three = members(3)
    argv = etcd.command(three[0], three, existing=False)
    assert etcd.is_member_of(argv, three[0])
    assert not etcd.is_member_of(argv, three[1])
    assert not etcd.is_member_of(["/usr/bin/etcd", "--name", "node1"], three[0])
    assert etcd.data_dir(["etcd", "--data-dir"]) == ""


@pytest.mark.parametrize("count, need", [(1, 1), (3, 2), (5, 3), (7, 4)])
def test_quorum(count: int, need: int) -> None:
    assert etcd.quorum(count) == need


# ---- NODE arguments: nodeK or etcdK ----------------------------------------------------


def test_etcd_k_is_the_member_on_node_k() -> None:
    lab = a_lab()
    target = lab.target("etcd2")
    assert target.etcd and target.node.index == 2
    assert target.node.layout("t").member == "etcd2"
    plain = lab.target("node2")
    assert not plain.etcd and plain.node is target.node


def test_the_members_are_the_managers_of_an_etcd_lab() -> None:
    assert [n.index for n in a_lab(5, 3).members()] == [1, 2, 3]
    assert a_lab(5, 1, store="sqlite").members() == []


@pytest.mark.parametrize("name, words", [
    ("etcd4", ['no etcd member "etcd4"', "node4 is a worker", "etcd1, etcd2, etcd3"]),
    ("etcd9", ['no etcd member "etcd9"', "there is no node9"]),
    ("etcd0", ['no node "etcd0"', "node1, node2", "etcd members: etcd1, etcd2, etcd3"]),
    ("etcd02", ['no node "etcd02"']),
    ("etcd", ['no node "etcd"']),
])
def test_a_bad_member_is_refused_saying_why(name: str, words: list[str]) -> None:
    with pytest.raises(LookupError) as exc:
        a_lab().target(name)
    for word in words:
        assert word in str(exc.value)


def test_a_sqlite_lab_has_no_members() -> None:
    with pytest.raises(LookupError, match=r"no etcd member \"etcd1\".*sqlite.*--store etcd"):
        a_lab(3, 1, store="sqlite").target("etcd1")


def test_a_member_cannot_be_partitioned_alone() -> None:
    lab = a_lab()
    with pytest.raises(LayoutError, match="partition node2"):
        ops.partition(lab, lab.target("etcd2"), True)


# ---- the record ------------------------------------------------------------------------


def test_an_older_record_still_loads() -> None:
    old = {"name": "t", "subnet": str(NET), "bridge": "pslab-t", "host_address": "198.18.0.254",
           "images": [], "complete": True, "firewall_rule": False,
           "nodes": [{"index": 1, "address": "198.18.0.1", "role": "manager", "pid": 10,
                      "state": "running"}]}
    lab = state.Lab.from_dict(old)
    assert lab.store == "sqlite" and lab.members() == []
    assert lab.nodes[0].etcd_pid == 0


def test_a_record_round_trips_the_members() -> None:
    from dataclasses import asdict

    lab = a_lab()
    lab.nodes[1].etcd_pid, lab.nodes[1].etcd_state = 4242, state.KILLED
    again = state.Lab.from_dict(asdict(lab))
    assert again == lab and again.target("etcd2").node.etcd_state == "killed"


# ---- help ------------------------------------------------------------------------------


def test_help_teaches_the_new_forms() -> None:
    parser = argparse.ArgumentParser(prog="pyswarm")
    lab_cli.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lab = sub.choices["lab"]
    text = lab.format_help()
    assert "--store etcd" in text and "lab kill etcd2" in text
    commands = next(a for a in lab._actions if isinstance(a, argparse._SubParsersAction))
    assert "--store" in commands.choices["up"].format_help()
    assert "etcd1, etcd2" in commands.choices["kill"].format_help()


# ---- starting a member -------------------------------------------------------------------


@pytest.fixture
def slow_exec(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """etcd.start with a stand-in etcd (a shell script that sleeps, keeping the member's
    command line) behind a launcher that waits 0.3 s before it execs it, the window in
    which a member's process shows no etcd command line yet; no namespace is entered."""
    monkeypatch.setattr(layout, "STATE_BASE", tmp_path / "state")
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    real_command = etcd.command
    monkeypatch.setattr(etcd, "command", lambda m, ms, existing: real_command(
        m, ms, existing=existing, binary=str(fake)))
    monkeypatch.setattr(etcd, "check_installed", lambda: None)
    # like nsenter, the launcher shows the member's arguments before it execs etcd
    monkeypatch.setattr(etcd.nodes, "inside", lambda node, argv: [
        "sh", "-c", 'sleep 0.3; exec "$@"', "sh", *argv])
    started: list[int] = []
    yield started
    for pid in started:
        etcd.procs.signal_all([pid], 9)
        etcd.procs.wait_gone([pid], 5)


def test_a_started_member_is_known_by_its_pid_at_once(slow_exec) -> None:  # type: ignore[no-untyped-def]
    three = members(3)
    pid = etcd.start(three[0], three)
    slow_exec.append(pid)
    # started means exec'd: the launcher's command line names the member too, and reading
    # /proc during its exec shows none, which `lab start` once took for an exit (twice)
    assert etcd._argv(pid)[0] != "sh"
    assert etcd.member_pid(three[0], pid) == pid


def test_a_member_that_exits_at_once_is_reported_with_its_log(slow_exec, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(etcd.nodes, "inside", lambda node, argv: [
        "sh", "-c", "echo 'flag provided but not defined' >&2; exit 2"])
    three = members(3)
    with pytest.raises(etcd.EtcdError, match=r"(?s)exited at once .status 2.*flag provided"):
        etcd.start(three[1], three)
