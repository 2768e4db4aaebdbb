"""Every timing of the manager, each with the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass

# The manager's loops (orchestrator, allocator, scheduler) act once their watch has caught
# up with the commits already made, so a burst of commits costs one pass; under a steady
# stream they act at least this often (seconds).
LOOP_MAX_DEFER = 0.1
# After a pass a loop rests as long as the pass took, up to this (seconds): see
# manager/loops/pacing.py.
LOOP_MAX_REST = 1.0
# An orchestrator pass commits (and lets the event loop run) after about this many tasks'
# worth of services: a pass over every service of a 10,000-task cluster held the loop for
# 0.4-1.2 s, and heartbeats heard that late delay every node's DOWN (see orchestrator.py).
PASS_CHUNK_TASKS = 1000


@dataclass(frozen=True)
class ManagerConfig:
    # Workers heartbeat this often. Swarm uses 5 s; we want a dead node noticed in seconds,
    # and a heartbeat is one small message on a stream that never touches the store.
    heartbeat_period: float = 1.0
    # A node that misses this many periods is DOWN and its tasks are replaced at once.
    # Three absorbs a GC pause or a slow network without flapping.
    heartbeat_misses: int = 3
    # After a manager (re)starts, nodes get this long to open a session before they are
    # DOWN: as long as a missed-heartbeat window, so a manager restart never replaces tasks
    # whose node merely has not reconnected yet.
    reconnect_grace: float = 3.0
    # The same after a leader change on a shared store: every node must first find the new
    # leader (its manager died, or refused during the election). A node marked DOWN while
    # alive has its tasks replaced and runs them twice until it is back, so this errs long;
    # the price is that the tasks of a node that died with the old leader move this much
    # later. (Swarm's new leader waits a few heartbeat periods, 5 s each.)
    takeover_grace: float = 6.0
    # When more than this fraction of the nodes (and at least mass_failure_min of them)
    # miss their heartbeats within a few periods, the manager suspects itself (overloaded,
    # or cut off) rather than all of them, and holds off marking them DOWN for up to
    # mass_failure_hold seconds: replacing half a cluster's tasks at once, on a manager that
    # is already behind, is how a slow manager collapses a healthy cluster (Kubernetes'
    # node controller stops evicting in a "full disruption" for the same reason).
    mass_failure_fraction: float = 0.5
    mass_failure_min: int = 10
    mass_failure_hold: float = 30.0
    # A node marked DOWN that opens a new session within false_down_window seconds was
    # alive: the manager did not hear it in time (overloaded: a big deploy to a thousand
    # nodes). Each such return doubles an extra wait before DOWN, up to
    # false_down_max_extra seconds, and the extra halves after each false_down_window
    # without one. Unchecked, every false DOWN moved the node's tasks and sent it a whole
    # new state when it came back: more work for a manager already behind, and more false
    # DOWNs (bench/scale.py at 1,000 nodes never converged).
    false_down_window: float = 10.0
    false_down_max_extra: float = 30.0
    # Ended tasks kept per slot (`service ps` history), Swarm's default.
    task_history_limit: int = 5

    @property
    def down_after(self) -> float:
        return self.heartbeat_period * self.heartbeat_misses
