"""IP address management for the node bridge's subnet.

``IpPool`` is the pure allocator; ``IpamStore`` keeps its leases in one JSON file under the
network folder so that a daemon restart keeps the addresses of containers that kept running.

Policy:
- the network address, the gateway (the first host address, held by the bridge) and the
  broadcast address are never leased;
- addresses are handed out round-robin after the last one leased (as Docker does), so an
  address freed by a removed container is not reused at once by the next one, which keeps
  stale ARP entries and conntrack flows of the old container from reaching the new one;
- a container holds at most one lease: asking again returns the same address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pyswarm.common.errors import Conflict, InvalidArgument


def gateway_of(subnet: str) -> ipaddress.IPv4Interface:
    """The bridge's address: the subnet's first host address with the subnet's prefix."""
    net = _network(subnet)
    return ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def _network(subnet: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {e}") from None
    if net.prefixlen > 29:
        raise InvalidArgument(f"invalid subnet {subnet}: needs at least a /29")
    return net


@dataclass
class IpPool:
    """Leases of one subnet: container id -> address (dotted string)."""

    subnet: str
    leases: dict[str, str] = field(default_factory=dict)
    last: str = ""  # the address leased most recently, where the round-robin resumes

    def __post_init__(self) -> None:
        self._net = _network(self.subnet)
        self._first = int(self._net.network_address) + 2  # skip network and gateway
        self._end = int(self._net.broadcast_address)  # exclusive: skip broadcast

    @property
    def capacity(self) -> int:
        return self._end - self._first

    def allocate(self, owner: str) -> str:
        if owner in self.leases:
            return self.leases[owner]
        taken = {int(ipaddress.IPv4Address(a)) for a in self.leases.values()}
        if len(taken) >= self.capacity:
            raise Conflict(f"no free address left in {self.subnet} ({self.capacity} in use)")
        start = int(ipaddress.IPv4Address(self.last)) + 1 if self.last else self._first
        for i in range(self.capacity):
            candidate = self._first + (start - self._first + i) % self.capacity
            if candidate not in taken:
                addr = str(ipaddress.IPv4Address(candidate))
                self.leases[owner] = addr
                self.last = addr
                return addr
        raise AssertionError("unreachable: a free address was counted but not found")

    def release(self, owner: str) -> str | None:
        return self.leases.pop(owner, None)

    def to_json(self) -> dict[str, object]:
        return {"subnet": self.subnet, "last": self.last, "leases": dict(self.leases)}

    @classmethod
    def from_json(cls, data: dict[str, object], subnet: str) -> IpPool:
        """Load saved leases; leases of another subnet (a changed config) are dropped."""
        if data.get("subnet") != subnet:
            return cls(subnet)
        leases = data.get("leases")
        last = data.get("last")
        return cls(
            subnet,
            leases=dict(leases) if isinstance(leases, dict) else {},
            last=last if isinstance(last, str) else "",
        )


class IpamStore:
    """An IpPool persisted in ``<dir>/ipam.json``; every change is one locked, atomic write.

    The lock (``ipam.lock``, fcntl) also serialises two processes sharing the folder, e.g. a
    daemon and ``pyswarm daemon --cleanup``.
    """

    def __init__(self, directory: Path, subnet: str) -> None:
        self.dir = directory
        self.subnet = subnet
        self.path = directory / "ipam.json"

    @contextlib.contextmanager
    def pool(self) -> Iterator[IpPool]:
        """Read the pool under the lock, let the caller change it, write it back."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "ipam.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pool = self._read()
            before = pool.to_json()
            yield pool
            if pool.to_json() != before:
                self._write(pool)

    def allocate(self, owner: str) -> str:
        with self.pool() as pool:
            return pool.allocate(owner)

    def release(self, owner: str) -> str | None:
        with self.pool() as pool:
            return pool.release(owner)

    def leases(self) -> dict[str, str]:
        with self.pool() as pool:
            return dict(pool.leases)

    def _read(self) -> IpPool:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return IpPool(self.subnet)
        except ValueError:
            # A torn file cannot happen with the atomic write; a hand-edited one can. Starting
            # empty would hand out addresses still in use, so refuse loudly instead.
            raise InvalidArgument(f"{self.path} is not valid JSON; fix or remove it") from None
        return IpPool.from_json(data if isinstance(data, dict) else {}, self.subnet)

    def _write(self, pool: IpPool) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(pool.to_json(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
