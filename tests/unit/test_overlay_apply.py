"""OverlayNetworks.apply at scale: a NetworkState whose overlay part did not change (a
service's tasks moved, say) costs no netlink work; a changed one is applied again."""

from __future__ import annotations

from typing import Any

from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import objects_pb2 as opb
from pyswarm.worker.network import overlay


def _state(peers: int, endpoints: int = 0) -> cpb.NetworkState:
    state = cpb.NetworkState(version=1)
    for i in range(peers):
        state.peers.add(node_id=f"n{i}", addr=f"127.77.0.{i + 1}", ready=True)
    state.networks.add(id="net", spec=opb.NetworkSpec(name="net", driver="overlay"),
                       subnet="10.214.7.0/24", vni=4097)
    state.node_attachments.add(network_id="net", addresses=["10.214.7.2/24"])
    for i in range(endpoints):
        state.endpoints.add(service_id=f"s{i}", service_name=f"s{i}")
    return state


def test_an_unchanged_overlay_plan_is_not_applied_again() -> None:
    kernel: list[overlay.OverlayPlan] = []

    def run(fn: Any, *args: Any) -> Any:
        if fn is overlay._apply_kernel:
            nets, plan = args
            kernel.append(plan)
            return [], {nets.bridge_name(s.vni) for s in plan.networks}
        return fn(None, *args)

    nets = overlay.OverlayNetworks("pswtest0", run)
    nets.apply(_state(3))
    nets.apply(_state(3, endpoints=2))  # only endpoints changed: nothing for the kernel
    assert len(kernel) == 1
    nets.apply(_state(4))  # a peer joined
    assert len(kernel) == 2 and len(kernel[-1].peers) == 4
    assert set(nets.networks()) == {"net"}
