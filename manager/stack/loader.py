"""The stack-file loader: Compose-format files → the cluster objects a stack deploys.

    load_stack([Path("stack.yml")], "web")  → Stack(services, networks, secrets, configs)
    render_config(paths, name)              → the merged, interpolated stack as YAML

Pipeline: read each file (YAML 1.2, marks kept) → interpolate its strings → merge the files
in order → check and convert each section, collecting every error → order services by
``depends_on``. Any error raises :class:`StackInvalid` listing them all; nothing is returned
half-built. The interpolation environment is the process environment (or ``env``) over a
``.env`` file beside the first stack file, as with ``docker stack deploy``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyswarm.common.errors import InvalidArgument
from pyswarm.manager.stack import order, resources, service
from pyswarm.manager.stack.context import Context, Declared
from pyswarm.manager.stack.diagnostics import Mark, Report, StackError, StackInvalid
from pyswarm.manager.stack.envfile import EnvFileError, parse_env_file
from pyswarm.manager.stack.interpolate import Interpolator
from pyswarm.manager.stack.merge import merge_files
from pyswarm.manager.stack.tree import interpolate_tree
from pyswarm.manager.stack.values import Field, as_map, as_str, check_keys, fail
from pyswarm.manager.stack.yaml12 import YMap, parse_yaml
from pyswarm.proto import objects_pb2

__all__ = ["Stack", "StackError", "StackInvalid", "load_stack", "render_config"]

TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "secrets", "configs"}
STACK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_FILE_BYTES = 8 << 20  # a stack file is a page of text; refuse to parse a disk image


@dataclass(frozen=True)
class Stack:
    name: str
    services: list[objects_pb2.ServiceSpec]   # dependencies first
    networks: list[objects_pb2.NetworkSpec]   # the ones the stack creates
    secrets: list[objects_pb2.SecretSpec]
    configs: list[objects_pb2.ConfigSpec]
    warnings: list[str]


@dataclass
class Loaded:
    """A checked stack with what produced it (``render_config`` needs the tree)."""

    stack: Stack
    tree: YMap
    ctx: Context


def load_stack(paths: list[Path], name: str, env: Mapping[str, str] | None = None) -> Stack:
    return load(paths, name, env).stack


def render_config(paths: list[Path], name: str, env: Mapping[str, str] | None = None) -> str:
    from pyswarm.manager.stack.render import render

    loaded = load(paths, name, env)
    return render(loaded.tree, loaded.ctx)


def load(paths: list[Path], name: str, env: Mapping[str, str] | None = None) -> Loaded:
    if not paths:
        raise InvalidArgument("no stack file given")
    report = Report()
    files = [Path(p) for p in paths]
    project_dir = files[0].parent.absolute()
    environment = _environment(project_dir, os.environ if env is None else env, report)
    interpolator = Interpolator(environment)
    merged: YMap | None = None
    for path in files:
        tree = _read(path, report)
        if tree is None:
            continue
        tree = interpolate_tree(tree, interpolator, report)
        merged = tree if merged is None else merge_files(merged, tree)
    report.raise_if_errors()  # a broken file would only make the schema errors confusing
    assert merged is not None
    ctx = Context(report=report, stack="", env=environment, project_dir=project_dir)
    ctx.stack = _stack_name(ctx, merged, name)
    stack = _convert(ctx, Field(merged, merged.mark, ""))
    report.raise_if_errors()
    return Loaded(stack=stack, tree=merged, ctx=ctx)


def _environment(project_dir: Path, env: Mapping[str, str], report: Report) -> dict[str, str]:
    """The process environment over the ``.env`` file beside the first stack file."""
    dotenv = project_dir / ".env"
    values: dict[str, str] = {}
    try:
        text = dotenv.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        report.error(Mark(str(dotenv), 0), "", f"cannot read: {exc}")
        text = ""
    try:
        values = parse_env_file(text, env)
    except EnvFileError as exc:
        report.error(Mark(str(dotenv), exc.line), "", str(exc))
    return {**values, **env}


def _read(path: Path, report: Report) -> YMap | None:
    file = str(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        report.error(Mark(file, 0), "", f"cannot read: {exc.strerror or exc}")
        return None
    if len(data) > MAX_FILE_BYTES:
        report.error(Mark(file, 0), "", f"larger than {MAX_FILE_BYTES >> 20} MiB")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        report.error(Mark(file, line), "", "not valid UTF-8")
        return None
    before = len(report.errors)
    tree = parse_yaml(text, file, report)
    if len(report.errors) > before:
        return None
    if not isinstance(tree, YMap):
        what = "empty" if tree is None else "not a mapping"
        report.error(Mark(file, 1), "", f"a stack file is a mapping of services, networks... "
                     f"(this one is {what})")
        return None
    return tree


def _stack_name(ctx: Context, tree: YMap, name: str) -> str:
    """The name argument, or else the file's ``name:``; it prefixes every object."""
    if not name and (given := Field(tree, tree.mark, "").get("name")) is not None:
        name = as_str(ctx.report, given) or ""
    if not STACK_NAME.match(name):
        raise InvalidArgument(
            f'invalid stack name "{name}": use letters, digits, "_", "." and "-", starting '
            f"with a letter or digit"
        )
    return name


def _convert(ctx: Context, top: Field) -> Stack:
    report = ctx.report
    check_keys(report, top, TOP_LEVEL)
    ctx.networks["default"] = Declared(name=ctx.scoped("default"), external=False)
    network_specs = resources.read_networks(ctx, top.get("networks"))
    resources.read_volumes(ctx, top.get("volumes"))
    secrets = resources.read_secrets(ctx, top.get("secrets"))
    configs = resources.read_configs(ctx, top.get("configs"))

    services_field = top.get("services")
    entries: list[tuple[str, Field]] = []
    if services_field is None:
        fail(report, top, "services: a stack needs at least one service")
    elif as_map(report, services_field) is not None:
        entries = [(k, f) for k, f in services_field.items() if not k.startswith("x-")]
        if not entries:
            fail(report, services_field, "a stack needs at least one service")
    names = [k for k, _ in entries]
    specs: dict[str, objects_pb2.ServiceSpec] = {}
    deps: dict[str, list[str]] = {}
    where: dict[str, Field] = {}
    for key, f in entries:
        spec = service.convert_service(ctx, key, f)
        depends = f.get("depends_on")
        deps[key] = order.read_depends_on(report, depends, names) if depends else []
        where[key] = depends or f
        if spec is not None:
            spec.depends_on.extend(ctx.scoped(d) for d in deps[key])
            specs[key] = spec
    ordered = order.creation_order(report, deps, where)

    networks = []
    for key in ctx.used_networks:
        declared = ctx.networks[key]
        if declared.external:
            continue
        spec_net = network_specs.get(key)
        if spec_net is None:  # the implicit default network
            spec_net = objects_pb2.NetworkSpec(name=declared.name, driver="overlay",
                                               labels=ctx.labels())
        networks.append(spec_net)
    return Stack(
        name=ctx.stack,
        services=[specs[k] for k in ordered if k in specs],
        networks=networks,
        secrets=secrets,
        configs=configs,
        warnings=list(report.warnings),
    )
