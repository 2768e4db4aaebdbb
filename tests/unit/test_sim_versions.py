"""A simulated node that does not keep the network view reads its session's messages as
sim_pb2.SessionMessageVersions: the same bytes as a SessionMessage, the state's versions
only (proto/sim.proto)."""

from __future__ import annotations

import pytest

from pyswarm.common.netdelta import StaleDelta
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.proto import sim_pb2
from pyswarm.worker.sim import VersionChain


def test_a_session_message_reads_the_same_with_only_the_network_versions() -> None:
    whole = cpb.SessionMessage(
        session_id="s1", heartbeat_period_ms=1000, managers=["10.0.0.1:2377"],
        assignments=cpb.Assignments(type=cpb.Assignments.INCREMENTAL,
                                    update=[opb.Task(id="t1", node_id="n1")], remove=["t0"]),
        network=cpb.NetworkState(version=7, base_version=5,
                                 peers=[cpb.Peer(node_id="n2", addr="10.0.0.2", ready=True)],
                                 removed_endpoints=["svc"]))
    light = sim_pb2.SessionMessageVersions.FromString(whole.SerializeToString())
    assert (light.session_id, light.heartbeat_period_ms, list(light.managers)) == (
        "s1", 1000, ["10.0.0.1:2377"])
    assert light.assignments == whole.assignments
    assert (light.network.version, light.network.base_version) == (7, 5)
    assert light.HasField("network") and not sim_pb2.SessionMessageVersions.FromString(
        cpb.SessionMessage(session_id="s1").SerializeToString()).HasField("network")


def test_the_version_chain_refuses_a_delta_against_another_version() -> None:
    chain = VersionChain()
    chain.update(sim_pb2.NetworkStateVersions(version=3))  # whole
    chain.update(sim_pb2.NetworkStateVersions(version=4, base_version=3))
    with pytest.raises(StaleDelta):
        chain.update(sim_pb2.NetworkStateVersions(version=6, base_version=5))
