"""Container commands: run, ps, logs, exec, stop, kill, rm, inspect, commit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from pyswarm.cli import render
from pyswarm.cli.client import CLIError, connect, explain

# Docker's conventions for a command that could not be started.
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


def _pb() -> Any:
    from pyswarm.proto import engine_pb2

    return engine_pb2


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background, print the id")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", default="", help="a name for the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (repeatable)")
    p.add_argument("-w", "--workdir", default="", metavar="DIR", help="working directory inside")
    p.add_argument("-u", "--user", default="", metavar="USER[:GROUP]",
                   help="user name or uid (and group) to run as")
    p.add_argument("-h", "--hostname", default="", help="the container's hostname")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/udp]",
                   help="publish a container port on the node, e.g. -p 8080:80")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind a host path (absolute SRC) or a named volume; -v DST alone "
                   "makes an anonymous volume")
    p.add_argument("--tmpfs", action="append", default=[], metavar="DST[:size=64m]",
                   help="mount a tmpfs")
    p.add_argument("-m", "--memory", default="", help="memory limit, e.g. 64m; OOM kills exit 137")
    p.add_argument("--cpus", default="", help="CPU quota in CPUs, e.g. 0.5")
    p.add_argument("--cpu-shares", type=int, default=0, help="relative CPU weight (1024 = normal)")
    p.add_argument("--pids-limit", type=int, default=0, metavar="N", help="max processes")
    p.add_argument("--network", default="bridge", choices=["bridge", "none", "host"],
                   help="bridge (default: own address on the node bridge), none, or host")
    p.add_argument("--entrypoint", default=None, help="override the image's entrypoint")
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V", help="a label")
    p.add_argument("--log-opt", action="append", default=[], metavar="max-size=10m|max-file=3",
                   help="json-file log rotation")
    p.add_argument("--stop-signal", default="", help="signal `stop` sends first (default SIGTERM)")
    p.add_argument("--help", action="help", help="show this help")
    p.add_argument("image", help="image to run, e.g. busybox")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")


def _create_request(a: argparse.Namespace) -> Any:
    from pyswarm.common.errors import InvalidArgument
    from pyswarm.common.units import parse_cpus, parse_size

    pb = _pb()
    try:
        memory = parse_size(a.memory, what="memory") if a.memory else 0
        cpus = parse_cpus(a.cpus) if a.cpus else 0.0
        log_size, log_files = 0, 0
        for opt in a.log_opt:
            key, _, value = opt.partition("=")
            if key == "max-size":
                log_size = parse_size(value, what="log max-size")
            elif key == "max-file" and value.isdigit() and int(value) > 0:
                log_files = int(value)
            else:
                raise InvalidArgument(f'invalid --log-opt "{opt}": use max-size=SIZE or max-file=N')
        labels = {}
        for item in a.label:
            key, _, value = item.partition("=")
            labels[key] = value
    except InvalidArgument as exc:
        raise CLIError(f"pyswarm: {exc}.\nSee 'pyswarm run --help'.") from None
    env = [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in a.env]
    entrypoint = [] if a.entrypoint is None else ([a.entrypoint] if a.entrypoint else [])
    return pb.CreateContainerRequest(
        image=a.image, name=a.name, cmd=a.command, entrypoint=entrypoint,
        entrypoint_set=a.entrypoint is not None, env=env, workdir=a.workdir, user=a.user,
        hostname=a.hostname, publish=a.publish, volumes=a.volume, tmpfs=a.tmpfs,
        memory_bytes=memory, cpus=cpus, pids_limit=a.pids_limit, cpu_shares=a.cpu_shares,
        network=a.network, auto_remove=a.rm, labels=labels, log_max_size=log_size,
        log_max_files=log_files, stop_signal=a.stop_signal,
    )


def _start_failure(exc: Exception) -> CLIError:
    """docker's exit codes for a command that could not be started: 127 / 126."""
    err = explain(exc)
    text = str(err)
    if "not found" in text and ("$PATH" in text or "no such file" in text.lower()):
        err.code = EXIT_NOT_FOUND
    elif "permission denied" in text.lower() and "exec" in text:
        err.code = EXIT_CANNOT_INVOKE
    return err


def cmd_run(a: argparse.Namespace) -> int:
    stub = connect()
    request = _create_request(a)
    if a.detach:
        try:
            container = stub.CreateContainer(request)
        except Exception as exc:
            raise _start_failure(exc) from None
        print(container.id)
        return 0
    cid = ""
    interrupted = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        # Forward the signal to the container, as docker run's sig-proxy does; a second
        # Ctrl-C detaches the CLI and leaves the container running.
        if interrupted.is_set() or not cid:
            raise KeyboardInterrupt
        interrupted.set()
        threading.Thread(target=_kill_quietly, args=(stub, cid, signum), daemon=True).start()

    previous = signal.signal(signal.SIGINT, forward)
    try:
        for out in stub.RunContainer(request):
            kind = out.WhichOneof("output")
            if kind == "container":
                cid = out.container.id
            elif kind == "log":
                stream = sys.stdout if out.log.stream == "stdout" else sys.stderr
                stream.buffer.write(out.log.data)
                stream.flush()
            elif kind == "exit":
                if out.exit.oom_killed:
                    print("pyswarm: the container was killed: out of memory (OOM)",
                          file=sys.stderr)
                return out.exit.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if cid:
            raise explain(exc) from None
        raise _start_failure(exc) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    raise CLIError("the daemon ended the stream before the container exited")


def _kill_quietly(stub: Any, cid: str, signum: int) -> None:
    try:
        stub.KillContainer(_pb().KillContainerRequest(id=cid, signal=str(signum)))
    except Exception:
        pass


def _status(c: Any) -> str:
    if c.state == "running":
        return "Up " + render.since(c.started_at)
    if c.state == "exited":
        return f"Exited ({c.exit_code}) {render.ago(c.finished_at)}"
    return c.state.capitalize()


def _ports(c: Any) -> str:
    if c.state != "running":
        return ""  # an exited container publishes nothing
    return ", ".join(
        f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in c.ports
    )


def container_dict(c: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(c, preserving_proto_field_name=True,
                      always_print_fields_with_no_presence=True)
    d["status"] = _status(c)
    return d


def cmd_ps(a: argparse.Namespace) -> int:
    stub = connect()
    try:
        containers = stub.ListContainers(_pb().ListContainersRequest(all=a.all)).containers
    except Exception as exc:
        raise explain(exc) from None
    if a.quiet:
        for c in containers:
            print(c.id[:12])
        return 0
    if a.format == "json":
        render.json_lines(
            {"id": c.id, "name": c.name, "image": c.image, "command": " ".join(c.command),
             "created": c.created, "state": c.state, "status": _status(c),
             "ports": _ports(c), "exit_code": c.exit_code, "ip_address": c.ip_address}
            for c in containers
        )
        return 0
    render.table(
        ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        ([c.id[:12], c.image, render.shorten(json.dumps(" ".join(c.command)), 22),
          render.ago(c.created), _status(c), _ports(c), c.name] for c in containers),
    )
    return 0


def cmd_logs(a: argparse.Namespace) -> int:
    stub = connect()
    req = _pb().LogsRequest(id=a.container, follow=a.follow, tail=a.tail, stdout=True, stderr=True)
    try:
        for entry in stub.Logs(req):
            stream = sys.stdout if entry.stream == "stdout" else sys.stderr
            if a.timestamps:
                stream.write(entry.time + " ")
                stream.flush()
            stream.buffer.write(entry.data)
            stream.flush()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        raise explain(exc) from None
    return 0


def cmd_exec(a: argparse.Namespace) -> int:
    stub = connect()
    pb = _pb()
    start = pb.ExecStart(container=a.container, args=a.command, env=a.env, user=a.user,
                         workdir=a.workdir, stdin=a.interactive)

    def requests() -> Any:
        yield pb.ExecInput(start=start)
        if not a.interactive:
            return
        stdin = sys.stdin.buffer
        while True:
            chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            if not chunk:
                break
            yield pb.ExecInput(stdin=chunk)
        yield pb.ExecInput(close_stdin=True)

    try:
        for out in stub.Exec(requests()):
            kind = out.WhichOneof("output")
            if kind == "stdout":
                sys.stdout.buffer.write(out.stdout)
                sys.stdout.flush()
            elif kind == "stderr":
                sys.stderr.buffer.write(out.stderr)
                sys.stderr.flush()
            elif kind == "exit_code":
                return out.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        raise _start_failure(exc) from None
    raise CLIError("the daemon ended the exec stream without an exit code")


def _each(a: argparse.Namespace, call: Any) -> int:
    """Apply ``call(stub, ref)`` to each named container; report failures, docker-style."""
    stub = connect()
    failed = False
    for ref in a.containers:
        try:
            call(stub, ref)
            print(ref)
        except Exception as exc:
            print(explain(exc), file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_stop(a: argparse.Namespace) -> int:
    pb = _pb()
    return _each(a, lambda s, ref: s.StopContainer(
        pb.StopContainerRequest(id=ref, timeout_seconds=a.time)))


def cmd_kill(a: argparse.Namespace) -> int:
    pb = _pb()
    return _each(a, lambda s, ref: s.KillContainer(
        pb.KillContainerRequest(id=ref, signal=a.signal)))


def cmd_rm(a: argparse.Namespace) -> int:
    pb = _pb()
    return _each(a, lambda s, ref: s.RemoveContainer(
        pb.RemoveContainerRequest(id=ref, force=a.force, volumes=a.volumes)))


def cmd_inspect(a: argparse.Namespace) -> int:
    stub = connect()
    found, failed = [], False
    for ref in a.containers:
        try:
            found.append(container_dict(stub.InspectContainer(_pb().ContainerRef(id=ref))))
        except Exception as exc:
            print(explain(exc), file=sys.stderr)
            failed = True
    print(json.dumps(found, indent=4, sort_keys=True))
    return 1 if failed else 0


def cmd_commit(a: argparse.Namespace) -> int:
    stub = connect()
    try:
        image = stub.Commit(_pb().CommitRequest(container=a.container, ref=a.ref or "",
                                                comment=a.message, author=a.author,
                                                changes=a.change))
    except Exception as exc:
        raise explain(exc) from None
    print(image.id)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", add_help=False, help="create and start a container",
                       description="Create a container from IMAGE and start COMMAND in it. "
                       "Without -d the output is shown and the exit code is the container's; "
                       "125 means the engine failed, 126/127 that the command could not be "
                       "run or found, 137 that it was killed (or out of memory).",
                       epilog="example: pyswarm run --rm -p 8080:80 busybox httpd -f -p 80")
    add_run_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="list containers",
                       description="List running containers (all of them with -a).")
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one object per line")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("logs", help="show a container's output",
                       description="Show what the container printed (kept as json-file logs).")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until it exits")
    p.add_argument("-n", "--tail", type=int, default=-1, metavar="N", help="only the last N lines")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("container")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("exec", help="run a command in a running container",
                       description="Run COMMAND inside a running container: its namespaces, "
                       "cgroup and limits. The exit code is the command's.")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("stop", help="stop containers (stop signal, then SIGKILL)")
    p.add_argument("-t", "--time", type=int, default=-1, metavar="S",
                   help="seconds to wait before SIGKILL (default 10)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="send a signal to containers (SIGKILL by default)")
    p.add_argument("-s", "--signal", default="", help="signal name or number")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
    p.add_argument("-v", "--volumes", action="store_true", help="also its anonymous volumes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("inspect", help="show containers' details as JSON")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("commit", help="make an image of a container's changes")
    p.add_argument("-m", "--message", default="", help="commit message")
    p.add_argument("-a", "--author", default="")
    p.add_argument("-c", "--change", action="append", default=[],
                   help='a Dockerfile instruction to apply, e.g. -c \'CMD ["sh"]\'')
    p.add_argument("container")
    p.add_argument("ref", nargs="?", help="NAME[:TAG] for the new image")
    p.set_defaults(func=cmd_commit)
