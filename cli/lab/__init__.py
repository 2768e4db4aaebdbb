"""`pyswarm lab`: a cluster of several nodes on this one machine, and faults to inject.

Each node is a network namespace on a lab bridge with its own address, state folder, run
folder and cgroup parent, running a real `pyswarm daemon`; node1 is the manager and the
others join it as a user's machines would. With ``--store etcd`` every manager node (1..M)
also runs an etcd member, and the managers keep the cluster state in that etcd cluster.
`kill`, `stop`, `start`, `partition` and `heal` do to one node what a crash, a shutdown, a
boot and a pulled cable do to a machine; `kill`, `stop` and `start` also take one etcd
member alone (``etcdK``, the member on nodeK).

Modules: layout (names, pure), state (lab.json), links (ip), procs (processes, cgroups,
mounts), nodes (a node as a machine), etcd (the members), images, cluster (init/join),
build (up/down), ops.
This is a client-side tool: it needs root, but no daemon of the host's own.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from pyswarm.cli.client import CLIError

from . import layout

EPILOG = """examples:
  sudo pyswarm lab up --nodes 3
  sudo pyswarm lab ls
  sudo pyswarm lab exec node1 -- pyswarm node ls
  eval "$(sudo pyswarm lab env)"; sudo -E pyswarm deploy -c stack.yml web
  sudo pyswarm lab kill node3; sudo pyswarm lab start node3
  sudo pyswarm lab partition node2; sudo pyswarm lab heal node2
  sudo pyswarm lab down

three managers sharing their state in etcd (a member on each of node1..node3):
  sudo pyswarm lab up --nodes 5 --managers 3 --store etcd
  sudo pyswarm lab exec node1 -- etcdctl endpoint health --cluster
  sudo pyswarm lab kill etcd2; sudo pyswarm lab start etcd2   # one member alone
  sudo pyswarm lab kill node2   # the machine: its daemon and its etcd member"""


def _say(line: str) -> None:
    print(line, flush=True)


def _root() -> None:
    if os.geteuid() != 0:
        raise CLIError("pyswarm lab: needs root (network namespaces, bridges, cgroups)")


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a lab command as root, turning its errors into CLIError messages."""
    from .build import UpError
    from .cluster import JoinError
    from .images import ImageError
    from .links import LinkError
    from .nodes import DaemonError

    def run(a: argparse.Namespace) -> int:
        _root()
        try:
            return fn(a)
        except layout.LayoutError as exc:
            raise CLIError(f"pyswarm lab: {exc}") from None
        except (LookupError, ValueError, UpError, JoinError, ImageError, LinkError,
                DaemonError, RuntimeError, OSError) as exc:
            message = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
            raise CLIError(f"pyswarm lab: {message}", code=1) from None
    return run


def _lab(a: argparse.Namespace) -> Any:
    from . import state

    layout.check_name(a.name)
    lab = state.load(a.name)
    if lab is None:
        with state.locked(a.name):  # raises the "no lab named" error with a hint
            pass
        raise LookupError(f'lab "{a.name}" has no record (lab.json): '
                          f"`pyswarm lab down --name {a.name}` clears what is left of it")
    return lab


def _locked(fn: Callable[[Any, Any, argparse.Namespace], None]
            ) -> Callable[[argparse.Namespace], int]:
    """A command on one node (or one etcd member) of a lab, under the lab's lock."""
    def run(a: argparse.Namespace) -> int:
        from . import state

        layout.check_name(a.name)
        with state.locked(a.name):
            lab = _lab(a)
            fn(lab, lab.target(a.node), a)
        return 0
    return _guard(run)


# ---- commands ------------------------------------------------------------------------


def cmd_up(a: argparse.Namespace) -> int:
    from . import build

    req = build.check_request(a.name, a.nodes, a.managers, a.subnet, a.image, a.no_images,
                              a.standalone, a.store)
    build.up(req, _say)
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    from . import build

    build.down(a.name, _say)
    return 0


def cmd_ls(a: argparse.Namespace) -> int:
    from pyswarm.cli import render

    from . import ops

    lab = _lab(a)
    views = ops.listing(lab)
    if a.format == "json":
        render.json_lines(v.as_dict() for v in views)
    else:
        render.table(["NODE", "ADDRESS", "ROLE", "DAEMON PID", "STATE"],
                     ([v.name, v.address, v.role, v.pid or "-", v.state] for v in views))
    return 0


def cmd_exec(a: argparse.Namespace) -> int:
    from . import nodes

    argv = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not argv:
        raise CLIError("pyswarm lab exec: give a command after the node, e.g. "
                       "pyswarm lab exec node1 -- pyswarm node ls")
    lab = _lab(a)
    n = lab.target(a.node).node.layout(lab.name)  # etcdK: inside the member's node
    if not n.netns_path.exists():
        raise CLIError(f"pyswarm lab: {n.name} has no network namespace ({n.netns})", code=1)
    sys.stdout.flush()
    nodes.exec_inside(n, argv)
    return 0  # not reached: exec replaced this process


def cmd_env(a: argparse.Namespace) -> int:
    from . import ops

    lab = _lab(a)
    node = lab.node(a.node) if a.node else lab.manager()
    for line in ops.env_lines(node.layout(lab.name)):
        print(line)
    return 0


def _kill(lab: Any, target: Any, a: argparse.Namespace) -> None:
    from . import ops

    ops.kill(lab, target, _say)


def _stop(lab: Any, target: Any, a: argparse.Namespace) -> None:
    from . import ops

    if a.time < 0:
        raise layout.LayoutError(f"invalid --time {a.time}: seconds, 0 or more")
    ops.stop(lab, target, a.time, _say)


def _start(lab: Any, target: Any, a: argparse.Namespace) -> None:
    from . import ops

    ops.start(lab, target, _say)


def _partition(lab: Any, target: Any, a: argparse.Namespace) -> None:
    from . import ops

    ops.partition(lab, target, True, _say)


def _heal(lab: Any, target: Any, a: argparse.Namespace) -> None:
    from . import ops

    ops.partition(lab, target, False, _say)


# ---- arguments -----------------------------------------------------------------------


def _name(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("PYSWARM_LAB", layout.DEFAULT_NAME)
    p.add_argument("--name", default=default,
                   help=f"the lab (default: $PYSWARM_LAB or {layout.DEFAULT_NAME!r})")


def _node_command(lsub: Any, name: str, help: str, fn: Callable[..., None],
                  description: str, members: bool = False) -> argparse.ArgumentParser:
    p = lsub.add_parser(name, help=help, description=description)
    _name(p)
    p.add_argument("node", metavar="NODE", help="node1, node2, ..." + (
        "; or etcd1, etcd2, ...: only the etcd member on that manager node (--store etcd)"
        if members else ""))
    p.set_defaults(func=_locked(fn))
    return p


def register(sub: Any) -> None:
    lab = sub.add_parser(
        "lab", help="a multi-node cluster on this machine (up, ls, exec, kill, down...)",
        description="A cluster of N nodes on this machine: each node a network namespace on "
        "a lab bridge, with its own address and state folder, running a real pyswarm daemon. "
        "Needs root.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    p = lsub.add_parser("up", help="build a lab and form its cluster",
                        description="Build the lab: bridge, a namespace and daemon per node, "
                        "images loaded from the host's store, node1 the manager and the others "
                        "joined. With --store etcd, an etcd member also runs on each manager "
                        "node (healthy before pyswarm init), nodes 2..M join with the manager "
                        "token. A failure part-way removes what was made.",
                        epilog="examples:\n  pyswarm lab up --nodes 3\n"
                        "  pyswarm lab up --nodes 5 --managers 3 --store etcd",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _name(p)
    p.add_argument("--nodes", type=int, required=True, metavar="N", help="how many nodes")
    p.add_argument("--managers", type=int, default=1, metavar="M",
                   help="how many of them are managers, node1..nodeM (default 1; more needs "
                   "--store etcd, and then an odd count: 1, 3, 5 or 7)")
    p.add_argument("--store", default="sqlite", metavar="STORE",
                   help="where the managers keep the cluster state: sqlite (default, on "
                   "node1) or etcd (an etcd member on each manager node, etcd1..etcdM; "
                   "node1 runs pyswarm init --store etcd://...)")
    p.add_argument("--subnet", default=layout.DEFAULT_SUBNET, metavar="CIDR",
                   help=f"the lab network (default {layout.DEFAULT_SUBNET}); the host is .254")
    p.add_argument("--image", action="append", default=None, metavar="REF",
                   help="an image of the host's store to load into every node (repeatable; "
                   "default busybox:latest)")
    p.add_argument("--no-images", action="store_true", help="load no image into the nodes")
    p.add_argument("--standalone", action="append", type=int, default=[], metavar="K",
                   help="leave node K out of the cluster: its daemon runs, unjoined "
                   "(repeatable), for joining it by hand")
    p.set_defaults(func=_guard(cmd_up))

    p = lsub.add_parser("down", help="remove a lab and everything of it",
                        description="Kill every process of the lab (etcd members too) and "
                        "remove its namespaces, links, bridge, cgroups and folders (etcd data "
                        "too).")
    _name(p)
    p.set_defaults(func=_guard(cmd_down))

    p = lsub.add_parser("ls", help="list the lab's nodes (and etcd members)",
                        description="The nodes, then (--store etcd) the etcd members, role "
                        "etcd: pid and state (running, partitioned, killed, stopped, exited).")
    _name(p)
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one object per line")
    p.set_defaults(func=_guard(cmd_ls))

    p = lsub.add_parser("exec", help="run a command inside a node",
                        description="Run CMD in the node's network namespace with its PYSWARM_* "
                        "environment; the exit code is CMD's.",
                        epilog="example: pyswarm lab exec node1 -- pyswarm node ls")
    _name(p)
    p.add_argument("node", metavar="NODE")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_guard(cmd_exec))

    p = lsub.add_parser("env", help="print the shell exports that target a node's daemon",
                        epilog='example: eval "$(pyswarm lab env)"; pyswarm node ls')
    _name(p)
    p.add_argument("node", nargs="?", metavar="NODE", help="default: the manager")
    p.set_defaults(func=_guard(cmd_env))

    _node_command(lsub, "kill", "crash a node (or one etcd member): SIGKILL its processes",
                  _kill, "What a crashed machine does: the node's daemon, zygote, shims, "
                  "containers and etcd member are SIGKILLed at once. etcdK: only the etcd "
                  "member on nodeK.", members=True)
    p = _node_command(lsub, "stop", "shut a node (or one etcd member) down cleanly", _stop,
                      "SIGTERM the node's daemon, then its etcd member, then its containers "
                      "(each SIGKILLed after --time). etcdK: only the etcd member on nodeK.",
                      members=True)
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                   help="grace before SIGKILL (default 10)")
    _node_command(lsub, "start", "start a killed or stopped node (or etcd member) again",
                  _start, "Start the node as a machine boots: its etcd member (if it is a "
                  "manager of a --store etcd lab), then its daemon, which re-joins the "
                  "cluster from its own state. etcdK: only the etcd member on nodeK, from its "
                  "data (--initial-cluster-state existing), waiting until it is healthy.",
                  members=True)
    _node_command(lsub, "partition", "cut a node's network (it keeps running)", _partition,
                  "Take the node's link to the lab bridge down: its daemon, containers and "
                  "etcd member keep running but reach no other node.")
    _node_command(lsub, "heal", "restore a partitioned node's network", _heal,
                  "Bring the node's link to the lab bridge back up.")

