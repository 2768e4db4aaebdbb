"""Netlink work (pyroute2): the bridge, and one veth pair per container.

Every function here runs on the ``NetnsThread`` (see netns.py): pyroute2 opens its socket in
the namespace the calling thread stands in when the socket is first used.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyswarm.common.errors import RuntimeFailure
from pyswarm.worker.network.netns import NetnsThread, is_netns

CONTAINER_IFNAME = "eth0"


def mac_for(ip: str) -> str:
    """A stable MAC from the IPv4 address, as Docker does (02:42 + the four address bytes)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def ensure_bridge(ipr: IPRoute, name: str, gateway: ipaddress.IPv4Interface) -> int:
    """The bridge ``name`` with the gateway address, up; created if absent. Its index."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        # A fixed address: otherwise the bridge takes the lowest MAC of its ports and changes
        # it as containers come and go, which makes containers' ARP entries for it stale.
        try:
            ipr.link("add", ifname=name, kind="bridge", address=mac_for(str(gateway.ip)))
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # lost a race with another setup: fine
                raise
        found = ipr.link_lookup(ifname=name)
    index = int(found[0])
    link = ipr.link("get", index=index)[0]
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "bridge":
        raise RuntimeFailure(f"{name} exists and is a {kind or 'plain'} link, not a bridge")
    have = {
        (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)
    }
    if (str(gateway.ip), gateway.network.prefixlen) not in have:
        ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
    ipr.link("set", index=index, state="up")
    return index


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link by name; False if there was none."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
    return True


def ports_of(ipr: IPRoute, bridge_index: int) -> list[str]:
    """Names of the links enslaved to the bridge."""
    return [
        link.get_attr("IFLA_IFNAME")
        for link in ipr.get_links()
        if link.get_attr("IFLA_MASTER") == bridge_index
    ]


def plumb(
    thread: NetnsThread,
    host: IPRoute,
    netns_path: Path,
    veth_host: str,
    bridge_index: int,
    address: ipaddress.IPv4Interface,
    gateway: str,
) -> None:
    """Create the namespace, and a veth pair from the bridge into it, configured. On the thread.

    The pair is made in one request: host side on the bridge and up, peer created straight in
    the namespace as eth0 with its MAC; no move and no rename afterwards.
    """
    fresh = not is_netns(netns_path)
    if fresh:
        netns_path.unlink(missing_ok=True)
        thread.create(netns_path)
    else:
        thread.enter(netns_path)  # a half-made attach: reuse the namespace
    try:
        with IPRoute() as ns:  # its socket is opened in the container's namespace
            eth0 = _veth_into(host, ns, netns_path, veth_host, CONTAINER_IFNAME, bridge_index,
                              address, mtu=None)
            ns.link("set", index=1, state="up")  # lo is always index 1 in a new namespace
            ns.link("set", index=eth0, state="up")
            ns.route("replace", dst="0.0.0.0/0", gateway=gateway)
    finally:
        thread.leave()


def plumb_more(
    thread: NetnsThread,
    host: IPRoute,
    netns_path: Path,
    interfaces: list[tuple[str, str, int, ipaddress.IPv4Interface]],
    mtu: int,
) -> None:
    """More interfaces into an existing namespace: (veth_host, ifname, bridge index, address)
    each, with ``mtu`` on both ends and no route but the subnet's own. On the thread."""
    thread.enter(netns_path)
    try:
        with IPRoute() as ns:
            for veth_host, ifname, bridge_index, address in interfaces:
                index = _veth_into(host, ns, netns_path, veth_host, ifname, bridge_index,
                                   address, mtu=mtu)
                ns.link("set", index=index, state="up")
    finally:
        thread.leave()


def _veth_into(
    host: IPRoute,
    ns: IPRoute,
    netns_path: Path,
    veth_host: str,
    ifname: str,
    bridge_index: int,
    address: ipaddress.IPv4Interface,
    mtu: int | None,
) -> int:
    """A veth pair: ``veth_host`` on the bridge (up), ``ifname`` in the namespace with the
    address and its MAC; made in one request unless ``ifname`` is there already. Its index."""
    if not ns.link_lookup(ifname=ifname):
        nsfd = os.open(netns_path, os.O_RDONLY)
        try:
            peer: dict[str, object] = {
                "ifname": ifname, "address": mac_for(str(address.ip)), "net_ns_fd": nsfd}
            extra: dict[str, object] = {}
            if mtu is not None:
                peer["mtu"] = extra["mtu"] = mtu
            host.link("add", ifname=veth_host, kind="veth", master=bridge_index, state="up",
                      peer=peer, **extra)
        finally:
            os.close(nsfd)
    index = int(ns.link_lookup(ifname=ifname)[0])
    ns.addr("replace", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    return index


class LinkReaper:
    """Deletes host-side veths in the background, on its own thread and netlink socket.

    Deleting a link makes the kernel wait for RCU grace periods (15-30 ms measured here, for
    a delete or a move to another namespace alike), ten times the rest of a detach. Nothing
    needs to wait for it but a new veth of the same name (a restarted container), so
    ``wait(name)`` exists for that, and ``wait()`` for tests and teardown.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyswarm-reaper")
        self._ipr = self._pool.submit(_open_host_socket).result()
        self._lock = threading.Lock()
        self._pending: dict[str, Future[bool]] = {}

    def delete(self, name: str) -> None:
        with self._lock:
            future = self._pending.get(name)
            if future is None or future.done():
                future = self._pool.submit(delete_link, self._ipr, name)
                self._pending[name] = future
        future.add_done_callback(lambda f: self._forget(name, f))

    def wait(self, name: str | None = None) -> None:
        with self._lock:
            futures = list(self._pending.values()) if name is None else [self._pending.get(name)]
        for future in futures:
            if future is not None:
                future.exception()  # waits; a failed delete shows later as EEXIST on re-add

    def close(self) -> None:
        self.wait()
        self._pool.submit(self._ipr.close).result()
        self._pool.shutdown(wait=True)

    def _forget(self, name: str, future: Future[bool]) -> None:
        with self._lock:
            if self._pending.get(name) is future:
                del self._pending[name]


def open_host_socket() -> IPRoute:
    """An IPRoute whose socket is opened now, in the calling thread's (host) namespace."""
    ipr = IPRoute()
    ipr.link_lookup(ifname="lo")
    return ipr


_open_host_socket = open_host_socket
