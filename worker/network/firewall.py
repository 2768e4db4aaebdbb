"""Accept rules in iptables' FORWARD chain, for hosts where Docker (or another firewall) runs.

Docker sets the FORWARD policy to DROP, and with ``br_netfilter`` loaded and
``bridge-nf-call-iptables=1`` even traffic between two ports of our bridge passes that chain.
An ``accept`` in our own nftables table does not help: an accept ends only its own base chain,
and the packet still meets iptables' chain (also when iptables is the nft flavour, whose
rules live in table ``ip filter``). So where an ``iptables`` command exists we insert, at the
top of FORWARD, accepts for our bridge tagged with a comment naming it, and remove exactly
those on teardown. Where there is no iptables (this machine's Debian ships none by default),
nothing can hold a DROP policy there but nftables, whose tables we leave alone.

The same pair of rules serves every bridge of the node: the node bridge (node.py) and each
overlay network's bridge (overlay.py installs them when it creates the bridge and removes
them with it).
"""

from __future__ import annotations

import shutil
import subprocess


def _comment(bridge: str) -> str:
    return f"pyswarm {bridge}"


def rules(bridge: str) -> list[list[str]]:
    """The rule specifications (after ``-A``/``-C``/``-D FORWARD``)."""
    tag = ["-m", "comment", "--comment", _comment(bridge), "-j", "ACCEPT"]
    return [["-i", bridge, *tag], ["-o", bridge, *tag]]


def install(bridge: str) -> bool:
    """Insert the accepts unless present; False when there is no iptables to talk to."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return False
    for spec in rules(bridge):
        if _run([iptables, "-w", "-C", "FORWARD", *spec]) != 0:
            if _run([iptables, "-w", "-I", "FORWARD", "1", *spec]) != 0:
                return False
    return True


def remove(bridge: str) -> None:
    iptables = shutil.which("iptables")
    if iptables is None:
        return
    for spec in rules(bridge):
        # A rule may have been inserted twice by hand or by a crashed run: delete them all.
        for _ in range(16):
            if _run([iptables, "-w", "-D", "FORWARD", *spec]) != 0:
                break


def remove_prefixed(prefix: str) -> None:
    """Remove the accepts of every bridge whose name starts with ``prefix``, also those a
    previous daemon installed (a restarted daemon does not know which overlays it had)."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return
    listed = subprocess.run([iptables, "-w", "-S", "FORWARD"], capture_output=True,
                            text=True, check=False).stdout
    marker = f'--comment "{_comment(prefix)}'
    names = set()
    for line in listed.splitlines():
        start = line.find(marker)
        if start >= 0:
            names.add(line[start + len('--comment "pyswarm '):].split('"', 1)[0])
    for name in sorted(names):
        remove(name)


def _run(args: list[str]) -> int:
    done = subprocess.run(args, capture_output=True, check=False)
    return done.returncode
