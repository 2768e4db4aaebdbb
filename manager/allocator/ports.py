"""Ports published in ingress mode: one service per (protocol, port) across the cluster.

Policy (Swarm's): a port given as published 0 gets the next free one of 30000-32767, and
keeps it across updates of its service. Host-mode ports are each node's business (the
scheduler's host-port filter), not the cluster's, and are left as written.
"""

from __future__ import annotations

from pyswarm.manager.allocator.pool import Pool
from pyswarm.proto import objects_pb2 as opb

DYNAMIC_FIRST = 30000
DYNAMIC_LAST = 32767

Key = tuple[str, int]  # (protocol, published port)


class PortConflict(Exception):
    def __init__(self, key: Key, owner: str) -> None:
        what = (f"port {key[1]}/{key[0]} is already published by another service" if key[1]
                else f"no free {key[0]} port left in {DYNAMIC_FIRST}-{DYNAMIC_LAST}")
        super().__init__(what)
        self.key = key
        self.owner = owner


class Ports:
    def __init__(self) -> None:
        self._owner: dict[Key, str] = {}
        self._by_service: dict[str, set[Key]] = {}
        # The dynamic range, per protocol, for serial hand-out.
        self._dynamic = {p: Pool(DYNAMIC_LAST - DYNAMIC_FIRST + 1) for p in ("tcp", "udp")}

    def owner(self, key: Key) -> str | None:
        return self._owner.get(key)

    def held(self, service_id: str) -> set[Key]:
        return set(self._by_service.get(service_id, ()))

    def claim(self, key: Key, service_id: str) -> bool:
        owner = self._owner.get(key)
        if owner is not None:
            return owner == service_id
        self._owner[key] = service_id
        self._by_service.setdefault(service_id, set()).add(key)
        if DYNAMIC_FIRST <= key[1] <= DYNAMIC_LAST and key[0] in self._dynamic:
            self._dynamic[key[0]].claim(key[1] - DYNAMIC_FIRST, service_id)
        return True

    def release(self, key: Key, service_id: str) -> None:
        if self._owner.get(key) != service_id:
            return
        del self._owner[key]
        self._by_service[service_id].discard(key)
        if not self._by_service[service_id]:
            del self._by_service[service_id]
        if DYNAMIC_FIRST <= key[1] <= DYNAMIC_LAST and key[0] in self._dynamic:
            self._dynamic[key[0]].release(key[1] - DYNAMIC_FIRST, service_id)

    def release_service(self, service_id: str) -> None:
        for key in self.held(service_id):
            self.release(key, service_id)

    def allocate(self, service_id: str, spec: opb.EndpointSpec,
                 previous: list[opb.PortConfig]) -> list[opb.PortConfig]:
        """The service's ports as published: ingress ports claimed for it (dynamic ones
        reused from `previous` where the same target was already published), the ports it
        no longer publishes released. Raises PortConflict and then changes nothing."""
        reuse: dict[tuple[str, int, str], int] = {}
        for port in previous:
            if port.publish_mode == opb.PUBLISH_MODE_INGRESS and port.published_port:
                reuse.setdefault((_proto(port), port.target_port, port.name),
                                 port.published_port)
        out: list[opb.PortConfig] = []
        wanted: set[Key] = set()
        dynamic: list[opb.PortConfig] = []
        for port in spec.ports:
            done = opb.PortConfig()
            done.CopyFrom(port)
            done.protocol = _proto(port)
            out.append(done)
            if port.publish_mode != opb.PUBLISH_MODE_INGRESS:
                continue
            if not port.published_port:
                kept = reuse.get((done.protocol, port.target_port, port.name))
                kept_owner = self._owner.get((done.protocol, kept)) if kept else None
                if kept and kept_owner in (None, service_id) \
                        and (done.protocol, kept) not in wanted:
                    done.published_port = kept
                else:
                    dynamic.append(done)
                    continue
            key = (done.protocol, done.published_port)
            owner = self._owner.get(key)
            if owner is not None and owner != service_id:
                raise PortConflict(key, owner)
            wanted.add(key)
        for done in dynamic:
            pool = self._dynamic[done.protocol]
            taken = [k[1] - DYNAMIC_FIRST for k in wanted
                     if k[0] == done.protocol and DYNAMIC_FIRST <= k[1] <= DYNAMIC_LAST]
            slot = _take_avoiding(pool, service_id, set(taken))
            if slot is None:
                for key in wanted - self.held(service_id):
                    if key[0] in self._dynamic and DYNAMIC_FIRST <= key[1] <= DYNAMIC_LAST:
                        self._dynamic[key[0]].release(key[1] - DYNAMIC_FIRST, service_id)
                raise PortConflict((done.protocol, 0), "")
            done.published_port = DYNAMIC_FIRST + slot
            wanted.add((done.protocol, done.published_port))
        for key in self.held(service_id) - wanted:
            self.release(key, service_id)
        for key in wanted:
            self.claim(key, service_id)
        return out


def _proto(port: opb.PortConfig) -> str:
    return port.protocol or "tcp"


def _take_avoiding(pool: Pool, owner: str, avoid: set[int]) -> int | None:
    """A free slot not in `avoid` (slots this service is about to claim itself)."""
    for _ in range(len(avoid) + 1):
        slot = pool.take(owner)
        if slot is None or slot not in avoid:
            return slot
        pool.release(slot, owner)
    return None
