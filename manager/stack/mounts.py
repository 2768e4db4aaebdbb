"""A service's ``volumes`` (short ``"src:dst[:ro]"`` and long forms) and ``tmpfs`` → Mount.

Policy: a source starting with ``/``, ``.`` or ``~`` is a bind mount of that host path
(relative ones resolve against the first stack file's folder, ``~`` against $HOME); any other
source names a volume, which must be declared in the top-level ``volumes`` and is then
``<stack>_<name>`` in the cluster; no source at all is an anonymous volume. Targets must be
absolute. Options with no swarm meaning (SELinux ``z``/``Z``, ``cached``...) are ignored with
a warning; ``ro`` makes the mount read-only.
"""

from __future__ import annotations

import os
import posixpath

from pyswarm.manager.stack.context import Context
from pyswarm.manager.stack.values import (
    Field,
    as_bool,
    as_choice,
    as_map,
    as_size,
    as_str,
    as_str_list,
    check_keys,
    describe,
    fail,
)
from pyswarm.manager.stack.yaml12 import YList, YMap
from pyswarm.proto import objects_pb2

_IGNORED_OPTIONS = {"z", "Z", "nocopy", "cached", "delegated", "consistent", "shared",
                    "rshared", "slave", "rslave", "private", "rprivate", "copy"}


def is_bind_source(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def host_path(ctx: Context, source: str) -> str:
    """A bind source as an absolute, normalized host path."""
    if source.startswith("~"):
        source = ctx.env.get("HOME", os.path.expanduser("~")) + source[1:]
    return posixpath.normpath(posixpath.join(str(ctx.project_dir), source))


def read_volumes(ctx: Context, f: Field) -> list[objects_pb2.Mount]:
    if not isinstance(f.value, YList):
        fail(ctx.report, f, f"must be a list, got {describe(f.value)}")
        return []
    mounts = []
    for entry in f.elements():
        if isinstance(entry.value, str):
            mount = _short(ctx, entry, entry.value)
        elif isinstance(entry.value, YMap):
            mount = _long(ctx, entry)
        else:
            fail(ctx.report, entry, f"must be a volume string or mapping, got "
                 f"{describe(entry.value)}")
            continue
        if mount is not None:
            mounts.append(mount)
    return mounts


def _source(ctx: Context, f: Field, kind: str, source: str) -> str | None:
    """The mount source as the cluster knows it, or None after reporting an error."""
    if kind == "bind":
        return host_path(ctx, source)
    if kind == "volume" and source:
        declared = ctx.volumes.get(source)
        if declared is None:
            fail(ctx.report, f, f'volume "{source}" is not declared in the top-level volumes')
            return None
        return declared.name
    return source


def _target_ok(ctx: Context, f: Field, target: str) -> bool:
    if target.startswith("/"):
        return True
    fail(ctx.report, f, f"the target must be an absolute path, got {describe(target)}")
    return False


def _short(ctx: Context, f: Field, text: str) -> objects_pb2.Mount | None:
    parts = text.split(":")
    if len(parts) > 3 or not all(parts[:2]):
        fail(ctx.report, f, f'must be like "source:/target[:ro]" or "/target", got '
             f"{describe(text)}")
        return None
    source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
    read_only = False
    for option in (parts[2].split(",") if len(parts) == 3 else []):
        if option in ("ro", "rw"):
            read_only = option == "ro"
        elif option in _IGNORED_OPTIONS:
            ctx.report.warn(f.mark, f.path, f'option "{option}" ignored in swarm mode')
        else:
            fail(ctx.report, f, f'unknown volume option "{option}" (expected ro or rw)')
            return None
    if not _target_ok(ctx, f, target):
        return None
    kind = "bind" if is_bind_source(source) else "volume"
    cluster_source = _source(ctx, f, kind, source)
    if cluster_source is None:
        return None
    return objects_pb2.Mount(type=kind, source=cluster_source, target=target,
                             read_only=read_only)


def _long(ctx: Context, f: Field) -> objects_pb2.Mount | None:
    if as_map(ctx.report, f) is None:
        return None
    check_keys(ctx.report, f, {"type", "source", "target", "read_only", "tmpfs", "bind",
                               "volume"}, {"consistency": ""})
    type_field = f.get("type")
    if type_field is None:
        fail(ctx.report, f, "type is required (volume, bind or tmpfs)")
        return None
    kind = as_choice(ctx.report, type_field, ("volume", "bind", "tmpfs"))
    target_field = f.get("target")
    if target_field is None:
        fail(ctx.report, f, "target is required")
        return None
    target = as_str(ctx.report, target_field)
    source_field = f.get("source")
    source = (as_str(ctx.report, source_field) if source_field is not None else "") or ""
    if kind is None or target is None or not _target_ok(ctx, target_field, target):
        return None
    mount = objects_pb2.Mount(type=kind, target=target)
    if kind == "bind" and not source:
        fail(ctx.report, f, "a bind mount needs a source")
        return None
    if kind == "tmpfs" and source_field is not None:
        fail(ctx.report, source_field, "a tmpfs mount has no source")
        return None
    cluster_source = _source(ctx, source_field or f, kind, source)
    if cluster_source is None:
        return None
    mount.source = cluster_source
    if (read_only := f.get("read_only")) is not None:
        mount.read_only = bool(as_bool(ctx.report, read_only))
    for sub in ("bind", "volume"):
        if (options := f.get(sub)) is not None and as_map(ctx.report, options) is not None:
            ctx.report.warn(options.mark, options.path, "ignored in swarm mode")
    if (tmpfs := f.get("tmpfs")) is not None and as_map(ctx.report, tmpfs) is not None:
        if kind != "tmpfs":
            fail(ctx.report, tmpfs, "only applies to type: tmpfs")
        check_keys(ctx.report, tmpfs, {"size"}, {"mode": ""})
        if (size := tmpfs.get("size")) is not None:
            mount.tmpfs_size_bytes = as_size(ctx.report, size) or 0
    return mount


def read_tmpfs(ctx: Context, f: Field) -> list[objects_pb2.Mount]:
    """The service-level ``tmpfs: [/run, "/tmp:size=64m"]`` → tmpfs mounts."""
    paths = as_str_list(ctx.report, f)
    mounts = []
    for text in paths or []:
        target, _, options = text.partition(":")
        if not _target_ok(ctx, f, target):
            continue
        mount = objects_pb2.Mount(type="tmpfs", target=target)
        for option in filter(None, options.split(",")):
            name, _, value = option.partition("=")
            if name == "size":
                mount.tmpfs_size_bytes = as_size(ctx.report, Field(value, f.mark, f.path)) or 0
            else:
                ctx.report.warn(f.mark, f.path, f'tmpfs option "{name}" ignored')
        mounts.append(mount)
    return mounts
