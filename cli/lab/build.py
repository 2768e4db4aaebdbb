"""`lab up` and `lab down`: building a lab step by step, and removing every trace of one.

Up is all or nothing: the record is written first, each step adds to what it names, and a
failure (or Ctrl-C) part-way runs `down` on what was made. Down works from the names alone
(layout.py), so it also clears a lab whose record or up command was lost half-way.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pyswarm.common.paths import DEFAULT_SUBNET as ENGINE_SUBNET

from . import cluster, etcd, images, layout, links, nodes, procs, state
from .layout import NodeLayout

OVERLAY_POOL = "10.214.0.0/16"  # the manager's overlay networks, inside every node


class UpError(RuntimeError):
    pass


@dataclass(frozen=True)
class UpRequest:
    name: str
    nodes: int
    managers: int
    subnet: ipaddress.IPv4Network
    images: tuple[str, ...]
    standalone: frozenset[int]  # nodes left out of the cluster
    store: str = state.SQLITE  # etcd: a member on every manager, init --store etcd://...


STORES = (state.SQLITE, state.ETCD)
# etcd's own advice: at most 7 members; each one more makes every write wait on more of them.
MAX_ETCD_MEMBERS = 7


def check_request(name: str, count: int, managers: int, subnet: str,
                  image_refs: list[str] | None, no_images: bool,
                  standalone: list[int], store: str = state.SQLITE) -> UpRequest:
    """Validate `lab up`'s flags, naming the field that is wrong."""
    layout.check_name(name)
    if not 1 <= count <= layout.MAX_NODES:
        raise layout.LayoutError(f"invalid --nodes {count}: a lab has 1 to "
                                 f"{layout.MAX_NODES} nodes")
    if store not in STORES:
        raise layout.LayoutError(f'invalid --store "{store}": sqlite (the default: the state '
                                 f"in one file on node1, one manager) or etcd (an etcd member "
                                 f"on every manager node)")
    if managers < 1 or managers > count:
        raise layout.LayoutError(f"invalid --managers {managers}: between 1 and --nodes "
                                 f"({count})")
    if managers > 1 and store != state.ETCD:
        raise layout.LayoutError(
            f"invalid --managers {managers}: more than one manager needs --store etcd (the "
            f"managers share the cluster state in etcd; sqlite serves one manager)")
    if store == state.ETCD and (managers % 2 == 0 or managers > MAX_ETCD_MEMBERS):
        raise layout.LayoutError(
            f"invalid --managers {managers} with --store etcd: 1, 3, 5 or 7 (an etcd member "
            f"runs on each manager and etcd needs a majority of them: an even count survives "
            f"no more failures than one fewer, and more than {MAX_ETCD_MEMBERS} only slow "
            f"every write)")
    for k in standalone:
        if not 1 <= k <= count:
            raise layout.LayoutError(f"invalid --standalone {k}: nodes are 1 to {count}")
        if k <= managers:
            raise layout.LayoutError(f"invalid --standalone {k}: node{k} is a manager")
    net = layout.parse_subnet(subnet, count)
    for engine_net in (ENGINE_SUBNET, OVERLAY_POOL):
        if net.overlaps(ipaddress.ip_network(engine_net)):
            raise layout.LayoutError(f'invalid --subnet "{subnet}": overlaps {engine_net}, '
                                     f"which every node's own engine uses")
    refs = () if no_images else tuple(image_refs or images.DEFAULT_IMAGES)
    return UpRequest(name, count, managers, net, refs, frozenset(standalone), store)


def _check_free(req: UpRequest) -> None:
    """Nothing of this name or subnet may exist already, and the tools must be here: a
    clear error, and nothing made."""
    if req.store == state.ETCD:
        etcd.check_installed()
    bridge = layout.bridge_name(req.name)
    if links.link_exists(bridge):
        raise UpError(f"interface {bridge} already exists: a lab of this name (or one whose "
                      f"name shares its short form) is left over; "
                      f"remove it with `pyswarm lab down --name {req.name}`")
    for dev, net in links.host_networks():
        if net.overlaps(req.subnet) and net.prefixlen > 0:
            raise UpError(f'invalid --subnet "{req.subnet}": overlaps {net} on {dev}; '
                          f"choose another, e.g. 198.18.1.0/24")
    for node in layout.node_layouts(req.name, req.subnet, req.nodes):
        if links.netns_exists(node.netns) or links.link_exists(node.veth):
            raise UpError(f"{node.netns} already exists: remove the old lab with "
                          f"`pyswarm lab down --name {req.name}`")


def up(req: UpRequest, say: Callable[[str], None] = print) -> state.Lab:
    """Build the lab; on any failure remove what was made and raise."""
    with state.locked(req.name, create=True):
        old = state.load(req.name)
        if old is not None:
            return _already_up(old, req, say)
        try:
            _check_free(req)
        except BaseException:
            _remove_empty(req.name)
            raise
        host = layout.host_address(req.subnet)
        lab = state.Lab(req.name, str(req.subnet), layout.bridge_name(req.name), str(host),
                        list(req.images), store=req.store)
        for n in layout.node_layouts(req.name, req.subnet, req.nodes):
            role = ("manager" if n.index <= req.managers else
                    "standalone" if n.index in req.standalone else "worker")
            lab.nodes.append(state.Node(n.index, n.address, role, state=state.STOPPED))
        try:
            lab.save()
            _build(lab, req, say)
        except BaseException:
            say(f"lab {req.name}: failed; removing what was made")
            teardown(req.name, lab)
            raise
        return lab


def _already_up(old: state.Lab, req: UpRequest, say: Callable[[str], None]) -> state.Lab:
    """`lab up` again: nothing to do for a complete, running lab of the same shape."""
    running = (all(nodes.daemon_pid(n) for n in old.layouts())
               and all(etcd.member_pid(m.layout(old.name), m.etcd_pid) for m in old.members()))
    if old.complete and running and len(old.nodes) == req.nodes and old.store == req.store:
        say(f"lab {old.name} is already up ({len(old.nodes)} nodes); nothing to do")
        return old
    why = ("it was not completed" if not old.complete else
           f"it has {len(old.nodes)} nodes" if len(old.nodes) != req.nodes else
           f"its store is {old.store}" if old.store != req.store else
           "some of its nodes are not running (pyswarm lab ls)")
    raise UpError(f"lab {old.name} already exists and {why}: `pyswarm lab start NODE` the "
                  f"stopped ones, or `pyswarm lab down --name {old.name}` first")


def _build(lab: state.Lab, req: UpRequest, say: Callable[[str], None]) -> None:
    prefix = req.subnet.prefixlen
    links.add_bridge(lab.bridge, lab.host_address, prefix)
    lab.firewall_rule = links.allow_forwarding(lab.bridge)
    lab.save()
    say(f"bridge {lab.bridge}: {lab.host_address}/{prefix}")
    layouts = lab.layouts()
    for n in layouts:
        links.add_node(n, lab.bridge, prefix, lab.host_address)
        say(f"{n.name}: namespace {n.netns}, eth0 {n.address}/{prefix}")
    # The etcd members elect their leader while the daemons boot; init waits for them.
    _start_members(lab, say)
    archive: Path | None = None
    try:
        if req.images:
            fd, tmp = tempfile.mkstemp(prefix="images-", suffix=".tar",
                                       dir=layout.lab_dir(lab.name))
            archive = Path(tmp)
            images.export(list(req.images), archive)
            say(f"images: {', '.join(req.images)} from {images.HOST_IMAGES}")

        def boot(node: state.Node) -> None:
            n = node.layout(lab.name)
            n.root.mkdir(parents=True, exist_ok=True)
            if archive is not None:
                images.load(n, archive)
            node.pid = nodes.start_daemon(n)
            node.state = state.RUNNING
            say(f"{n.name}: daemon running (pid {node.pid})"
                + (", images loaded" if archive is not None else ""))

        with ThreadPoolExecutor(max_workers=min(4, len(lab.nodes))) as pool:
            for future in [pool.submit(boot, node) for node in lab.nodes]:
                future.result()
    finally:
        lab.save()
        if archive is not None:
            archive.unlink(missing_ok=True)
    if lab.members():
        members = [m.layout(lab.name) for m in lab.members()]
        etcd.wait_healthy(members, {m.name: node.etcd_pid
                                    for m, node in zip(members, lab.members(), strict=True)})
        say(f"etcd: {len(members)} member(s) healthy ({etcd.store_url(members)})")
    _form_cluster(lab, say)
    lab.complete = True
    lab.save()
    say(f"lab {lab.name} is up: {len(lab.nodes)} nodes on {lab.subnet}. "
        f"Try: pyswarm lab ls{_name_flag(lab.name)}; "
        f'eval "$(pyswarm lab env{_name_flag(lab.name)})"; pyswarm node ls')


def _name_flag(name: str) -> str:
    return "" if name == layout.DEFAULT_NAME else f" --name {name}"


def _start_members(lab: state.Lab, say: Callable[[str], None]) -> None:
    """One etcd member per manager node, all at once: a new cluster needs a majority of
    its members up to elect a leader."""
    members = [m.layout(lab.name) for m in lab.members()]
    for node, n in zip(lab.members(), members, strict=True):
        node.etcd_pid = etcd.start(n, members)
        node.etcd_state = state.RUNNING
        lab.save()
        say(f"{n.member}: etcd member on {n.name} (pid {node.etcd_pid}), "
            f"{etcd.client_url(n)}, log {n.etcd_log}")


def _form_cluster(lab: state.Lab, say: Callable[[str], None]) -> None:
    manager = lab.manager().layout(lab.name)
    store = etcd.store_url([m.layout(lab.name) for m in lab.members()]) if lab.members() \
        else ""
    cluster.init(manager, store)
    say(f"{manager.name}: manager (pyswarm init " + (f"--store {store} " if store else "")
        + f"--advertise-addr {manager.address} "
        f"--listen-addr {manager.address}:{cluster.MANAGER_PORT})")
    tokens: dict[str, str] = {}
    members = [manager.name]
    for node in lab.nodes:
        n = node.layout(lab.name)
        if n.name == manager.name:
            continue
        if node.role == "standalone":
            say(f"{n.name}: standalone (its daemon runs; not joined)")
            continue
        if node.role not in tokens:
            tokens[node.role] = cluster.join_token(manager, node.role)
        cluster.join(n, manager, tokens[node.role])
        members.append(n.name)
        say(f"{n.name}: joined as {node.role} (pyswarm join --token ... --advertise-addr "
            f"{n.address} {manager.address}:{cluster.MANAGER_PORT})")
    cluster.wait_ready(manager, members)
    say(f"cluster: {len(members)} node(s) ready")


# ---- down --------------------------------------------------------------------------


def _discover(name: str) -> set[int]:
    """Node numbers of lab ``name`` found on the machine, whatever its record says."""
    found: set[int] = set()
    patterns = [re.compile(rf"pslab-{re.escape(name)}-node(\d+)"),
                re.compile(rf"pyswarm-lab-{re.escape(name)}-node(\d+)"),
                re.compile(r"node(\d+)")]
    for line in links.ip("netns", "list", check=False).stdout.splitlines():
        if line and (m := patterns[0].fullmatch(line.split()[0])):
            found.add(int(m.group(1)))
    for mount in procs.cgroup_mounts():
        for d in mount.glob(f"pyswarm-lab-{name}-node*"):
            if m := patterns[1].fullmatch(d.name):
                found.add(int(m.group(1)))
    for folder in (layout.lab_dir(name), layout.run_dir(name)):
        for d in folder.glob("node*") if folder.is_dir() else []:
            if m := patterns[2].fullmatch(d.name):
                found.add(int(m.group(1)))
    return found


def teardown(name: str, lab: state.Lab | None, say: Callable[[str], None] = print) -> int:
    """Kill every process of the lab and remove all it made; how many nodes there were."""
    indexes = _discover(name) | {n.index for n in (lab.nodes if lab else [])}
    bridge = lab.bridge if lab else layout.bridge_name(name)
    # The members go with their nodes' namespaces below; this also finds one whose
    # namespace is already gone (by its data dir under the lab's folder).
    if members := etcd.kill_lab(name):
        say(f"etcd: {members} member(s) killed")
    for k in sorted(indexes):
        n = NodeLayout(name, k, "")
        killed = procs.kill_node(n, nodes.daemon_pid(n))
        procs.unmount_under(n.root, n.run)
        procs.remove_cgroups(n.cgroup_parent)
        links.remove_node(n)
        say(f"{n.name}: removed" + (f" ({killed} processes killed)" if killed else ""))
    links.remove_forwarding(bridge)
    links.remove_bridge(bridge)
    procs.unmount_under(layout.lab_dir(name), layout.run_dir(name))
    for folder in (layout.run_dir(name), layout.lab_dir(name)):
        shutil.rmtree(folder, ignore_errors=True)
    _remove_empty(name)
    return len(indexes)


def _remove_empty(name: str) -> None:
    """The lab's folders if empty, then the bases once the last lab is gone."""
    for folder in (layout.run_dir(name), layout.lab_dir(name), layout.RUN_BASE,
                   layout.STATE_BASE):
        try:
            folder.rmdir()
        except OSError:
            pass


def down(name: str, say: Callable[[str], None] = print) -> int:
    layout.check_name(name)
    if not layout.lab_dir(name).is_dir():
        if not _discover(name) and not links.link_exists(layout.bridge_name(name)):
            raise LookupError(f'no lab named "{name}" on this machine')
        count = teardown(name, None, say)
    else:
        with state.locked(name):
            try:
                lab = state.load(name)
            except ValueError:
                lab = None  # a damaged record: the names still say what to remove
            count = teardown(name, lab, say)
    say(f"lab {name} removed")
    return count
