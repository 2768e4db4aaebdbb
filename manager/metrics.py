"""The manager's counters: cheap running totals that say where its time goes.

One `Metrics` per manager, passed to the loops that count; `Control.Info` returns a copy
(`InfoResponse.metrics`), which is what `bench/scale.py` reads before and after each phase.
Names (totals since the manager started, but for the peaks, marked so):

    scheduler_passes, scheduler_placed      scheduling passes, tasks assigned to nodes
    scheduler_seconds                       time spent planning and committing passes
    store_commits, store_writes             backend commits, objects written
    store_commit_seconds                    time spent in backend commits
    dispatcher_heartbeats                   heartbeats answered
    dispatcher_status_updates               task status updates applied
    dispatcher_status_commits               commits those took (batched across nodes)
    dispatcher_stall_seconds                time the manager's loop was stalled, given back
                                            to heartbeat deadlines
    dispatcher_ingress_lag_seconds          peak: the longest a heartbeat took to reach the
                                            dispatcher, as the manager's probe of itself
                                            measured it (probe.py)
    dispatcher_heartbeat_gap_seconds        peak: the longest between two heartbeats of a
                                            node, as the dispatcher heard them
    dispatcher_false_downs                  nodes back with a session right after their
                                            DOWN (ManagerConfig.false_down_*)
    dispatcher_false_down_extra_seconds     peak: the extra wait before DOWN they caused
    dispatcher_mass_failure_holds           nodes given another period because too many
                                            failed at once (ManagerConfig.mass_failure_*)
    netpush_*                               NetworkState rounds, whole states and deltas
                                            sent, their bytes and time (netpush.py)
    netpush_sessions_behind                 now: sessions told of a newer state that have
                                            not pulled it yet, or are still sending it
    netpush_changes_waiting                 now: 1 while store changes wait for a round
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


class Metrics:
    def __init__(self) -> None:
        self._values: defaultdict[str, float] = defaultdict(float)
        self._gauges: dict[str, Callable[[], float]] = {}

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A value read when a snapshot is taken (the newest `read` for a name wins)."""
        self._gauges[name] = read

    def add(self, name: str, value: float = 1.0) -> None:
        self._values[name] += value

    def peak(self, name: str, value: float) -> None:
        if value > self._values[name]:
            self._values[name] = value

    def snapshot(self) -> dict[str, float]:
        values = dict(self._values)
        values.update((name, float(read())) for name, read in self._gauges.items())
        return values
