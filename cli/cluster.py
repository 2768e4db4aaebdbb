"""Cluster commands: init, join, join-token, deploy, stack, service and node — the Control
API, docker's way.

Every command reads or writes through a manager's Control service (on the local daemon's
socket) and renders the answer; the manager decides everything. The one thing done here is
waiting: after a deploy, scale or update the CLI watches the services converge (progress.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pyswarm.cli import progress, render
from pyswarm.cli.client import CLIError, control, explain

STACK_LABEL = "com.docker.stack.namespace"
DEFAULT_STACK_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml",
                       "docker-compose.yml", "stack.yaml", "stack.yml")
EXIT_FAILED = 1  # a stack that did not deploy or converge, as docker stack deploy exits
NOT_MANAGER = ('Error response from daemon: This node is not a swarm manager. Use "pyswarm '
               'init" to make this node a manager of a new cluster.')


def _pb() -> Any:
    from pyswarm.proto import cluster_pb2

    return cluster_pb2


def _objects() -> Any:
    from pyswarm.proto import objects_pb2

    return objects_pb2


def _explain(exc: Exception) -> CLIError:
    """``explain``, plus what the cluster API adds: 'not a manager', 'no cluster API'."""
    import grpc

    if isinstance(exc, grpc.RpcError):
        code, details = exc.code(), (exc.details() or "")
        if code == grpc.StatusCode.FAILED_PRECONDITION and "not a swarm manager" in details.lower():
            if "worker nodes" in details.lower():
                return CLIError(f"Error response from daemon: {details[:1].upper()}{details[1:]}")
            return CLIError(NOT_MANAGER)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return CLIError("Error response from daemon: this daemon does not serve the "
                            "cluster API yet (Control); upgrade pyswarm on this node")
    return explain(exc)


def _call(method: Callable[[Any], Any], request: Any) -> Any:
    try:
        return method(request)
    except CLIError:
        raise
    except Exception as exc:
        raise _explain(exc) from None


def _each(refs: Iterable[str], call: Callable[[str], Any]) -> int:
    """Apply ``call`` to each ref, printing the ref on success and the error otherwise."""
    failed = False
    for ref in refs:
        try:
            call(ref)
            print(ref)
        except Exception as exc:
            print(exc if isinstance(exc, CLIError) else _explain(exc), file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _enum(enum: Any, value: int, prefix: str) -> str:
    """``NODE_STATE_READY`` → ``ready``."""
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _print_inspect(found: list[dict[str, Any]]) -> None:
    print(json.dumps(found, indent=4, sort_keys=True))


def _key_values(items: Iterable[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise CLIError(f'pyswarm: invalid {flag} "{item}": expected KEY=VALUE')
        out[key] = value
    return out


# ---- init ---------------------------------------------------------------------------


def cmd_init(a: argparse.Namespace) -> int:
    stub = control()
    answer = _call(stub.Init, _pb().InitRequest(store_url=a.store, advertise_addr=a.advertise_addr,
                                                listen_addr=a.listen_addr))
    print(f"Swarm initialized: current node ({answer.node_id}) is now a manager.\n")
    try:
        tokens = stub.JoinTokens(_pb().JoinTokensRequest())
        print(_join_instructions("worker", tokens.worker, tokens.manager_addr))
    except Exception:
        print("To add a worker to this swarm, run 'pyswarm join-token worker' and follow the "
              "instructions.\n")
    print("To add a manager to this swarm, run 'pyswarm join-token manager' and follow the "
          "instructions.\n")
    print("To deploy a stack on it, run:\n\n    pyswarm deploy stack.yml\n")
    return 0


def _join_instructions(role: str, token: str, addr: str) -> str:
    return (f"To add a {role} to this swarm, run the following command:\n\n"
            f"    pyswarm join --token {token} {addr}\n")


def cmd_join(a: argparse.Namespace) -> int:
    answer = _call(control().Join, _pb().JoinRequest(
        addr=a.manager, token=a.token, advertise_addr=a.advertise_addr,
        listen_addr=a.listen_addr))
    print(f"This node joined a swarm as a {answer.role or 'worker'}.")
    if answer.role == "manager":
        print("It is registered as a manager; until several manager processes can run (HA), "
              "it runs tasks as a worker does.")
    return 0


def cmd_join_token(a: argparse.Namespace) -> int:
    answer = _call(control().JoinTokens, _pb().JoinTokensRequest(
        rotate=a.role if a.rotate else ""))
    token = answer.worker if a.role == "worker" else answer.manager
    if a.quiet:
        print(token)
        return 0
    if a.rotate:
        print(f"Successfully rotated {a.role} join token.\n")
    print(_join_instructions(a.role, token, answer.manager_addr))
    return 0


# ---- services and tasks: rendering --------------------------------------------------


def _mode(service: Any) -> str:
    return "global" if service.spec.WhichOneof("mode") == "global" else "replicated"


def _ports(service: Any) -> str:
    ports = service.endpoint.ports or service.spec.endpoint.ports
    return ", ".join(
        f"*:{p.published_port}->{p.target_port}/{p.protocol or 'tcp'}" for p in ports
    )


def service_dict(summary: Any) -> dict[str, Any]:
    s = summary.service
    return {"id": s.id, "name": s.spec.name, "mode": _mode(s),
            "replicas": f"{summary.running}/{summary.desired}",
            "replicas_desired": summary.desired, "replicas_running": summary.running,
            "image": s.spec.task.container.image, "ports": _ports(s),
            "stack": s.spec.labels.get(STACK_LABEL, "")}


def _render_services(summaries: Sequence[Any], fmt: str, quiet: bool = False) -> None:
    if quiet:
        for s in summaries:
            print(s.service.id)
        return
    rows = [service_dict(s) for s in sorted(summaries, key=lambda s: s.service.spec.name)]
    if fmt == "json":
        render.json_lines(rows)
        return
    render.table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                 ([r["id"][:12], r["name"], r["mode"], r["replicas"], r["image"], r["ports"]]
                  for r in rows))


def _hostnames(stub: Any) -> dict[str, str]:
    """node id → hostname, for the columns that show where a task runs."""
    try:
        nodes = stub.ListNodes(_pb().ListNodesRequest()).nodes
    except Exception as exc:
        raise _explain(exc) from None
    return {n.id: n.description.hostname or n.spec.name or n.id for n in nodes}


def _state(state: int) -> str:
    from pyswarm.common import taskstate

    return taskstate.name(state)


def task_dict(task: Any, hostnames: dict[str, str]) -> dict[str, Any]:
    return {"id": task.id, "name": progress.task_name(task), "service": task.service_name,
            "slot": task.slot, "node_id": task.node_id,
            "node": hostnames.get(task.node_id, task.node_id),
            "image": task.spec.container.image,
            "desired_state": _state(task.desired_state), "state": _state(task.status.state),
            "timestamp": task.status.timestamp, "error": task.status.err,
            "message": task.status.message, "exit_code": task.status.container.exit_code}


def _task_order(tasks: Sequence[Any]) -> list[tuple[Any, bool]]:
    """Tasks by service and slot, newest first within a slot; True for the older ones
    (docker draws them as `` \\_ web.1``, the slot's history)."""
    ordered = sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id if not t.slot else "",
                                           t.status.timestamp), reverse=False)
    out: list[tuple[Any, bool]] = []
    groups: dict[str, list[Any]] = {}
    for t in ordered:
        groups.setdefault(progress.task_name(t), []).append(t)
    for group in groups.values():
        group.reverse()
        out.extend((t, i > 0) for i, t in enumerate(group))
    return out


_DESIRED_FILTERS = {"running": {"running", "new", "pending", "assigned", "accepted",
                                "preparing", "starting"},
                    "shutdown": {"shutdown", "remove", "complete", "failed", "rejected",
                                 "orphaned"},
                    "accepted": {"accepted"}}


def _parse_filters(filters: Sequence[str]) -> dict[str, set[str]]:
    parsed: dict[str, set[str]] = {}
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in ("desired-state", "node", "name", "id"):
            raise CLIError(f'pyswarm: invalid filter "{f}": use desired-state=running|shutdown|'
                           'accepted, node=NODE, name=TASK or id=TASK')
        if key == "desired-state" and value not in _DESIRED_FILTERS:
            raise CLIError(f'pyswarm: invalid filter "{f}": desired-state is running, shutdown '
                           'or accepted')
        parsed.setdefault(key, set()).add(value)
    return parsed


def _matches(row: dict[str, Any], filters: dict[str, set[str]]) -> bool:
    checks = {
        "desired-state": lambda v: row["desired_state"] in _DESIRED_FILTERS[v],
        "node": lambda v: v in (row["node"], row["node_id"]),
        "name": lambda v: row["name"].startswith(v),
        "id": lambda v: row["id"].startswith(v),
    }
    return all(any(checks[k](v) for v in values) for k, values in filters.items())


def _render_tasks(tasks: Sequence[Any], hostnames: dict[str, str], a: argparse.Namespace) -> None:
    filters = _parse_filters(a.filter)
    rows = [(task_dict(t, hostnames), older) for t, older in _task_order(tasks)]
    rows = [(r, older) for r, older in rows if _matches(r, filters)]
    if a.quiet:
        for r, _ in rows:
            print(r["id"])
        return
    if a.format == "json":
        render.json_lines(r for r, _ in rows)
        return

    def error(text: str) -> str:
        shown = text if a.no_trunc else render.shorten(text, 40)
        return json.dumps(shown, ensure_ascii=False) if text else ""

    render.table(
        ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"],
        ([r["id"] if a.no_trunc else r["id"][:12],
          (" \\_ " if older else "") + r["name"],
          r["image"], r["node"], r["desired_state"].capitalize(),
          f"{r['state'].capitalize()} {render.ago(r['timestamp'])}".rstrip(),
          error(r["error"])]
         for r, older in rows),
    )


# ---- service ------------------------------------------------------------------------


def cmd_service_ls(a: argparse.Namespace) -> int:
    summaries = _call(control().ListServices, _pb().ListServicesRequest()).services
    _render_services(summaries, a.format, a.quiet)
    return 0


def cmd_service_ps(a: argparse.Namespace) -> int:
    stub = control()
    pb = _pb()
    running_only = a.filter == ["desired-state=running"]
    tasks: list[Any] = []
    for name in a.services:
        tasks.extend(_call(stub.ListTasks, pb.ListTasksRequest(service=name,
                                                                running_only=running_only)).tasks)
    _render_tasks(tasks, _hostnames(stub), a)
    return 0


def cmd_service_inspect(a: argparse.Namespace) -> int:
    stub = control()
    found: list[dict[str, Any]] = []

    def get(ref: str) -> None:
        found.append(_to_dict(stub.GetService(_pb().GetRequest(id=ref))))

    failed = False
    for ref in a.services:
        try:
            get(ref)
        except Exception as exc:
            print(_explain(exc), file=sys.stderr)
            failed = True
    _print_inspect(found)
    return 1 if failed else 0


def cmd_service_logs(a: argparse.Namespace) -> int:
    stub = control()
    hostnames = _hostnames(stub)
    request = _pb().ServiceLogsRequest(service=a.service, follow=a.follow, tail=a.tail)
    try:
        for entry in stub.ServiceLogs(request):
            node = hostnames.get(entry.node_id, entry.node_id[:12])
            prefix = f"{entry.task_name}@{node}    | ".encode()
            stream = sys.stderr if entry.stream == "stderr" else sys.stdout
            for line in entry.data.splitlines(keepends=True):
                stream.buffer.write(prefix + line)
            stream.flush()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        raise _explain(exc) from None
    return 0


def _update_service(stub: Any, ref: str, change: Callable[[Any], None]) -> Any:
    """Read the service, apply ``change`` to a copy of its spec, write it back at the version
    read (a concurrent change makes the manager refuse rather than lose it)."""
    service = _call(stub.GetService, _pb().GetRequest(id=ref))
    spec = _objects().ServiceSpec()
    spec.CopyFrom(service.spec)
    change(spec)
    return _call(stub.UpdateService, _pb().UpdateServiceRequest(
        id=service.id, version=service.meta.version, spec=spec))


def _set_replicas(spec: Any, replicas: int) -> None:
    if spec.WhichOneof("mode") == "global":
        raise CLIError(f"{spec.name}: scale can only be used with replicated mode")
    spec.replicated.replicas = replicas


def _replicas_setter(replicas: int) -> Callable[[Any], None]:
    return lambda spec: _set_replicas(spec, replicas)


def _wait(stub: Any, names: Sequence[str], a: argparse.Namespace, updated: Iterable[str] = (),
          stack: str = "") -> progress.Outcome:
    pb = _pb()

    def poll() -> tuple[Sequence[Any], Sequence[Any]]:
        summaries = _call(stub.ListServices, pb.ListServicesRequest(stack=stack)).services
        if stack:
            tasks = _call(stub.ListTasks, pb.ListTasksRequest(stack=stack)).tasks
        else:
            tasks = [t for n in names
                     for t in _call(stub.ListTasks, pb.ListTasksRequest(service=n)).tasks]
        return summaries, tasks

    return progress.watch(names, poll, a.timeout, progress.Board(names), updated=updated)


def _report(outcome: progress.Outcome, what: str, timeout: float) -> int:
    """Say how the wait ended; the exit status."""
    if outcome.converged:
        n = len(outcome.services)
        print(f"{what}: {n} service{'s' if n != 1 else ''} converged")
        return 0
    reason = "is failing" if outcome.failing else f"has not converged after {timeout:g} s"
    print(f"{what} {reason}:", file=sys.stderr)
    for s in outcome.unconverged:
        print(f"  {s.name}: {s.running}/{s.desired} running", file=sys.stderr)
        for problem in s.problems:
            print(f"    {problem}", file=sys.stderr)
    return EXIT_FAILED


def _wait_or_detach(stub: Any, names: Sequence[str], a: argparse.Namespace, what: str,
                    updated: Iterable[str] = (), stack: str = "") -> int:
    if a.detach:
        return 0
    try:
        outcome = _wait(stub, names, a, updated, stack)
    except KeyboardInterrupt:
        print("\nOperation continuing in the background; watch it with 'pyswarm "
              f"{'stack ps ' + stack if stack else 'service ps ' + ' '.join(names)}'.",
              file=sys.stderr)
        return 130
    return _report(outcome, what, a.timeout)


def cmd_service_scale(a: argparse.Namespace) -> int:
    stub = control()
    wanted: list[tuple[str, int]] = []
    for item in a.scales:
        name, sep, count = item.partition("=")
        if not name or not sep or not count.isdigit():
            raise CLIError(f"pyswarm: invalid scale specifier '{item}': expected SERVICE=REPLICAS"
                           "\nSee 'pyswarm service scale --help'.")
        wanted.append((name, int(count)))
    failed, scaled = False, []
    for name, count in wanted:
        try:
            service = _update_service(stub, name, _replicas_setter(count))
        except CLIError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{name} scaled to {count}")
        scaled.append(service.spec.name)
    status = _wait_or_detach(stub, scaled, a, "Scaled") if scaled else 0
    return 1 if failed else status


def _env_key(item: str) -> str:
    return item.partition("=")[0]


def _apply_update(spec: Any, a: argparse.Namespace) -> None:
    container = spec.task.container
    if a.image:
        container.image = a.image
    if a.replicas is not None:
        _set_replicas(spec, a.replicas)
    if a.env_rm or a.env_add:
        drop = set(a.env_rm) | {_env_key(e) for e in a.env_add}
        env = [e for e in container.env if _env_key(e) not in drop] + list(a.env_add)
        del container.env[:]
        container.env.extend(env)
    if a.constraint_rm or a.constraint_add:
        placement = spec.task.placement
        kept = [c for c in placement.constraints if c not in set(a.constraint_rm)]
        kept += [c for c in a.constraint_add if c not in kept]
        del placement.constraints[:]
        placement.constraints.extend(kept)
    if a.label_add or a.label_rm:
        for key in a.label_rm:
            spec.labels.pop(key, None)
        spec.labels.update(_key_values(a.label_add, "--label-add"))
    if a.force:
        spec.task.force_update += 1


def cmd_service_update(a: argparse.Namespace) -> int:
    stub = control()
    service = _update_service(stub, a.service, lambda spec: _apply_update(spec, a))
    print(service.spec.name)
    return _wait_or_detach(stub, [service.spec.name], a, "Updated",
                           updated=[service.spec.name])


def cmd_service_rm(a: argparse.Namespace) -> int:
    stub = control()
    return _each(a.services, lambda ref: stub.RemoveService(_pb().RemoveRequest(id=ref)))


# ---- stacks -------------------------------------------------------------------------


def _stack_name(explicit: str, paths: Sequence[Path]) -> str:
    """--name, else the first stack file's folder as a docker project name ([a-z0-9_-]).
    The loader checks the name either way."""
    if explicit:
        return explicit
    name = re.sub(r"[^a-z0-9_-]", "", paths[0].resolve().parent.name.lower()).lstrip("_-")
    if not name:
        raise CLIError("pyswarm: cannot name the stack after its folder; use --name NAME",
                       EXIT_FAILED)
    return name


def _stack_paths(files: Sequence[str]) -> list[Path]:
    if files:
        return [Path(f) for f in files]
    for candidate in DEFAULT_STACK_FILES:
        if Path(candidate).is_file():
            return [Path(candidate)]
    raise CLIError("pyswarm: no stack file given and none found here "
                   f"({', '.join(DEFAULT_STACK_FILES)}); use -c FILE", EXIT_FAILED)


def _stack_error(exc: Exception, deploying: bool = True) -> CLIError:
    """The loader's findings, one ``file:line: key: message`` a line (exit 1)."""
    text = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename \
        else str(exc)
    return CLIError(f"Error: invalid stack:\n{text}" + ("\nNothing was deployed." if deploying
                                                       else ""), EXIT_FAILED)


def _load_stack(paths: Sequence[Path], name: str) -> Any:
    from pyswarm.common.errors import InvalidArgument
    from pyswarm.manager.stack.loader import load_stack

    try:
        stack = load_stack(list(paths), name, env=None)
    except (InvalidArgument, OSError) as exc:
        raise _stack_error(exc) from None
    for warning in stack.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    return stack


def deploy(a: argparse.Namespace, files: Sequence[str], name: str) -> int:
    paths = _stack_paths(files)
    name = _stack_name(name, paths)
    stack = _load_stack(paths, name)
    stub = control()
    name = stack.name
    answer = _call(stub.DeployStack, _pb().DeployStackRequest(
        name=name, services=stack.services, networks=stack.networks, secrets=stack.secrets,
        configs=stack.configs, prune=a.prune))
    for service in answer.removed:
        print(f"Removing service {service}")
    for service in answer.created:
        print(f"Creating service {service}")
    for service in answer.updated:
        print(f"Updating service {service}")
    for service in answer.unchanged:
        print(f"Service {service} is up to date")
    names = [s.name for s in stack.services]
    return _wait_or_detach(stub, names, a, f"Stack {name} deployed", updated=answer.updated,
                           stack=name)


def cmd_deploy(a: argparse.Namespace) -> int:
    files, name = list(a.compose_file), a.name
    if a.stack_file and files and not name and not Path(a.stack_file).exists():
        name = a.stack_file  # `deploy -c FILE NAME`, docker stack deploy's order
    elif a.stack_file:
        files.append(a.stack_file)
    return deploy(a, files, name)


def cmd_stack_deploy(a: argparse.Namespace) -> int:
    return deploy(a, a.compose_file, a.stack)


def cmd_stack_config(a: argparse.Namespace) -> int:
    from pyswarm.common.errors import InvalidArgument
    from pyswarm.manager.stack.loader import render_config

    paths = _stack_paths(a.compose_file)
    try:
        text = render_config(paths, _stack_name(a.name, paths), env=None)
    except (InvalidArgument, OSError) as exc:
        raise _stack_error(exc, deploying=False) from None
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_stack_ls(a: argparse.Namespace) -> int:
    stacks = _call(control().ListStacks, _pb().ListStacksRequest()).stacks
    rows = [{"name": s.name, "services": s.services} for s in sorted(stacks, key=lambda s: s.name)]
    if a.format == "json":
        render.json_lines(rows)
    else:
        render.table(["NAME", "SERVICES"], ([r["name"], r["services"]] for r in rows))
    return 0


def cmd_stack_services(a: argparse.Namespace) -> int:
    summaries = _call(control().ListServices, _pb().ListServicesRequest(stack=a.stack)).services
    if not summaries and a.format != "json":
        print(f"Nothing found in stack: {a.stack}", file=sys.stderr)
    _render_services(summaries, a.format, a.quiet)
    return 0


def cmd_stack_ps(a: argparse.Namespace) -> int:
    stub = control()
    tasks = _call(stub.ListTasks, _pb().ListTasksRequest(
        stack=a.stack, running_only=a.filter == ["desired-state=running"])).tasks
    if not tasks and a.format != "json":
        print(f"Nothing found in stack: {a.stack}", file=sys.stderr)
        return 1
    _render_tasks(tasks, _hostnames(stub), a)
    return 0


def cmd_stack_rm(a: argparse.Namespace) -> int:
    stub = control()
    failed = False
    for name in a.stacks:
        try:
            removed = stub.RemoveStack(_pb().RemoveStackRequest(name=name)).removed
        except Exception as exc:
            print(_explain(exc), file=sys.stderr)
            failed = True
            continue
        if not removed:
            print(f"Nothing found in stack: {name}", file=sys.stderr)
        for service in removed:
            print(f"Removing service {service}")
    return 1 if failed else 0


# ---- node ---------------------------------------------------------------------------


def _manager_status(node: Any) -> str:
    if node.role != _objects().NODE_ROLE_MANAGER:
        return ""
    return "leader" if node.manager_status.leader else node.manager_status.reachability


def node_dict(node: Any) -> dict[str, Any]:
    ob = _objects()
    return {"id": node.id, "hostname": node.description.hostname or node.spec.name,
            "role": _enum(ob.NodeRole, node.role, "NODE_ROLE_"),
            "status": _enum(ob.NodeState, node.status.state, "NODE_STATE_"),
            "availability": _enum(ob.NodeAvailability, node.spec.availability,
                                  "NODE_AVAILABILITY_"),
            "address": node.status.addr, "manager_status": _manager_status(node),
            "engine_version": node.description.engine_version,
            "labels": dict(node.spec.labels)}


def cmd_node_ls(a: argparse.Namespace) -> int:
    stub = control()
    nodes = _call(stub.ListNodes, _pb().ListNodesRequest()).nodes
    try:
        self_id = stub.Info(_pb().InfoRequest()).node_id
    except Exception:
        self_id = ""  # the list is still worth showing without the '*'
    rows = sorted((node_dict(n) for n in nodes), key=lambda r: r["hostname"])
    if a.quiet:
        for r in rows:
            print(r["id"])
    elif a.format == "json":
        render.json_lines({**r, "self": r["id"] == self_id} for r in rows)
    else:
        render.table(
            ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"],
            ([r["id"] + (" *" if r["id"] == self_id else ""), r["hostname"],
              r["status"].capitalize(), r["availability"].capitalize(),
              r["manager_status"].capitalize(), r["engine_version"]] for r in rows),
        )
    return 0


def cmd_node_inspect(a: argparse.Namespace) -> int:
    stub = control()
    found: list[dict[str, Any]] = []
    failed = False
    for ref in a.nodes:
        try:
            found.append(_to_dict(stub.GetNode(_pb().GetRequest(id=ref))))
        except Exception as exc:
            print(_explain(exc), file=sys.stderr)
            failed = True
    _print_inspect(found)
    return 1 if failed else 0


def cmd_node_update(a: argparse.Namespace) -> int:
    stub = control()
    ob = _objects()
    labels = _key_values(a.label_add, "--label-add")
    node = _call(stub.GetNode, _pb().GetRequest(id=a.node))
    spec = ob.NodeSpec()
    spec.CopyFrom(node.spec)
    if a.availability:
        spec.availability = ob.NodeAvailability.Value(f"NODE_AVAILABILITY_{a.availability.upper()}")
    if a.role:
        spec.desired_role = ob.NodeRole.Value(f"NODE_ROLE_{a.role.upper()}")
    for key in a.label_rm:
        spec.labels.pop(key, None)
    spec.labels.update(labels)
    _call(stub.UpdateNode, _pb().UpdateNodeRequest(id=node.id, version=node.meta.version,
                                                   spec=spec))
    print(a.node)
    return 0


def cmd_node_rm(a: argparse.Namespace) -> int:
    stub = control()
    return _each(a.nodes, lambda ref: stub.RemoveNode(_pb().RemoveRequest(id=ref, force=a.force)))


def _set_role(a: argparse.Namespace, role: str) -> int:
    """promote/demote: Docker's messages, one line per node; non-zero if any failed."""
    stub = control()
    ob = _objects()
    wanted = ob.NodeRole.Value(f"NODE_ROLE_{role.upper()}")
    failed = False
    for ref in a.nodes:
        try:
            node = stub.GetNode(_pb().GetRequest(id=ref))
            if node.role == wanted:
                print(f"Node {ref} is already a {role}.")
                continue
            spec = ob.NodeSpec()
            spec.CopyFrom(node.spec)
            spec.desired_role = wanted
            stub.UpdateNode(_pb().UpdateNodeRequest(id=node.id, version=node.meta.version,
                                                    spec=spec))
        except Exception as exc:
            print(exc if isinstance(exc, CLIError) else _explain(exc), file=sys.stderr)
            failed = True
            continue
        print(f"Node {ref} promoted to a manager in the swarm." if role == "manager"
              else f"Manager {ref} demoted in the swarm.")
    return 1 if failed else 0


def cmd_node_promote(a: argparse.Namespace) -> int:
    return _set_role(a, "manager")


def cmd_node_demote(a: argparse.Namespace) -> int:
    return _set_role(a, "worker")


# ---- the parser ---------------------------------------------------------------------

class Formatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own: explicit line breaks (and the
    indentation of examples) survive, long lines still fit the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        lines = []
        for line in text.splitlines():
            margin = indent + line[:len(line) - len(line.lstrip())]
            lines.append(textwrap.fill(line.lstrip(), width, initial_indent=margin,
                                       subsequent_indent=margin + "    " * line[:1].isspace()))
        return "\n".join(lines)


def _listing(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one object per line")


def _task_listing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-trunc", action="store_true", help="full ids and errors")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="desired-state=running|shutdown|accepted, node=NODE, name=TASK, id=ID")
    _listing(p)


def _deploy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prune", action="store_true",
                   help="remove the stack's services that are no longer in the file")
    p.add_argument("-d", "--detach", action="store_true",
                   help="return once the manager has the stack; do not wait for it to converge")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the services to converge (default 120)")


def _wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true",
                   help="return at once; do not wait for the tasks to converge")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for convergence (default 120)")


def _register_deploy(sub: Any) -> None:
    p = sub.add_parser(
        "deploy", help="deploy a stack file on the cluster", formatter_class=Formatter,
        description="Create or update the services of a Compose-format stack file on the cluster, "
        "then follow them until every one runs as many tasks as it wants (or fails, or "
        "--timeout passes). Exit status 0: converged; 1: invalid file, failing or timed out.\n"
        "The stack is named after the file's folder unless --name is given (or, after -c, a "
        "last argument that is not a file: docker stack deploy's order); its services are "
        "named STACK_SERVICE.",
        epilog="examples:\n  pyswarm deploy examples/hello/stack.yml\n"
        "  pyswarm deploy -c examples/hello/stack.yml hello\n"
        "  pyswarm deploy -c base.yml -c prod.yml --name shop --prune --detach")
    p.add_argument("-c", "--compose-file", action="append", default=[], metavar="FILE",
                   help="a stack file; repeat to merge several, later ones override")
    p.add_argument("stack_file", nargs="?", metavar="STACK_FILE",
                   help=f"the stack file (default: the first of {', '.join(DEFAULT_STACK_FILES)})")
    p.add_argument("--name", default="", help="the stack's name (default: the file's folder)")
    _deploy_flags(p)
    p.set_defaults(func=cmd_deploy)


def _register_stack(sub: Any) -> None:
    stack = sub.add_parser("stack", help="manage stacks (deploy, ls, ps, services, rm, config)",
                           description="Manage stacks: groups of services deployed from one "
                           "Compose-format file.", formatter_class=Formatter,
                           epilog="example: pyswarm stack deploy -c stack.yml hello")
    ssub = stack.add_subparsers(dest="stack_command", metavar="COMMAND", required=True,
                                parser_class=type(stack))

    p = ssub.add_parser("deploy", help="deploy a new stack or update one",
                        formatter_class=Formatter,
                        description="docker's form of 'pyswarm deploy': create or update the "
                        "stack NAME from its files, then follow it until it converges.",
                        epilog="example: pyswarm stack deploy -c stack.yml --prune hello")
    p.add_argument("-c", "--compose-file", action="append", default=[], metavar="FILE",
                   required=True, help="a stack file (repeatable; later ones override)")
    _deploy_flags(p)
    p.add_argument("stack", metavar="NAME")
    p.set_defaults(func=cmd_stack_deploy)

    p = ssub.add_parser("ls", help="list stacks", epilog="example: pyswarm stack ls --format json")
    _listing(p, quiet=False)
    p.set_defaults(func=cmd_stack_ls)

    p = ssub.add_parser("services", help="list a stack's services",
                        epilog="example: pyswarm stack services hello")
    _listing(p)
    p.add_argument("stack", metavar="NAME")
    p.set_defaults(func=cmd_stack_services)

    p = ssub.add_parser("ps", help="list a stack's tasks",
                        epilog="example: pyswarm stack ps hello -f desired-state=running")
    _task_listing(p)
    p.add_argument("stack", metavar="NAME")
    p.set_defaults(func=cmd_stack_ps)

    p = ssub.add_parser("rm", help="remove stacks (their services)",
                        epilog="example: pyswarm stack rm hello")
    p.add_argument("stacks", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_stack_rm)

    p = ssub.add_parser("config", help="print the stack as it would be deployed",
                        description="Merge the stack files, interpolate variables and print the "
                        "result (no daemon needed); errors name file, line and key.",
                        epilog="example: pyswarm stack config -c stack.yml -c override.yml")
    p.add_argument("-c", "--compose-file", action="append", default=[], metavar="FILE",
                   help="a stack file (repeatable; default: the one found here)")
    p.add_argument("--name", default="", help="the stack's name (default: the file's folder)")
    p.set_defaults(func=cmd_stack_config)


def _register_service(sub: Any) -> None:
    service = sub.add_parser("service", help="manage services (ls, ps, logs, scale, update...)",
                             description="Manage the cluster's services.",
                             formatter_class=Formatter,
                             epilog="example: pyswarm service scale hello_web=5")
    ssub = service.add_subparsers(dest="service_command", metavar="COMMAND", required=True,
                                  parser_class=type(service))

    p = ssub.add_parser("ls", help="list services",
                        epilog="example: pyswarm service ls --format json")
    _listing(p)
    p.set_defaults(func=cmd_service_ls)

    p = ssub.add_parser("ps", help="list services' tasks", formatter_class=Formatter,
                        description="List the tasks of services: where each runs, what it "
                        "should be doing and what it is doing. Older tasks of a slot are drawn "
                        "as ' \\_ NAME'.",
                        epilog="example: pyswarm service ps hello_web -f desired-state=running")
    _task_listing(p)
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=cmd_service_ps)

    p = ssub.add_parser("inspect", help="show services' details as JSON",
                        epilog="example: pyswarm service inspect hello_web")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=cmd_service_inspect)

    p = ssub.add_parser("logs", help="show the output of a service's tasks",
                        description="Show what the service's tasks printed, each line "
                        "prefixed with TASK@NODE.",
                        epilog="example: pyswarm service logs -f --tail 20 hello_web")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    p.add_argument("-n", "--tail", type=int, default=-1, metavar="N",
                   help="only the last N lines of each task")
    p.add_argument("service", metavar="SERVICE", help="a service, or one task's id")
    p.set_defaults(func=cmd_service_logs)

    p = ssub.add_parser("scale", help="set services' replica counts",
                        description="Set the number of replicas of replicated services, then "
                        "follow them until they converge (unless --detach).",
                        epilog="example: pyswarm service scale hello_web=5 hello_api=2")
    p.add_argument("scales", nargs="+", metavar="SERVICE=REPLICAS")
    _wait_flags(p)
    p.set_defaults(func=cmd_service_scale)

    p = ssub.add_parser("update", help="change a service", formatter_class=Formatter,
                        description="Change a service's spec; the manager replaces its tasks "
                        "following the service's update policy. --force replaces them even when "
                        "nothing changed.",
                        epilog="examples:\n  pyswarm service update --image web:2 hello_web\n"
                        "  pyswarm service update --env-add LOG=debug --constraint-add "
                        "'node.role == worker' hello_web")
    p.add_argument("--image", default="", help="the image to run")
    p.add_argument("--replicas", type=int, default=None, metavar="N", help="replicas wanted")
    p.add_argument("--env-add", action="append", default=[], metavar="K=V",
                   help="set an environment variable")
    p.add_argument("--env-rm", action="append", default=[], metavar="K",
                   help="remove an environment variable")
    p.add_argument("--constraint-add", action="append", default=[], metavar="EXPR",
                   help="add a placement constraint, e.g. 'node.labels.zone == a'")
    p.add_argument("--constraint-rm", action="append", default=[], metavar="EXPR",
                   help="remove a placement constraint")
    p.add_argument("--label-add", action="append", default=[], metavar="K=V",
                   help="add a service label")
    p.add_argument("--label-rm", action="append", default=[], metavar="K",
                   help="remove a service label")
    p.add_argument("--force", action="store_true", help="replace the tasks even if unchanged")
    _wait_flags(p)
    p.add_argument("service", metavar="SERVICE")
    p.set_defaults(func=cmd_service_update)

    p = ssub.add_parser("rm", help="remove services",
                        epilog="example: pyswarm service rm hello_web")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=cmd_service_rm)


def _register_node(sub: Any) -> None:
    node = sub.add_parser("node", help="manage the cluster's nodes (ls, inspect, update, rm, "
                          "promote, demote)",
                          description="Manage the cluster's nodes.", formatter_class=Formatter,
                          epilog="example: pyswarm node update --availability drain node2")
    nsub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True,
                               parser_class=type(node))

    p = nsub.add_parser("ls", help="list nodes", description="List the cluster's nodes; '*' "
                        "marks this one.", epilog="example: pyswarm node ls --format json")
    _listing(p)
    p.set_defaults(func=cmd_node_ls)

    p = nsub.add_parser("inspect", help="show nodes' details as JSON",
                        epilog="example: pyswarm node inspect node1")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.set_defaults(func=cmd_node_inspect)

    p = nsub.add_parser("update", help="change a node's availability, labels or role",
                        formatter_class=Formatter,
                        description="active: takes new tasks; pause: keeps its tasks, takes no "
                        "new ones; drain: its tasks move to other nodes.",
                        epilog="examples:\n  pyswarm node update --availability drain node2\n"
                        "  pyswarm node update --label-add zone=a node1")
    p.add_argument("--availability", choices=["active", "pause", "drain"], default="")
    p.add_argument("--role", choices=["worker", "manager"], default="")
    p.add_argument("--label-add", action="append", default=[], metavar="K=V",
                   help="add or change a label (node.labels.K in constraints)")
    p.add_argument("--label-rm", action="append", default=[], metavar="K", help="remove a label")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=cmd_node_update)

    p = nsub.add_parser("rm", help="remove nodes from the cluster", formatter_class=Formatter,
                        description="Remove nodes from the swarm: their certificates are refused "
                        "from then on and their tasks are replaced on other nodes. A node that "
                        "is not down needs --force; a manager must be demoted first.",
                        epilog="example: pyswarm node rm --force node3")
    p.add_argument("-f", "--force", action="store_true", help="even if it is not down")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.set_defaults(func=cmd_node_rm)

    p = nsub.add_parser("promote", help="make nodes managers", formatter_class=Formatter,
                        description="Promote nodes to managers. Needs a store that several "
                        "managers can share (pyswarm init --store etcd://...).",
                        epilog="example: pyswarm node promote node2")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.set_defaults(func=cmd_node_promote)

    p = nsub.add_parser("demote", help="make managers workers",
                        description="Demote managers to workers; the last manager cannot be "
                        "demoted.", epilog="example: pyswarm node demote node2")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.set_defaults(func=cmd_node_demote)


def register(sub: Any) -> None:
    p = sub.add_parser("join", help="join this node to a swarm as a worker or manager",
                       formatter_class=Formatter,
                       description="Join this node's daemon to the swarm of a manager, with a "
                       "token printed by 'pyswarm join-token' on that manager (docker swarm "
                       "join). The daemon checks the manager's root CA against the token, gets "
                       "a certificate for this node and keeps a mutual-TLS session with the "
                       "manager from then on, across restarts.",
                       epilog="example:\n  pyswarm join --token PSWMTKN-1-... 192.168.1.10:2377")
    p.add_argument("--token", required=True, help="the worker or manager join token")
    p.add_argument("--advertise-addr", default="", metavar="IP",
                   help="the address other nodes reach this node at (default: this node's "
                   "address on its connection to the manager)")
    p.add_argument("--listen-addr", default="", metavar="IP:PORT",
                   help="managers only: where to serve other nodes (default 0.0.0.0:2377)")
    p.add_argument("manager", metavar="MANAGER[:PORT]",
                   help="the manager's address; the port defaults to 2377")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("join-token", help="print (or rotate) the swarm's join tokens",
                       formatter_class=Formatter,
                       description="Print the command that joins a node as a worker or manager. "
                       "--rotate replaces the token first: the old one no longer admits "
                       "anyone (nodes already joined are not affected).",
                       epilog="examples:\n  pyswarm join-token worker\n"
                       "  pyswarm join-token -q manager\n  pyswarm join-token --rotate worker")
    p.add_argument("-q", "--quiet", action="store_true", help="only the token")
    p.add_argument("--rotate", action="store_true", help="replace the token first")
    p.add_argument("role", choices=["worker", "manager"])
    p.set_defaults(func=cmd_join_token)

    p = sub.add_parser("init", help="make this node the first manager of a new cluster",
                       formatter_class=Formatter,
                       description="Turn this node's daemon into the manager of a new cluster "
                       "(docker swarm init): it creates the cluster's root CA and join tokens "
                       "and serves other nodes on its TLS port. It keeps running tasks too, "
                       "unless drained.",
                       epilog="examples:\n  pyswarm init\n"
                       "  pyswarm init --advertise-addr 10.0.0.2 --listen-addr 10.0.0.2:2377\n"
                       "  pyswarm init --store etcd://10.0.0.5:2379 --advertise-addr 10.0.0.2")
    p.add_argument("--store", default="", metavar="URL",
                   help='where the cluster state lives: "sqlite" (default, embedded) or '
                   "etcd://HOST:PORT[,HOST:PORT]")
    p.add_argument("--advertise-addr", default="", metavar="IP",
                   help="the address other nodes reach this manager at (default: the address "
                   "of the interface holding the default route)")
    p.add_argument("--listen-addr", default="", metavar="IP[:PORT]",
                   help="where the manager serves other nodes (default 0.0.0.0:2377)")
    p.set_defaults(func=cmd_init)
    _register_deploy(sub)
    _register_stack(sub)
    _register_service(sub)
    _register_node(sub)

