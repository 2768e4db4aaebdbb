"""The cluster's PKI: its root CA, node certificates and join tokens (SwarmKit's formats).

- The root CA is an ECDSA P-256 key with a self-signed certificate (CN "swarm-ca"), made by
  the first manager and valid for 20 years: rotating it is a cluster-wide event, not routine.
- A node certificate is issued from the node's CSR (its key never leaves the node) for ~90
  days: CN = node id, OU = "swarm-worker" | "swarm-manager", O = cluster id. Its SANs hold the
  role name and the node id, so peers check it by name (`grpc.ssl_target_name_override`)
  whatever IP it is reached at. A manager's certificate also answers to "swarm-ca": the name a
  joining node uses for the manager's certificate authority.
- A join token is `PSWMTKN-1-<digest>-<secret>`: the digest (SHA-256 of the root CA
  certificate's DER, base 36) lets a joining node check it talks to the right cluster before
  it trusts anything; the secret (128 random bits, base 36) admits it as a worker or manager.

Every parse error raises PKIError (an InvalidArgument) with a message naming what is wrong.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyswarm.common.errors import InvalidArgument

CA_NAME = "swarm-ca"
ROLE_OU = {"worker": "swarm-worker", "manager": "swarm-manager"}
OU_ROLE = {ou: role for role, ou in ROLE_OU.items()}
CA_VALIDITY = datetime.timedelta(days=20 * 365)
NODE_VALIDITY = datetime.timedelta(days=90)
# Certificates start a little in the past: a node whose clock is slightly behind the
# manager's must not see a certificate that is "not yet valid".
BACKDATE = datetime.timedelta(minutes=5)

TOKEN_PREFIX = "PSWMTKN"
TOKEN_VERSION = "1"
DIGEST_LEN = 50  # base-36 digits of a 256-bit digest
SECRET_LEN = 25  # base-36 digits of a 128-bit secret
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class PKIError(InvalidArgument):
    """A certificate, CSR or token that cannot be used, with the reason."""


# ---- keys and PEM -------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"invalid private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("invalid private key: expected an ECDSA key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"invalid certificate: {exc}") from None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ---- the root CA --------------------------------------------------------------------------


@dataclass(frozen=True)
class RootCA:
    """The cluster's certificate authority: its certificate and (on managers) its key."""

    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls) -> RootCA:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert_pem(cert), key_pem(key))

    @property
    def digest(self) -> str:
        return ca_digest(self.cert_pem)

    def sign_node(self, csr_pem: bytes, node_id: str, role: str, cluster_id: str,
                  validity: datetime.timedelta = NODE_VALIDITY) -> bytes:
        """A node certificate for the key in `csr_pem`; the CSR's own subject is ignored:
        the manager alone decides who the node is."""
        if role not in ROLE_OU:
            raise PKIError(f'invalid role "{role}": worker or manager')
        csr = load_csr(csr_pem)
        ca_cert = load_cert(self.cert_pem)
        ca_key = load_key(self.key_pem)
        now = _now()
        names = [ROLE_OU[role], *([CA_NAME] if role == "manager" else []), node_id]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OU[role]),
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            ]))
            .issuer_name(ca_cert.subject)
            .public_key(csr.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            # Both: every node is a TLS client (its agent) and a manager is a TLS server too.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert_pem(cert)


def ca_digest(ca_pem: bytes) -> str:
    """The root CA's digest as join tokens carry it: SHA-256 of its DER, in base 36."""
    der = load_cert(ca_pem).public_bytes(serialization.Encoding.DER)
    return _base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


# ---- CSRs and node certificates -----------------------------------------------------------


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyswarm-node")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise PKIError(f"invalid certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PKIError("invalid certificate signing request: its signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1", "secp384r1"):
        raise PKIError("invalid certificate signing request: the key must be ECDSA P-256 "
                       "or P-384")
    return csr


@dataclass(frozen=True)
class NodeIdentity:
    """Who a node certificate says its holder is."""

    node_id: str
    role: str  # "worker" | "manager"
    cluster_id: str
    not_after: datetime.datetime


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def identity_of(pem: bytes) -> NodeIdentity:
    cert = load_cert(pem)
    role = OU_ROLE.get(_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME), "")
    node_id = _attr(cert.subject, NameOID.COMMON_NAME)
    if not role or not node_id:
        raise PKIError("not a node certificate: it has no swarm role (OU) or node id (CN)")
    return NodeIdentity(node_id, role, _attr(cert.subject, NameOID.ORGANIZATION_NAME),
                        cert.not_valid_after_utc)


def verify_node_cert(pem: bytes, ca_pem: bytes) -> NodeIdentity:
    """The identity in `pem` once it is checked to be signed by the CA and valid now."""
    cert, ca = load_cert(pem), load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError("the certificate was not issued by this cluster's root CA") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PKIError(f"the certificate is not valid now (valid "
                       f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                       f"{cert.not_valid_after_utc:%Y-%m-%d})")
    return identity_of(pem)


def same_public_key(cert: bytes, key: bytes) -> bool:
    """Whether the certificate is for this private key (a manager's answer is checked)."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(load_cert(cert).public_key().public_bytes(*fmt)
                == load_key(key).public_key().public_bytes(*fmt))


# ---- join tokens --------------------------------------------------------------------------


def _base36(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out.rjust(width, "0")


@dataclass(frozen=True)
class JoinToken:
    digest: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{self.digest}-{self.secret}"

    def matches_ca(self, ca_pem: bytes) -> bool:
        return hmac.compare_digest(self.digest, ca_digest(ca_pem))


def new_token(ca_pem: bytes) -> str:
    return str(JoinToken(ca_digest(ca_pem), _base36(secrets.randbits(128), SECRET_LEN)))


def parse_token(text: str) -> JoinToken:
    text = text.strip()
    parts = text.split("-")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise PKIError(f"invalid join token: expected {TOKEN_PREFIX}-1-<digest>-<secret> "
                       f'(as printed by "pyswarm join-token"), got "{_shown(text)}"')
    if parts[1] != TOKEN_VERSION:
        raise PKIError(f'invalid join token: unsupported version "{parts[1]}" (this pyswarm '
                       f"reads version {TOKEN_VERSION})")
    digest, secret = parts[2], parts[3]
    if len(digest) != DIGEST_LEN or not set(digest) <= set(_B36):
        raise PKIError(f"invalid join token: its CA digest must be {DIGEST_LEN} base-36 "
                       f"characters (got {len(digest)})")
    if len(secret) != SECRET_LEN or not set(secret) <= set(_B36):
        raise PKIError(f"invalid join token: its secret must be {SECRET_LEN} base-36 "
                       f"characters (got {len(secret)})")
    return JoinToken(digest, secret)


def _shown(text: str) -> str:
    """A token quoted in an error, its secret part hidden."""
    return text if len(text) <= 20 else text[:20] + "..."


def token_role(presented: str, worker: str, manager: str) -> str | None:
    """The role a presented token admits ("worker" | "manager"), or None; the secrets are
    compared in constant time, both of them always, so timing tells nothing."""
    given = parse_token(presented)
    is_worker = _same(given, worker)
    is_manager = _same(given, manager)
    return "manager" if is_manager else "worker" if is_worker else None


def _same(given: JoinToken, current: str) -> bool:
    try:
        want = parse_token(current)
    except PKIError:
        return False
    digest_ok = hmac.compare_digest(given.digest, want.digest)
    return hmac.compare_digest(given.secret, want.secret) and digest_ok
