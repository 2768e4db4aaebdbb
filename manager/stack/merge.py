"""Merging several stack files (``-c a.yml -c b.yml``): later files override earlier ones.

Policy, after Compose's merge rules, applied to the interpolated trees:
- mappings merge key by key, recursively; a scalar, or a value of another type, replaces;
- commands (``command``, ``entrypoint``, ``healthcheck.test``) replace as a whole;
- ``environment``, ``labels``, ``deploy.labels``, ``extra_hosts``, ``networks`` and
  ``depends_on`` merge as mappings even when written as lists (the list forms are turned
  into mappings first), so an override can change one variable or add one network;
- ``volumes`` and ``secrets``/``configs`` of a service merge by their target: an override
  entry replaces the base entry with the same target, others are appended;
- every other list (``ports``, ``env_file``, placement constraints...) is appended to, with
  exact duplicates dropped.
Each value keeps the mark of the file it came from, so errors name the right file and line.
"""

from __future__ import annotations

from typing import Any

from pyswarm.manager.stack.yaml12 import YList, YMap

_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
_AS_MAPPING = {("environment",), ("labels",), ("deploy", "labels"), ("extra_hosts",),
               ("networks",), ("depends_on",)}
_BY_TARGET = {("volumes",), ("secrets",), ("configs",)}


def merge_files(base: YMap, override: YMap) -> YMap:
    out = _copy_map(base)
    for key, value in override.items():
        mark = override.mark_of(key)
        old = out.get(key)
        if key == "services" and isinstance(old, YMap) and isinstance(value, YMap):
            services = _copy_map(old)
            for name, spec in value.items():
                before = services.get(name)
                merged = (_merge((), before, spec)
                          if isinstance(before, YMap) and isinstance(spec, YMap) else spec)
                services.put(name, merged, value.mark_of(name) if name not in services
                             else services.mark_of(name))
            out.put(key, services, out.mark_of(key))
        elif isinstance(old, YMap) and isinstance(value, YMap):
            out.put(key, _merge(("top",), old, value), out.mark_of(key))
        else:
            out.put(key, value, mark)
    return out


def _copy_map(source: YMap) -> YMap:
    out = YMap(source.mark)
    for key, value in source.items():
        out.put(key, value, source.mark_of(key))
    return out


def _merge(path: tuple[str, ...], base: Any, over: Any) -> Any:
    if path in _AS_MAPPING:
        base, over = _as_mapping(base, path), _as_mapping(over, path)
    if isinstance(base, YMap) and isinstance(over, YMap):
        out = _copy_map(base)
        for key, value in over.items():
            merged = _merge(path + (key,), base[key], value) if key in base else value
            out.put(key, merged, over.mark_of(key))
        return out
    if isinstance(base, YList) and isinstance(over, YList) and path not in _REPLACED:
        return _merge_lists(base, over, by_target=path in _BY_TARGET)
    return over


def _merge_lists(base: YList, over: YList, *, by_target: bool) -> YList:
    out = YList(base.mark)
    keys: list[Any] = []
    for source in (base, over):
        for index, item in enumerate(source):
            key = _target(item) if by_target else item
            if key is not None and key in keys:
                at = keys.index(key)
                if by_target:  # the override's entry replaces the base's
                    out[at] = item
                    out.item_marks[at] = source.mark_of(index)
                continue
            keys.append(key)
            out.add(item, source.mark_of(index))
    return out


def _target(item: Any) -> Any:
    """What identifies a volume, secret or config entry of a service: its target."""
    if isinstance(item, str):
        parts = item.split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    if isinstance(item, YMap):
        return item.get("target") or item.get("source")
    return None


def _as_mapping(value: Any, path: tuple[str, ...]) -> Any:
    """The mapping form of a list-form environment, labels, extra_hosts, networks, depends_on.
    Lists it cannot convert are returned as they are (the schema check reports them)."""
    if not isinstance(value, YList):
        return value
    out = YMap(value.mark)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return value
        if path in (("networks",), ("depends_on",)):
            key, rest = item, None
        else:
            sep = "=" if "=" in item or path != ("extra_hosts",) else ":"
            key, found, text = item.partition(sep)
            rest = text if found else None
        out.put(key, rest, value.mark_of(index))
    return out
