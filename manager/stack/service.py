"""One entry of ``services`` → a ServiceSpec (container, mounts, ports, networks, secrets...).

Policy: Docker's ``stack deploy``. The service is ``<stack>_<name>`` and carries the stack
namespace label (on the service and on its containers). ``entrypoint`` becomes the container
command and ``command`` its arguments (a string is split like a shell would). Keys that mean
nothing to a swarm are ignored with a warning naming them; unknown keys are errors. A
service without networks joins the stack's ``default`` network.
"""

from __future__ import annotations

import re
from pathlib import Path

from pyswarm.common.errors import InvalidArgument
from pyswarm.common.units import parse_signal
from pyswarm.manager.stack import deploy, mounts, ports
from pyswarm.manager.stack.context import NAMESPACE_LABEL, Context
from pyswarm.manager.stack.envfile import EnvFileError, parse_env_file
from pyswarm.manager.stack.values import (
    Field,
    as_bool,
    as_duration,
    as_int,
    as_kv,
    as_list,
    as_map,
    as_str,
    as_str_list,
    check_keys,
    describe,
    fail,
    scalar_text,
)
from pyswarm.manager.stack.yaml12 import YList, YMap
from pyswarm.proto import objects_pb2

SUPPORTED = {
    "image", "command", "entrypoint", "environment", "env_file", "labels", "ports", "volumes",
    "tmpfs", "networks", "healthcheck", "secrets", "configs", "user", "working_dir",
    "hostname", "stop_grace_period", "stop_signal", "extra_hosts", "depends_on", "deploy",
}
# Keys of the Compose format that a swarm service cannot honour, with advice where some
# other key does the job. `docker stack deploy` ignores these too ("Ignoring unsupported
# options"); a warning names each one.
IGNORED = {
    "build": "build the image first and use image:",
    "container_name": "swarm names each task itself",
    "restart": "use deploy.restart_policy",
    "links": "services on the same network reach each other by name",
    "external_links": "", "network_mode": "", "devices": "", "cap_add": "", "cap_drop": "",
    "cgroup": "", "cgroupns_mode": "", "cgroup_parent": "", "privileged": "",
    "security_opt": "", "sysctls": "", "ulimits": "", "userns_mode": "", "domainname": "",
    "ipc": "", "pid": "", "mac_address": "", "shm_size": "",
    "expose": "services on the same network reach each other on any port",
    "init": "", "read_only": "", "stdin_open": "", "tty": "", "logging": "", "dns": "",
    "dns_search": "", "dns_opt": "", "isolation": "", "platform": "", "pull_policy": "",
    "profiles": "", "scale": "use deploy.replicas",
    "mem_limit": "use deploy.resources.limits.memory", "memswap_limit": "",
    "mem_reservation": "use deploy.resources.reservations.memory",
    "cpus": "use deploy.resources.limits.cpus", "pids_limit": "use deploy.resources.limits.pids",
    "cpu_shares": "", "cpu_quota": "", "cpu_period": "", "cpuset": "", "cpu_count": "",
    "cpu_percent": "", "cpu_rt_runtime": "", "cpu_rt_period": "", "mem_swappiness": "",
    "oom_kill_disable": "", "oom_score_adj": "", "blkio_config": "", "device_cgroup_rules": "",
    "gpus": "", "group_add": "", "runtime": "", "storage_opt": "", "volumes_from": "",
    "credential_spec": "", "annotations": "", "attach": "", "develop": "", "label_file": "",
    "post_start": "", "pre_stop": "", "use_api_socket": "", "models": "", "provider": "",
}
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_SERVICE_NAME = 63  # a DNS label: tasks resolve it
_NETWORK_IGNORED = {k: "" for k in ("ipv4_address", "ipv6_address", "link_local_ips",
                                    "mac_address", "priority", "gw_priority", "driver_opts",
                                    "interface_name")}


def convert_service(ctx: Context, name: str, f: Field) -> objects_pb2.ServiceSpec | None:
    report = ctx.report
    if as_map(report, f) is None:
        return None
    full_name = ctx.scoped(name)
    if not SERVICE_NAME.match(name):
        fail(report, f, "a service name has letters, digits, '_', '.' and '-', starting with "
             "a letter or digit")
    elif len(full_name) > MAX_SERVICE_NAME:
        fail(report, f, f'"{full_name}" is longer than {MAX_SERVICE_NAME} characters')
    if f.has("extends"):
        fail(report, Field(None, f.value.mark_of("extends"), f.path + ".extends"),
             "not supported; use YAML anchors or several stack files")
    check_keys(report, f, SUPPORTED | {"extends"}, IGNORED)
    spec = objects_pb2.ServiceSpec(name=full_name)
    spec.labels[NAMESPACE_LABEL] = ctx.stack
    deploy.apply_deploy(ctx, f.get("deploy"), spec)
    spec.labels[NAMESPACE_LABEL] = ctx.stack  # deploy.labels cannot take the stack away
    _container(ctx, f, spec.task.container)
    if (ports_field := f.get("ports")) is not None:
        spec.endpoint.ports.extend(ports.read_ports(ctx, ports_field))
        if spec.endpoint.mode == "dnsrr" and any(
            p.publish_mode == objects_pb2.PUBLISH_MODE_INGRESS for p in spec.endpoint.ports
        ):
            fail(report, ports_field, "ingress-published ports need endpoint_mode: vip "
                 '(or mode: host ports)')
    _networks(ctx, f, spec.task)
    return spec


def _container(ctx: Context, f: Field, out: objects_pb2.ContainerSpec) -> None:
    report = ctx.report
    image = f.get("image")
    if image is None:
        fail(report, f, "image is required in swarm mode")
    else:
        out.image = as_str(report, image) or ""
    if (entrypoint := f.get("entrypoint")) is not None or f.has("entrypoint"):
        out.command_set = True
        if entrypoint is not None:
            out.command.extend(as_str_list(report, entrypoint, shell_split=True) or [])
    if (command := f.get("command")) is not None or f.has("command"):
        out.args_set = True
        if command is not None:
            out.args.extend(as_str_list(report, command, shell_split=True) or [])
    environment = service_environment(ctx, f)
    out.env.extend(f"{k}={v}" for k, v in (environment or {}).items())
    if (labels := f.get("labels")) is not None:
        out.labels.update({k: v or "" for k, v in (as_kv(report, labels) or {}).items()})
    out.labels[NAMESPACE_LABEL] = ctx.stack
    for key, attr in (("user", "user"), ("working_dir", "dir"), ("hostname", "hostname")):
        if (child := f.get(key)) is not None:
            setattr(out, attr, as_str(report, child) or "")
    if (grace := f.get("stop_grace_period")) is not None:
        out.stop_grace_period_ns = as_duration(report, grace) or 0
    if (stop_signal := f.get("stop_signal")) is not None:
        text = as_str(report, stop_signal)
        if text is not None:
            try:
                parse_signal(text)
                out.stop_signal = text
            except InvalidArgument:
                fail(report, stop_signal, f"not a signal: {describe(text)}")
    if (hosts := f.get("extra_hosts")) is not None:
        out.extra_hosts.extend(_extra_hosts(ctx, hosts))
    if (volumes := f.get("volumes")) is not None:
        out.mounts.extend(mounts.read_volumes(ctx, volumes))
    if (tmpfs := f.get("tmpfs")) is not None:
        out.mounts.extend(mounts.read_tmpfs(ctx, tmpfs))
    if (health := f.get("healthcheck")) is not None:
        _healthcheck(ctx, health, out.healthcheck)
    if (secrets := f.get("secrets")) is not None:
        out.secrets.extend(_file_refs(ctx, secrets, "secret"))
    if (configs := f.get("configs")) is not None:
        out.configs.extend(_file_refs(ctx, configs, "config"))


def service_environment(ctx: Context, f: Field) -> dict[str, str] | None:
    """The container environment: ``env_file`` contents, overridden by ``environment``.
    A variable named without a value takes the stack environment's, or is left out."""
    report = ctx.report
    values: dict[str, str] = {}
    env_file = f.get("env_file")
    for entry in _env_files(ctx, env_file) if env_file is not None else []:
        path_field, required = entry
        path = Path(ctx.project_dir, str(path_field.value))
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            if required:
                fail(report, path_field, f"cannot read {path}: "
                     f"{getattr(exc, 'strerror', None) or exc}")
            continue
        try:
            values.update(parse_env_file(text, ctx.env))
        except EnvFileError as exc:
            fail(report, path_field, f"{path}:{exc.line}: {exc}")
    if (environment := f.get("environment")) is not None:
        given = as_kv(report, environment, fill=ctx.env)
        if given is None:
            return None
        for key, value in given.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
    return values


def _env_files(ctx: Context, f: Field) -> list[tuple[Field, bool]]:
    """``env_file`` entries as (path field, required)."""
    if isinstance(f.value, str):
        return [(f, True)]
    if as_list(ctx.report, f) is None:
        return []
    out = []
    for entry in f.elements():
        if isinstance(entry.value, str):
            out.append((entry, True))
        elif isinstance(entry.value, YMap):
            check_keys(ctx.report, entry, {"path", "required"}, {"format": ""})
            path = entry.get("path")
            required = entry.get("required")
            if path is None:
                fail(ctx.report, entry, "path is required")
            elif as_str(ctx.report, path) is not None:
                out.append((Field(scalar_text(path.value), path.mark, path.path),
                            True if required is None else bool(as_bool(ctx.report, required))))
        else:
            fail(ctx.report, entry, f"must be a file path, got {describe(entry.value)}")
    return out


def _extra_hosts(ctx: Context, f: Field) -> list[str]:
    out = []
    if isinstance(f.value, YMap):
        for host, child in f.items():
            ip = as_str(ctx.report, child)
            if ip is not None:
                out.append(f"{host}:{ip}")
        return out
    for text in as_str_list(ctx.report, f) or []:
        sep = "=" if "=" in text else ":"
        host, found, ip = text.partition(sep)
        if not found or not host or not ip:
            fail(ctx.report, f, f'an entry must be "host:ip", got {describe(text)}')
            continue
        out.append(f"{host}:{ip}")
    return out


def _healthcheck(ctx: Context, f: Field, out: objects_pb2.HealthCheck) -> None:
    report = ctx.report
    if as_map(report, f) is None:
        return
    check_keys(report, f, {"test", "interval", "timeout", "start_period", "retries", "disable"},
               {"start_interval": ""})
    disable = f.get("disable")
    if disable is not None and as_bool(report, disable):
        out.test.append("NONE")
        return
    if (test := f.get("test")) is not None:
        if isinstance(test.value, str):
            out.test.extend(["CMD-SHELL", test.value])
        else:
            words = as_str_list(report, test) or []
            if words and words[0] not in ("CMD", "CMD-SHELL", "NONE"):
                fail(report, test, f'a test list starts with "CMD", "CMD-SHELL" or "NONE", '
                     f"got {describe(words[0])}")
            else:
                out.test.extend(words)
    for key, attr in (("interval", "interval_ns"), ("timeout", "timeout_ns"),
                      ("start_period", "start_period_ns")):
        if (child := f.get(key)) is not None:
            setattr(out, attr, as_duration(report, child) or 0)
    if (retries := f.get("retries")) is not None:
        out.retries = as_int(report, retries, maximum=2**31 - 1) or 0


def _file_refs(ctx: Context, f: Field, kind: str) -> list[objects_pb2.FileReference]:
    """A service's ``secrets``/``configs``: short names or long {source, target, uid, gid,
    mode}. Secrets land in /run/secrets/<target>, configs at /<source> unless given."""
    report = ctx.report
    table = ctx.secrets if kind == "secret" else ctx.configs
    if as_list(report, f) is None:
        return []
    refs = []
    for entry in f.elements():
        if isinstance(entry.value, str):
            source, long = entry.value, None
        elif isinstance(entry.value, YMap):
            long = entry
            check_keys(report, entry, {"source", "target", "uid", "gid", "mode"})
            source_field = entry.get("source")
            if source_field is None:
                fail(report, entry, "source is required")
                continue
            source = as_str(report, source_field) or ""
        else:
            fail(report, entry, f"must be a {kind} name or mapping, got {describe(entry.value)}")
            continue
        declared = table.get(source)
        if declared is None:
            fail(report, entry, f'{kind} "{source}" is not declared in the top-level {kind}s')
            continue
        ref = objects_pb2.FileReference(name=declared.name, target=source, mode=0o444)
        if kind == "config":
            ref.target = "/" + source
        if long is not None:
            _file_ref_options(ctx, long, ref)
        refs.append(ref)
    return refs


def _file_ref_options(ctx: Context, f: Field, ref: objects_pb2.FileReference) -> None:
    if (target := f.get("target")) is not None:
        ref.target = as_str(ctx.report, target) or ref.target
    for key in ("uid", "gid"):
        if (child := f.get(key)) is not None:
            setattr(ref, key, as_int(ctx.report, child, maximum=2**32 - 1) or 0)
    if (mode := f.get("mode")) is not None:
        ref.mode = _file_mode(ctx, mode)


def _file_mode(ctx: Context, f: Field) -> int:
    """A file mode: ``0440`` (written with a leading zero, or as a string) is octal, as in
    Docker's documentation; ``0o440`` is octal; other numbers are decimal (288 = 0o440)."""
    value = f.value
    text = getattr(value, "text", None) if isinstance(value, int) else value
    if isinstance(text, str) and re.fullmatch(r"0?[0-7]{1,4}|0o[0-7]{1,4}", text):
        return int(text.removeprefix("0o"), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    fail(ctx.report, f, f'must be an octal file mode like 0440, got {describe(value)}')
    return 0o444


def _networks(ctx: Context, f: Field, task: objects_pb2.TaskSpec) -> None:
    """Attachments: the listed networks, or the stack's ``default`` network when none."""
    report = ctx.report
    networks = f.get("networks")
    entries: list[tuple[str, Field | None, Field]] = []
    if networks is None:
        entries.append(("default", None, f))
    elif isinstance(networks.value, YList):
        for element in networks.elements():
            name = as_str(report, element)
            if name is not None:
                entries.append((name, None, element))
    elif isinstance(networks.value, YMap):
        for name, child in networks.items():
            entries.append((name, child if child.value is not None else None, child))
    else:
        fail(report, networks, f"must be a list or a mapping, got {describe(networks.value)}")
    for name, options, where in entries:
        declared = ctx.networks.get(name)
        if declared is None:
            fail(report, where, f'network "{name}" is not declared in the top-level networks')
            continue
        if name not in ctx.used_networks:
            ctx.used_networks.append(name)
        attachment = task.networks.add(target=declared.name)
        if options is not None and as_map(report, options) is not None:
            check_keys(report, options, {"aliases"}, _NETWORK_IGNORED)
            if (aliases := options.get("aliases")) is not None:
                attachment.aliases.extend(as_str_list(report, aliases) or [])
