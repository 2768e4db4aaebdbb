"""A service's ``deploy`` section → mode, resources, restart policy, placement, update and
rollback configs, endpoint mode and service labels.

Policy: Swarm's defaults. Replicated with 1 replica; restart on any exit after 5 s (the
delay is left unset, ``delay_set`` false, so the orchestrator's default applies); updates and
rollbacks one task at a time, pausing on failure, monitoring 5 s, stopping the old task first.
"""

from __future__ import annotations

import re

from pyswarm.manager.stack.context import Context
from pyswarm.manager.stack.values import (
    Field,
    as_choice,
    as_duration,
    as_float,
    as_int,
    as_kv,
    as_list,
    as_map,
    as_size,
    as_str,
    check_keys,
    describe,
    fail,
)
from pyswarm.proto import objects_pb2

_RESTART = {
    "any": objects_pb2.RESTART_CONDITION_ANY,
    "on-failure": objects_pb2.RESTART_CONDITION_ON_FAILURE,
    "none": objects_pb2.RESTART_CONDITION_NONE,
}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S(?:.*\S)?)\s*$")
_ATTRS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_ATTRS = ("node.labels.", "engine.labels.")
SWARM_MONITOR_NS = 5 * 10**9


def default_update() -> objects_pb2.UpdateConfig:
    return objects_pb2.UpdateConfig(parallelism=1, failure_action="pause",
                                    monitor_ns=SWARM_MONITOR_NS, order="stop-first")


def apply_deploy(ctx: Context, f: Field | None, spec: objects_pb2.ServiceSpec) -> None:
    """Fills ``spec`` from ``deploy`` (or with Swarm's defaults when there is none)."""
    spec.replicated.replicas = 1
    spec.update.CopyFrom(default_update())
    spec.rollback.CopyFrom(default_update())
    spec.endpoint.mode = "vip"
    if f is None or as_map(ctx.report, f) is None:
        return
    check_keys(ctx.report, f, {"mode", "replicas", "resources", "restart_policy", "placement",
                               "update_config", "rollback_config", "endpoint_mode", "labels"})
    _mode(ctx, f, spec)
    if (resources := f.get("resources")) is not None:
        _resources(ctx, resources, spec.task.resources)
    if (restart := f.get("restart_policy")) is not None:
        _restart(ctx, restart, spec.task.restart)
    if (placement := f.get("placement")) is not None:
        _placement(ctx, placement, spec)
    if (update := f.get("update_config")) is not None:
        _update(ctx, update, spec.update, rollback=False)
    if (rollback := f.get("rollback_config")) is not None:
        _update(ctx, rollback, spec.rollback, rollback=True)
    if (endpoint := f.get("endpoint_mode")) is not None:
        spec.endpoint.mode = as_choice(ctx.report, endpoint, ("vip", "dnsrr")) or "vip"
    if (labels := f.get("labels")) is not None:
        spec.labels.update({k: v or "" for k, v in (as_kv(ctx.report, labels) or {}).items()})


def _mode(ctx: Context, f: Field, spec: objects_pb2.ServiceSpec) -> None:
    mode = "replicated"
    if (mode_field := f.get("mode")) is not None:
        mode = as_choice(ctx.report, mode_field, ("replicated", "global")) or "replicated"
    replicas = f.get("replicas")
    if mode == "global":
        spec.ClearField("replicated")
        getattr(spec, "global").SetInParent()  # `global` is a Python keyword
        if replicas is not None:
            fail(ctx.report, replicas, "cannot be set with mode: global")
    elif replicas is not None:
        count = as_int(ctx.report, replicas)
        if count is not None:
            spec.replicated.replicas = count


def _resources(ctx: Context, f: Field, out: objects_pb2.ResourceRequirements) -> None:
    if as_map(ctx.report, f) is None:
        return
    check_keys(ctx.report, f, {"limits", "reservations"})
    for key, allowed in (("limits", {"cpus", "memory", "pids"}),
                         ("reservations", {"cpus", "memory"})):
        section = f.get(key)
        if section is None or as_map(ctx.report, section) is None:
            continue
        check_keys(ctx.report, section, allowed, {"devices": "", "generic_resources": ""})
        target = getattr(out, key)
        if (cpus := section.get("cpus")) is not None:
            number = as_float(ctx.report, cpus, maximum=1e6, what='a number of CPUs like "0.5"')
            if number is not None:
                target.nano_cpus = round(number * 1e9)
        if (memory := section.get("memory")) is not None:
            target.memory_bytes = as_size(ctx.report, memory) or 0
        if (pids := section.get("pids")) is not None:
            target.pids = as_int(ctx.report, pids) or 0


def _restart(ctx: Context, f: Field, out: objects_pb2.RestartPolicy) -> None:
    if as_map(ctx.report, f) is None:
        return
    check_keys(ctx.report, f, {"condition", "delay", "max_attempts", "window"})
    if (condition := f.get("condition")) is not None:
        out.condition = _RESTART[as_choice(ctx.report, condition, tuple(_RESTART)) or "any"]
    delay = f.get("delay")
    ns = as_duration(ctx.report, delay) if delay is not None else None
    if ns is not None:
        out.delay_ns = ns
        out.delay_set = True
    if (attempts := f.get("max_attempts")) is not None:
        out.max_attempts = as_int(ctx.report, attempts) or 0
    if (window := f.get("window")) is not None:
        out.window_ns = as_duration(ctx.report, window) or 0


def check_constraint(text: str) -> str | None:
    """Why a placement constraint is malformed, or None when it is fine."""
    match = _CONSTRAINT.match(text)
    if not match:
        return f'must be "<attribute> == <value>" or "<attribute> != <value>", got "{text}"'
    attr, value = match.group(1), match.group(3)
    if attr.startswith(_LABEL_ATTRS):
        if attr in _LABEL_ATTRS or attr.endswith("."):
            return f'"{attr}" needs a label name'
        return None
    if attr not in _ATTRS:
        known = ", ".join(_ATTRS + tuple(a + "<key>" for a in _LABEL_ATTRS))
        return f'unknown attribute "{attr}" (expected one of {known})'
    if attr == "node.role" and value not in ("manager", "worker"):
        return f'node.role is manager or worker, got "{value}"'
    return None


def _placement(ctx: Context, f: Field, spec: objects_pb2.ServiceSpec) -> None:
    if as_map(ctx.report, f) is None:
        return
    out = spec.task.placement
    check_keys(ctx.report, f, {"constraints", "preferences", "max_replicas_per_node"})
    constraints = f.get("constraints")
    if constraints is not None and as_list(ctx.report, constraints) is not None:
        for entry in constraints.elements():
            text = as_str(ctx.report, entry)
            problem = check_constraint(text) if text is not None else None
            if problem is not None:
                fail(ctx.report, entry, problem)
            elif text is not None:
                out.constraints.append(text.strip())
    preferences = f.get("preferences")
    if preferences is not None and as_list(ctx.report, preferences) is not None:
        for entry in preferences.elements():
            if as_map(ctx.report, entry) is None:
                continue
            check_keys(ctx.report, entry, {"spread"})
            spread = entry.get("spread")
            text = as_str(ctx.report, spread) if spread is not None else None
            if spread is None:
                fail(ctx.report, entry, "spread is required")
            elif text is not None and (not text.startswith(_LABEL_ATTRS)
                                       or text in _LABEL_ATTRS):
                fail(ctx.report, spread, f"must be node.labels.<key> or engine.labels.<key>, "
                     f"got {describe(text)}")
            elif text is not None:
                out.preferences.add(spread=text)
    if (limit := f.get("max_replicas_per_node")) is not None:
        out.max_replicas = as_int(ctx.report, limit) or 0
        if spec.WhichOneof("mode") == "global":
            fail(ctx.report, limit, "only applies to mode: replicated")


def _update(ctx: Context, f: Field, out: objects_pb2.UpdateConfig, *, rollback: bool) -> None:
    if as_map(ctx.report, f) is None:
        return
    check_keys(ctx.report, f, {"parallelism", "delay", "failure_action", "monitor",
                               "max_failure_ratio", "order"})
    if (parallelism := f.get("parallelism")) is not None:
        out.parallelism = as_int(ctx.report, parallelism) or 0
    if (delay := f.get("delay")) is not None:
        out.delay_ns = as_duration(ctx.report, delay) or 0
    if (action := f.get("failure_action")) is not None:
        actions = ("pause", "continue") if rollback else ("pause", "continue", "rollback")
        out.failure_action = as_choice(ctx.report, action, actions) or "pause"
    if (monitor := f.get("monitor")) is not None:
        out.monitor_ns = as_duration(ctx.report, monitor) or 0
    if (ratio := f.get("max_failure_ratio")) is not None:
        out.max_failure_ratio = as_float(ctx.report, ratio, maximum=1.0,
                                         what="a number from 0 to 1") or 0.0
    if (order := f.get("order")) is not None:
        out.order = as_choice(ctx.report, order, ("stop-first", "start-first")) or "stop-first"
