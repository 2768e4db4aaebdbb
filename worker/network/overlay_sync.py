"""Keeps this node's overlays and service DNS in step with the manager's NetworkState.

The agent hands every NetworkState of its session to ``update`` (on the event loop). Updates
are coalesced as ``LBSync`` does: one apply at a time, and only the newest state waiting
behind it, so a burst of changes costs one or two rounds of netlink work. The netlink work
runs in a thread; the DNS name table is swapped on the loop, at once (a lookup never sees
half a table).

The service DNS starts with the first state, on the node bridge's gateway; from then on the
node network's ``service_dns`` names it, and cluster tasks created afterwards get it as
their nameserver. If it cannot bind (port 53 held by another server on that address), the
error is printed, tasks keep the host's resolvers, and the next state tries again.

Wiring (worker/cluster.py)::

    sync = OverlaySync(engine.network, local_addr=<this node's underlay address or "">)
    Agent(..., on_network_state=sync.update)
    ...
    sync.close()   # on shutdown; the kernel state stays, as the node network's does
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pyswarm.common.errors import PyswarmError
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.worker.network.dns import NameTable, ServiceDNS, Upstream
from pyswarm.worker.network.node import NodeNetwork


class OverlaySync:
    def __init__(
        self,
        network: NodeNetwork,
        local_addr: str = "",
        upstreams: Sequence[Upstream] | None = None,
        dns_port: int = 53,
    ) -> None:
        """``local_addr``: the VXLAN tunnels' source, this node's underlay address (the
        address other nodes know it by); "" lets the kernel choose by route. ``upstreams``:
        where names that are not the cluster's are forwarded (default: the host's
        /etc/resolv.conf)."""
        self.network = network
        self.local_addr = local_addr
        self.dns = ServiceDNS(str(network.gateway.ip), network.networks_of, upstreams,
                              port=dns_port)
        self._dns_started = False
        self._pending: cpb.NetworkState | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.last_error = ""

    def update(self, state: cpb.NetworkState) -> None:
        """Called with each new NetworkState; coalesced into one apply at a time."""
        self._pending = state
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def settled(self) -> None:
        """Until every state handed in so far is applied (tests; callers that must wait)."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    def close(self) -> None:
        """Stop serving DNS and applying; overlays stay in the kernel for the next daemon."""
        if self._flushing is not None:
            self._flushing.cancel()
        self.dns.close()
        self.network.service_dns = ""
        self._dns_started = False

    async def _flush(self) -> None:
        while self._pending is not None:
            state, self._pending = self._pending, None
            self.dns.table = NameTable.from_state(state)
            await self._ensure_dns()
            try:
                await asyncio.to_thread(self.network.overlays.apply, state, self.local_addr)
                self.last_error = ""
            except PyswarmError as exc:
                self.last_error = str(exc)
                print(f"pyswarm agent: {exc}", flush=True)

    async def _ensure_dns(self) -> None:
        if self._dns_started:
            return
        try:
            await self.dns.start()
        except PyswarmError as exc:
            print(f"pyswarm agent: {exc}; tasks keep the host's resolvers", flush=True)
            return
        self._dns_started = True
        self.network.service_dns = self.dns.address
