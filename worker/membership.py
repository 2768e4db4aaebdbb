"""This node's membership of a cluster: its TLS identity on disk, and how a join gets it.

    <root>/certificates/  node.key (0600), node.crt, root_ca.crt: the node's identity
    <root>/join.json      where the manager is and what this node advertises (joined nodes)
    <root>/node_id        the node's id (the manager's choice, on a join)

Join, as ca.proto describes it: TLS without verification to read the manager's root CA from
the handshake (its certificate chain ends with it), check it against the digest in the token
(so a man in the middle cannot pass his own CA), then, verifying the manager against that
root, send a CSR and the token to NodeCA. The key is made here and never leaves the node.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from pyswarm.common import pki, rpc
from pyswarm.common.errors import FailedPrecondition, InvalidArgument
from pyswarm.proto import ca_pb2, ca_pb2_grpc

CERT_DIR = "certificates"
MANAGER_NAME = "swarm-manager"  # the name every manager certificate answers to
DEFAULT_PORT = 2377
CONNECT_TIMEOUT = 10.0  # seconds to reach a manager during a join
RPC_TIMEOUT = 20.0
# A session's whole NetworkState or COMPLETE assignments can pass gRPC's 4 MiB default in
# a large cluster (a thousand tasks on one node, ten thousand in its services).
SESSION_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), *rpc.FLOW_OPTIONS]
# Renew once a third of a certificate's life is left (30 of 90 days): plenty of retries
# before it expires, even for a node that is off for a few weeks.
RENEW_BEFORE = pki.NODE_VALIDITY / 3


@dataclass(frozen=True)
class NodeCerts:
    key: bytes
    cert: bytes
    ca: bytes

    @classmethod
    def load(cls, root: Path) -> NodeCerts | None:
        for folder in (root / CERT_DIR, root / f"{CERT_DIR}.new"):
            try:
                return cls((folder / "node.key").read_bytes(), (folder / "node.crt").read_bytes(),
                           (folder / "root_ca.crt").read_bytes())
            except FileNotFoundError:
                continue
        return None

    def save(self, root: Path) -> None:
        """Write all three files, then swap the folder in: a crash never leaves a key with
        another key's certificate (load falls back to the new folder if the swap was cut)."""
        new, old, final = (root / f"{CERT_DIR}.new", root / f"{CERT_DIR}.old", root / CERT_DIR)
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(mode=0o700, parents=True)
        for name, data, mode in (("node.key", self.key, 0o600), ("node.crt", self.cert, 0o644),
                                 ("root_ca.crt", self.ca, 0o644)):
            fd = os.open(new / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    @property
    def identity(self) -> pki.NodeIdentity:
        return pki.identity_of(self.cert)

    def needs_renewal(self) -> bool:
        left = self.identity.not_after - datetime.datetime.now(datetime.UTC)
        return left < RENEW_BEFORE

    def channel(self, target: str) -> grpc.aio.Channel:
        """Mutual TLS to a manager, checked by name against this cluster's root CA."""
        creds = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.aio.secure_channel(target, creds, options=[
            ("grpc.ssl_target_name_override", MANAGER_NAME), *SESSION_OPTIONS])


def remove_certs(root: Path) -> None:
    for name in (CERT_DIR, f"{CERT_DIR}.new", f"{CERT_DIR}.old"):
        shutil.rmtree(root / name, ignore_errors=True)


@dataclass(frozen=True)
class JoinState:
    """What a joined node needs to find its manager again after a restart."""

    manager_addr: str  # "HOST:PORT"
    advertise_addr: str  # this node's address for other nodes (VXLAN tunnel endpoint)
    listen_addr: str = ""  # managers: where to serve (used once several managers run)
    managers: tuple[str, ...] = ()  # every manager it last heard of (agent/remotes.py)

    @staticmethod
    def path(root: Path) -> Path:
        return root / "join.json"

    @classmethod
    def load(cls, root: Path) -> JoinState | None:
        try:
            data = json.loads(cls.path(root).read_text())
        except FileNotFoundError:
            return None
        if "manager_addr" not in data:  # a join of an older pyswarm (a local socket)
            return None
        return cls(data["manager_addr"], data.get("advertise_addr", ""),
                   data.get("listen_addr", ""), tuple(data.get("managers", ())))

    def save(self, root: Path) -> None:
        tmp = self.path(root).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path(root))


# ---- addresses -----------------------------------------------------------------------------


def parse_manager_addr(text: str) -> tuple[str, int]:
    """"HOST[:PORT]" or "[IPv6]:PORT" → (host, port); 2377 when no port is given."""
    text = text.strip()
    if not text or "/" in text:
        raise InvalidArgument(f'invalid manager address "{text}": expected HOST[:PORT], '
                              f"e.g. 192.168.1.10:2377")
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f'invalid manager address "{text}": expected HOST[:PORT] with '
                              f"a port 1-65535")
    return host, int(port)


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_ip(text: str, flag: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InvalidArgument(f'invalid {flag} "{text}": expected an IP address') from None


def default_route_addr() -> str | None:
    """This host's address on the interface that holds the default route, or None.

    The kernel picks it: a UDP socket "connected" towards the default gateway reports the
    source address it would use. connect() on UDP sends nothing."""
    gateway = None
    with contextlib.suppress(OSError), open("/proc/net/route") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 1:
                gateway = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
                break
    if gateway is None:
        return None
    if gateway == "0.0.0.0":  # a device route (point-to-point): any outside address will do
        gateway = "192.0.2.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((gateway, 9))
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") else addr


# ---- the join ------------------------------------------------------------------------------


def fetch_root_ca(host: str, port: int, token: pki.JoinToken) -> tuple[bytes, str]:
    """The manager's root CA, checked against the token, and this node's local address on
    the connection (the default advertise address). Blocking: run it in a thread."""
    addr = target(host, port)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: the token's digest decides
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw:
            local = str(raw.getsockname()[0])
            with ctx.wrap_socket(raw, server_hostname=pki.CA_NAME) as tls:
                chain = _unverified_chain(tls)
    except OSError as exc:  # ssl.SSLError included
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise FailedPrecondition(f"cannot reach the manager at {addr}: {reason}") from None
    for pem in chain:
        if token.matches_ca(pem):
            return pem, local
    raise FailedPrecondition(
        f"the manager's root CA does not match the token: {addr} is not the manager of the "
        f"swarm this token is for (or the token was mistyped)")


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, as PEM. Python 3.13 has this as a public method;
    3.11 and 3.12 have it on the underlying _ssl object."""
    public = getattr(tls, "get_unverified_chain", None)
    items: list[Any] = public() if public else tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    out = []
    for item in items or []:
        if isinstance(item, bytes):
            out.append(pki.cert_pem(x509.load_der_x509_certificate(item)))
        else:
            out.append(item.public_bytes().encode())
    return out


def _refusal(addr: str, exc: grpc.aio.AioRpcError) -> FailedPrecondition:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return FailedPrecondition(f"cannot reach the manager at {addr}: {exc.details()}")
    return FailedPrecondition(f"the manager at {addr} refused: {exc.details()}")


async def request_certificate(
    host: str, port: int, ca_pem: bytes, token: str, hostname: str,
) -> tuple[NodeCerts, ca_pb2.IssueNodeCertificateResponse]:
    """A new node's certificate from the manager's NodeCA, against the join token."""
    key = pki.new_key()
    addr = target(host, port)
    creds = grpc.ssl_channel_credentials(ca_pem)
    async with grpc.aio.secure_channel(addr, creds, options=[
            ("grpc.ssl_target_name_override", pki.CA_NAME)]) as channel:
        try:
            answer = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(
                ca_pb2.IssueNodeCertificateRequest(csr=pki.make_csr(key), token=token,
                                                   hostname=hostname), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise _refusal(addr, exc) from None
    certs = NodeCerts(pki.key_pem(key), answer.certificate, ca_pem)
    _check_answer(certs, answer.node_id)
    return certs, answer


async def renew_certificate(manager: str, certs: NodeCerts) -> NodeCerts:
    """A fresh certificate (at the node's current role) with the node's own certificate."""
    key = pki.new_key()
    async with certs.channel(manager) as channel:
        try:
            answer = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(
                ca_pb2.IssueNodeCertificateRequest(csr=pki.make_csr(key)), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise _refusal(manager, exc) from None
    fresh = NodeCerts(pki.key_pem(key), answer.certificate, certs.ca)
    _check_answer(fresh, certs.identity.node_id)
    return fresh


def _check_answer(certs: NodeCerts, node_id: str) -> None:
    """A manager's certificate must be for our key, from our root, for the id it said."""
    try:
        identity = pki.verify_node_cert(certs.cert, certs.ca)
    except pki.PKIError as exc:
        raise FailedPrecondition(f"the manager sent an unusable certificate: {exc}") from None
    if not pki.same_public_key(certs.cert, certs.key) or identity.node_id != node_id:
        raise FailedPrecondition("the manager sent a certificate for another key or node")
