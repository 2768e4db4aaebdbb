"""The scheduling pass: pending tasks → filters → rank → plan, in one commented function.

Pure: the caller builds the NodeInfos from the store, calls ``schedule`` and writes the
decisions back in one transaction. The NodeInfos are updated in place with every
assignment, so the caller may keep them for the next pass if nothing else changed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyswarm.manager.scheduler.filters import Filter, default_filters
from pyswarm.manager.scheduler.nodeinfo import RECENT_FAILURE_WINDOW, NodeInfo
from pyswarm.proto.objects_pb2 import Task

NO_NODES = "no suitable node (no nodes in the cluster)"


@dataclass(frozen=True)
class Decisions:
    assigned: list[tuple[str, str]] = field(default_factory=list)  # (task id, node id)
    unplaced: dict[str, str] = field(default_factory=dict)         # task id -> reason


def schedule(pending: Sequence[Task], infos: dict[str, NodeInfo], now: float) -> Decisions:
    """Place ``pending`` tasks on nodes; say why for each task that fits nowhere."""
    decisions = Decisions()
    # Static filters (node ready and active, constraints) cannot change during the pass:
    # their answer is computed once per distinct set of constraints and shared by batches.
    static_cache: dict[tuple[str, ...], list[NodeInfo]] = {}
    # 1. Batch: tasks of one service with one spec face the same filters and the same
    #    ranking, so the per-node work is done once per batch, not once per task.
    for batch in _batches(pending):
        filters = [f for f in default_filters() if f.applies(batch[0])]
        # 2. Tasks that already name their node (global services) are only checked there.
        preset = [t for t in batch if t.node_id]
        if preset:
            _check_preset(preset, filters, infos, decisions)
        free = [t for t in batch if not t.node_id]
        if free:
            key = tuple(free[0].spec.placement.constraints)
            if key not in static_cache:
                static = [f for f in filters if f.static]
                static_cache[key] = [i for i in infos.values()
                                     if all(f.check(i) for f in static)]
            _place_batch(free, filters, static_cache[key], infos, now, decisions)
    return decisions


def _batches(pending: Sequence[Task]) -> list[list[Task]]:
    """Group by (service, spec), in order of first appearance (deterministic)."""
    groups: dict[tuple[str, bytes], list[Task]] = {}
    for task in pending:
        spec = task.spec.SerializeToString(deterministic=True)
        groups.setdefault((task.service_id, spec), []).append(task)
    return list(groups.values())


def _first_failure(filters: list[Filter], info: NodeInfo) -> int:
    """Index of the first filter the node fails, or -1 when it passes them all."""
    for index, flt in enumerate(filters):
        if not flt.check(info):
            return index
    return -1


def explain_unplaced(task: Task, infos: dict[str, NodeInfo]) -> str:
    """Why no node takes ``task`` now: every node through every filter, each node counted
    once, under the first filter it fails (SwarmKit's message format)."""
    if not infos:
        return NO_NODES
    filters = [f for f in default_filters() if f.applies(task)]
    failures = [0] * len(filters)
    for info in infos.values():
        failed = _first_failure(filters, info)
        if failed >= 0:
            failures[failed] += 1
    parts = [flt.explain(n) for flt, n in zip(filters, failures, strict=True) if n]
    return f"no suitable node ({'; '.join(parts) or 'none feasible'})"


def _check_preset(tasks: list[Task], filters: list[Filter], infos: dict[str, NodeInfo],
                  decisions: Decisions) -> None:
    for task in tasks:
        info = infos.get(task.node_id)
        if info is None:
            decisions.unplaced[task.id] = f"no suitable node (node {task.node_id} no longer exists)"
            continue
        failed = _first_failure(filters, info)
        if failed >= 0:
            decisions.unplaced[task.id] = f"no suitable node ({filters[failed].explain(1)})"
            continue
        info.add_task(task)
        decisions.assigned.append((task.id, info.id))


Rank = tuple[bool, int, int, str]


def _place_batch(tasks: list[Task], filters: list[Filter], candidates: list[NodeInfo],
                 infos: dict[str, NodeInfo], now: float, decisions: Decisions) -> None:
    first = tasks[0]
    service = first.service_id
    dynamic = [f for f in filters if not f.static]

    # Rank (spread): nodes with recent failures of this service last (a node where it
    # keeps failing would otherwise always look emptiest), then fewest tasks of this
    # service, then fewest tasks in all, then node id so that results are reproducible.
    def rank(info: NodeInfo) -> Rank:
        failed_at = info.recent_failures.get(service)
        recent = bool(failed_at) and any(now - t <= RECENT_FAILURE_WINDOW for t in failed_at)
        return (recent, info.tasks_by_service.get(service, 0), info.total_tasks, info.id)

    # Placement preferences: nodes are grouped by their values of the spread labels
    # (a tree, one level per preference); each task goes down the branch holding the
    # fewest tasks of the service, then to the best-ranked node of that leaf.
    spread_over = [p.spread for p in first.spec.placement.preferences if p.spread]
    tree = _SpreadTree(spread_over, service, infos)
    tree.fill([(rank(info), info) for info in candidates])

    # Plan: one task at a time; the chosen node's counters change, so it is re-ranked.
    # The dynamic filters (resources, host ports, max replicas) are checked only on the
    # node that comes up: they only get stricter within a batch, so a node failing one
    # is dropped for the rest of it.
    for index, task in enumerate(tasks):
        while (info := tree.pop_best()) is not None:
            if all(f.check(info) for f in dynamic):
                break
            tree.drop(info)
        if info is None:
            reason = explain_unplaced(task, infos)
            for rest in tasks[index:]:
                decisions.unplaced[rest.id] = reason
            return
        info.add_task(task)
        tree.placed(info, rank(info))
        decisions.assigned.append((task.id, info.id))


def _node_label(info: NodeInfo, key: str) -> str:
    """A node's value for a spread key such as ``node.labels.zone`` ("" if it has none)."""
    if key.startswith("node.labels."):
        return info.node.spec.labels.get(key[len("node.labels."):], "")
    if key.startswith("engine.labels."):
        return info.node.description.engine_labels.get(key[len("engine.labels."):], "")
    if key == "node.hostname":
        return info.node.description.hostname
    if key == "node.platform.os":
        return info.node.description.os
    if key == "node.platform.arch":
        return info.node.description.architecture
    return ""


class _SpreadTree:
    """Feasible nodes grouped by spread-label values, a rank heap at each leaf.

    Without preferences it is a single leaf: one heap, O(log n) per placement.
    """

    def __init__(self, keys: list[str], service: str, infos: dict[str, NodeInfo]) -> None:
        self._keys = keys
        self._service = service
        self._heaps: dict[tuple[str, ...], list[tuple[Rank, str]]] = {}
        self._infos = infos
        self._path: dict[str, tuple[str, ...]] = {}
        self._children: dict[tuple[str, ...], set[str]] = {}
        self._alive: dict[tuple[str, ...], int] = {}   # feasible nodes under each branch
        self._count: dict[tuple[str, ...], int] = {}   # tasks of the service in each branch
        if keys:
            # Every node counts towards its branch's tasks, feasible or not (Swarm's way:
            # the spread is over what runs, not over where more could go).
            for info in infos.values():
                path = self._path_of(info)
                for depth in range(1, len(path) + 1):
                    prefix = path[:depth]
                    self._count[prefix] = (self._count.get(prefix, 0)
                                           + info.tasks_by_service[service])

    def _path_of(self, info: NodeInfo) -> tuple[str, ...]:
        return tuple(_node_label(info, key) for key in self._keys)

    def fill(self, ranked: list[tuple[Rank, NodeInfo]]) -> None:
        if not self._keys:
            # No preferences: one heap, built in O(n).
            heap = [(key, info.id) for key, info in ranked]
            heapq.heapify(heap)
            self._heaps[()] = heap
            self._alive[()] = len(heap)
            for _, info in ranked:
                self._path[info.id] = ()
            return
        for key, info in ranked:
            self.add(info, key)

    def add(self, info: NodeInfo, key: Rank) -> None:
        path = self._path_of(info) if self._keys else ()
        self._path[info.id] = path
        heapq.heappush(self._heaps.setdefault(path, []), (key, info.id))
        for depth in range(len(path) + 1):
            prefix = path[:depth]
            self._alive[prefix] = self._alive.get(prefix, 0) + 1
            if depth < len(path):
                self._children.setdefault(prefix, set()).add(path[depth])

    def pop_best(self) -> NodeInfo | None:
        """Take the best node out (the caller gives it back with placed() or drops it)."""
        prefix: tuple[str, ...] = ()
        if self._alive.get(prefix, 0) == 0:
            return None
        for _ in self._keys:
            options = [v for v in self._children[prefix] if self._alive.get(prefix + (v,), 0)]
            value = min(options, key=lambda v: (self._count.get(prefix + (v,), 0), v))
            prefix = prefix + (value,)
        _, node_id = heapq.heappop(self._heaps[prefix])
        return self._infos[node_id]

    def drop(self, info: NodeInfo) -> None:
        path = self._path[info.id]
        for depth in range(len(path) + 1):
            self._alive[path[:depth]] -= 1

    def placed(self, info: NodeInfo, key: Rank) -> None:
        path = self._path[info.id]
        for depth in range(1, len(path) + 1):
            self._count[path[:depth]] = self._count.get(path[:depth], 0) + 1
        heapq.heappush(self._heaps[path], (key, info.id))

