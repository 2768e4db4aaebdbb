"""`pyswarm`: the command line.

Commands render and delegate; the daemon does the work. Heavy modules (gRPC, protobuf) are
imported only by the commands that talk to the daemon, so `--help` and argument errors are
instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from pyswarm.cli.client import CLIError

EXIT_USAGE = 125  # docker exits 125 for a bad flag too


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: {message}\nSee '{self.prog} --help'.\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from pyswarm.cli import cluster, containers, images, lab

    parser = Parser(
        prog="pyswarm",
        description="pyswarm: containers on this node (run, ps, logs, exec, images, "
        "volumes), driven through the local pyswarm daemon.",
        epilog="Start the daemon first: sudo pyswarm daemon -d\n"
        "Then e.g.: pyswarm run --rm busybox echo hello\n"
        "Run 'pyswarm COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    daemon = sub.add_parser("daemon", help="run the node daemon (needs root)", add_help=False)
    daemon.add_argument("args", nargs=argparse.REMAINDER)
    containers.register(sub)
    images.register(sub)
    cluster.register(sub)
    lab.register(sub)
    version = sub.add_parser("version", help="show the CLI's and the daemon's versions")
    version.add_argument("--format", choices=["table", "json"], default="table")
    version.set_defaults(func=cmd_version)
    return parser


def cmd_version(a: argparse.Namespace) -> int:
    import json

    from pyswarm.cli.client import connect, explain
    from pyswarm.proto import engine_pb2

    try:
        v = connect().Version(engine_pb2.VersionRequest())
    except CLIError:
        raise
    except Exception as exc:
        raise explain(exc) from None
    info = {"client": "0.1.0", "server": v.version, "api_version": v.api_version,
            "cgroup_driver": v.cgroup_driver, "root": v.root}
    if a.format == "json":
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key + ':':15}{value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["daemon"]:
        from pyswarm.worker.daemon import main as daemon_main

        return daemon_main(argv[1:])
    args: Any = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(exc if str(exc).startswith(("pyswarm", "Error", "Cannot")) else f"pyswarm: {exc}",
              file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
