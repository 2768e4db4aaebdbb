"""Subnets for networks and addresses inside them.

Policy:
- A network keeps the subnet it was given (its spec's, or the next free /24 of the overlay
  pool); two networks never overlap.
- Inside a subnet the network address, the gateway (.1, kept free as Docker's overlay does)
  and the broadcast address are never handed out.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network

from pyswarm.manager.allocator.networks import OVERLAY_POOL, OVERLAY_PREFIX
from pyswarm.manager.allocator.pool import Pool


class AddressSpace:
    """The addresses of one subnet, by offset from its network address."""

    def __init__(self, subnet: IPv4Network, reserve_gateway: bool = True) -> None:
        self.subnet = subnet
        size = subnet.num_addresses
        reserved = {0, size - 1} | ({1} if reserve_gateway else set())
        self.pool = Pool(size, frozenset(reserved))

    def address(self, slot: int) -> IPv4Address:
        return self.subnet.network_address + slot

    def cidr(self, slot: int) -> str:
        return f"{self.address(slot)}/{self.subnet.prefixlen}"

    def slot(self, addr: str) -> int | None:
        """The offset of "10.214.3.7" or "10.214.3.7/24" in this subnet; None if outside."""
        try:
            ip = ipaddress.IPv4Address(addr.split("/", 1)[0])
        except ValueError:
            return None
        if ip not in self.subnet:
            return None
        return int(ip) - int(self.subnet.network_address)

    def take(self, owner: str) -> int | None:
        return self.pool.take(owner)

    def claim(self, addr: str, owner: str) -> bool:
        slot = self.slot(addr)
        return slot is not None and self.pool.claim(slot, owner)

    def release_owner(self, owner: str) -> None:
        self.pool.release_owner(owner)


class Subnets:
    """Which network has which subnet; new ones are /24s of the overlay pool."""

    def __init__(self) -> None:
        self._of: dict[str, IPv4Network] = {}
        count = 1 << (OVERLAY_PREFIX - OVERLAY_POOL.prefixlen)
        self._blocks = Pool(count)  # /24s of the overlay pool, owned by network id

    def get(self, network_id: str) -> IPv4Network | None:
        return self._of.get(network_id)

    def overlapping(self, subnet: IPv4Network, network_id: str = "") -> str | None:
        """The id of another network whose subnet overlaps `subnet`, if any."""
        for other_id, other in self._of.items():
            if other_id != network_id and other.overlaps(subnet):
                return other_id
        return None

    def assign(self, network_id: str, subnet: IPv4Network) -> bool:
        """Record `subnet` as the network's; False if it overlaps another network's."""
        current = self._of.get(network_id)
        if current is not None:
            return current == subnet
        if self.overlapping(subnet, network_id) is not None:
            return False
        self._of[network_id] = subnet
        for block in self._blocks_of(subnet):
            self._blocks.claim(block, network_id)
        return True

    def allocate(self, network_id: str) -> IPv4Network | None:
        """The next free /24 of the overlay pool, now the network's; None when none is left."""
        current = self._of.get(network_id)
        if current is not None:
            return current
        block = self._blocks.take(network_id)
        if block is None:
            return None
        subnet = _block_subnet(block)
        self._of[network_id] = subnet
        return subnet

    def release(self, network_id: str) -> None:
        self._of.pop(network_id, None)
        self._blocks.release_owner(network_id)

    def _blocks_of(self, subnet: IPv4Network) -> range:
        if not subnet.overlaps(OVERLAY_POOL):
            return range(0)
        size = 1 << (32 - OVERLAY_PREFIX)
        base = int(OVERLAY_POOL.network_address)
        first = max(int(subnet.network_address), base)
        last = min(int(subnet.broadcast_address), int(OVERLAY_POOL.broadcast_address))
        return range((first - base) // size, (last - base) // size + 1)


def _block_subnet(block: int) -> IPv4Network:
    size = 1 << (32 - OVERLAY_PREFIX)
    start = OVERLAY_POOL.network_address + block * size
    return IPv4Network(f"{start}/{OVERLAY_PREFIX}")
