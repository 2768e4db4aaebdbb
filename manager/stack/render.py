"""``stack config``: the stack as it will be deployed, as YAML that loads back to the same.

Policy (``docker compose config``'s): the output is the merged files after interpolation,
with every ``$`` escaped again as ``$$`` so that reading it back changes nothing; relative
paths (bind mounts, secret and config files) made absolute; ``env_file`` folded into
``environment`` with variables resolved; ``x-`` extension fields dropped (their anchors have
already been copied to where they are used).
"""

from __future__ import annotations

from typing import Any

from pyswarm.manager.stack.context import Context
from pyswarm.manager.stack.interpolate import escape
from pyswarm.manager.stack.mounts import host_path, is_bind_source
from pyswarm.manager.stack.service import service_environment
from pyswarm.manager.stack.tree import map_strings
from pyswarm.manager.stack.values import Field
from pyswarm.manager.stack.yaml12 import YList, YMap, dump_yaml


def render(tree: YMap, ctx: Context) -> str:
    out = YMap(tree.mark)
    out.put("name", ctx.stack, tree.mark)
    for key, value in tree.items():
        if key == "name" or key.startswith("x-"):
            continue
        if key == "services" and isinstance(value, YMap):
            value = _services(ctx, value)
        elif key in ("secrets", "configs") and isinstance(value, YMap):
            value = _file_paths(ctx, value)
        out.put(key, value, tree.mark_of(key))
    escaped = map_strings(out, out.mark, lambda s, _m, _p: escape(s), keep_extensions=False)
    return dump_yaml(escaped)


def _services(ctx: Context, services: YMap) -> YMap:
    out = YMap(services.mark)
    for name, spec in services.items():
        if not isinstance(spec, YMap) or name.startswith("x-"):
            continue
        entry = YMap(spec.mark)
        for key, value in spec.items():
            if key.startswith("x-") or key == "env_file":
                continue
            if key == "environment":
                continue  # added below, with env_file folded in
            if key == "volumes" and isinstance(value, YList):
                value = _volumes(ctx, value)
            entry.put(key, value, spec.mark_of(key))
        if "environment" in spec or "env_file" in spec:
            field = Field(spec, spec.mark, f"services.{name}")
            environment = YMap(spec.mark)
            for var, text in (service_environment(ctx, field) or {}).items():
                environment.put(var, text, spec.mark)
            entry.put("environment", environment, spec.mark)
        out.put(name, entry, services.mark_of(name))
    return out


def _volumes(ctx: Context, volumes: YList) -> YList:
    out = YList(volumes.mark)
    for index, item in enumerate(volumes):
        if isinstance(item, str) and ":" in item and is_bind_source(item.split(":")[0]):
            source, rest = item.split(":", 1)
            item = f"{host_path(ctx, source)}:{rest}"
        elif isinstance(item, YMap) and item.get("type") == "bind" and isinstance(
            item.get("source"), str
        ):
            item = _with(item, "source", host_path(ctx, item["source"]))
        out.add(item, volumes.mark_of(index))
    return out


def _file_paths(ctx: Context, entries: YMap) -> YMap:
    out = YMap(entries.mark)
    for name, spec in entries.items():
        if isinstance(spec, YMap) and isinstance(spec.get("file"), str):
            spec = _with(spec, "file", str(ctx.project_dir / spec["file"]))
        out.put(name, spec, entries.mark_of(name))
    return out


def _with(source: YMap, key: str, value: Any) -> YMap:
    out = YMap(source.mark)
    for k, v in source.items():
        out.put(k, value if k == key else v, source.mark_of(k))
    return out
