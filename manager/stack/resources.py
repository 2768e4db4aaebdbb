"""Top-level ``networks``, ``volumes``, ``secrets`` and ``configs``.

Policy (Docker's ``stack deploy``): each is named ``<stack>_<key>`` in the cluster unless it
has an explicit ``name:`` or is ``external`` (then it must already exist, named by its key or
``name:``, and the stack does not create it). Networks default to the overlay driver, the
only one that spans the swarm. Secrets and configs take their data from ``file:`` (relative
to the first stack file's folder), from ``environment:`` (a variable), or, for configs, from
inline ``content:``. Volumes have no cluster object; they only name a service's mounts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from pyswarm.manager.stack.context import Context, Declared
from pyswarm.manager.stack.values import (
    Field,
    as_bool,
    as_kv,
    as_list,
    as_map,
    as_str,
    check_keys,
    describe,
    fail,
)
from pyswarm.manager.stack.yaml12 import YMap
from pyswarm.proto import objects_pb2

_IGNORED_OPTS = {"driver_opts": "", "enable_ipv6": ""}


def _declare(ctx: Context, key: str, f: Field, conflicts: set[str]) -> Declared:
    """The cluster name and externality of one top-level entry."""
    external = f.get("external")
    name_field = f.get("name")
    name = as_str(ctx.report, name_field) if name_field else None
    is_external = False
    if external is not None:
        if isinstance(external.value, YMap):
            legacy = external.get("name")
            is_external = True
            if legacy is not None:
                ctx.report.warn(external.mark, external.path,
                                'external.name is deprecated; use "name:" with "external: true"')
                name = as_str(ctx.report, legacy) or name
        else:
            is_external = bool(as_bool(ctx.report, external))
    if is_external:
        for other, _child in f.items():
            if other in conflicts:
                fail(ctx.report, _child, 'conflicts with "external: true"')
    if name is None:
        name = key if is_external else ctx.scoped(key)
    return Declared(name=name, external=is_external)


def _entries(ctx: Context, top: Field | None) -> list[tuple[str, Field]]:
    if top is None or as_map(ctx.report, top) is None:
        return []
    out = []
    for key, child in top.items():
        if child.value is None:  # `networks: {front:}` declares with all defaults
            child = Field(YMap(child.mark), child.mark, child.path)
        if as_map(ctx.report, child) is not None:
            out.append((key, child))
    return out


def read_networks(ctx: Context, top: Field | None) -> dict[str, objects_pb2.NetworkSpec]:
    """Declares every network in ``ctx.networks``; returns the specs of non-external ones."""
    specs: dict[str, objects_pb2.NetworkSpec] = {}
    allowed = {"driver", "attachable", "internal", "ipam", "labels", "external", "name"}
    for key, f in _entries(ctx, top):
        check_keys(ctx.report, f, allowed, _IGNORED_OPTS)
        declared = _declare(ctx, key, f, {"driver", "ipam", "attachable", "internal", "labels"})
        ctx.networks[key] = declared
        if declared.external:
            continue
        spec = objects_pb2.NetworkSpec(name=declared.name, driver="overlay")
        driver = f.get("driver")
        if driver is not None and as_str(ctx.report, driver) not in (None, "overlay"):
            fail(ctx.report, driver, f"only the overlay driver spans a swarm, got "
                 f"{describe(driver.value)}")
        for flag in ("attachable", "internal"):
            child = f.get(flag)
            if child is not None:
                setattr(spec, flag, bool(as_bool(ctx.report, child)))
        spec.labels.update(ctx.labels(_labels(ctx, f)))
        ipam = f.get("ipam")
        if ipam is not None and as_map(ctx.report, ipam) is not None:
            spec.subnet = _subnet(ctx, ipam)
        specs[key] = spec
    return specs


def _subnet(ctx: Context, ipam: Field) -> str:
    check_keys(ctx.report, ipam, {"driver", "config"}, {"options": ""})
    driver = ipam.get("driver")
    if driver is not None and as_str(ctx.report, driver) not in (None, "default"):
        ctx.report.warn(driver.mark, driver.path, "ignored: pyswarm has one IPAM driver")
    config = ipam.get("config")
    if config is None or as_list(ctx.report, config) is None:
        return ""
    subnets = []
    for entry in config.elements():
        if as_map(ctx.report, entry) is None:
            continue
        check_keys(ctx.report, entry, {"subnet"},
                   {"ip_range": "", "gateway": "", "aux_addresses": ""})
        subnet = entry.get("subnet")
        text = as_str(ctx.report, subnet) if subnet is not None else None
        if subnet is None or text is None:
            continue
        try:
            subnets.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            fail(ctx.report, subnet, f"must be a subnet like 10.0.9.0/24, got {describe(text)}")
    if len(subnets) > 1:
        ctx.report.warn(config.mark, config.path, "only the first subnet is used")
    return subnets[0] if subnets else ""


def read_volumes(ctx: Context, top: Field | None) -> None:
    for key, f in _entries(ctx, top):
        check_keys(ctx.report, f, {"driver", "external", "labels", "name"}, {"driver_opts": ""})
        driver = f.get("driver")
        if driver is not None and as_str(ctx.report, driver) not in (None, "local"):
            ctx.report.warn(driver.mark, driver.path, "ignored: volumes are local to each node")
        _labels(ctx, f)
        ctx.volumes[key] = _declare(ctx, key, f, {"driver", "driver_opts", "labels"})


def read_secrets(ctx: Context, top: Field | None) -> list[objects_pb2.SecretSpec]:
    out: list[objects_pb2.SecretSpec] = []
    for _key, declared, data, labels in _file_objects(ctx, top, ctx.secrets, inline=False):
        if not declared.external and data is not None:
            out.append(objects_pb2.SecretSpec(name=declared.name, labels=labels, data=data))
    return out


def read_configs(ctx: Context, top: Field | None) -> list[objects_pb2.ConfigSpec]:
    out: list[objects_pb2.ConfigSpec] = []
    for _key, declared, data, labels in _file_objects(ctx, top, ctx.configs, inline=True):
        if not declared.external and data is not None:
            out.append(objects_pb2.ConfigSpec(name=declared.name, labels=labels, data=data))
    return out


def _file_objects(
    ctx: Context, top: Field | None, table: dict[str, Declared], *, inline: bool
) -> list[tuple[str, Declared, bytes | None, dict[str, str]]]:
    sources = ("file", "environment", "content") if inline else ("file", "environment")
    allowed = {*sources, "external", "name", "labels"}
    ignored = {"driver": "", "driver_opts": "", "template_driver": ""}
    out = []
    for key, f in _entries(ctx, top):
        check_keys(ctx.report, f, allowed, ignored)
        declared = _declare(ctx, key, f, set(sources))
        table[key] = declared
        labels = ctx.labels(_labels(ctx, f))
        given = [s for s in sources if f.get(s) is not None]
        data: bytes | None = None
        if declared.external:
            pass
        elif len(given) != 1:
            choices = ", ".join(f'"{s}"' for s in sources)
            fail(ctx.report, f, f"needs exactly one of {choices} (or external: true)")
        else:
            data = _READERS[given[0]](ctx, f.get(given[0]))  # type: ignore[arg-type]
        out.append((key, declared, data, labels))
    return out


def _from_file(ctx: Context, f: Field) -> bytes | None:
    text = as_str(ctx.report, f)
    if text is None:
        return None
    path = ctx.project_dir / text
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(ctx.report, f, f"cannot read {path}: {exc.strerror or exc}")
        return None


def _from_env(ctx: Context, f: Field) -> bytes | None:
    name = as_str(ctx.report, f)
    if name is None:
        return None
    if name not in ctx.env:
        fail(ctx.report, f, f"environment variable {name} is not set")
        return None
    return ctx.env[name].encode()


def _from_content(ctx: Context, f: Field) -> bytes | None:
    text = as_str(ctx.report, f)
    return None if text is None else text.encode()


_READERS: dict[str, Callable[[Context, Field], bytes | None]] = {
    "file": _from_file, "environment": _from_env, "content": _from_content,
}


def _labels(ctx: Context, f: Field) -> dict[str, str]:
    labels = f.get("labels")
    if labels is None:
        return {}
    values = as_kv(ctx.report, labels)
    return {k: v or "" for k, v in (values or {}).items()}
