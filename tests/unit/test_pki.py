"""The cluster PKI: root CA, node certificates from CSRs, identities, join tokens."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from pyswarm.common import pki


@pytest.fixture(scope="module")
def ca() -> pki.RootCA:
    return pki.RootCA.create()


def node_cert(ca: pki.RootCA, node_id: str = "n1", role: str = "worker",
              cluster_id: str = "c1") -> tuple[bytes, bytes]:
    key = pki.new_key()
    return ca.sign_node(pki.make_csr(key), node_id, role, cluster_id), pki.key_pem(key)


def test_root_ca_is_a_long_lived_p256_ca(ca: pki.RootCA) -> None:
    cert = pki.load_cert(ca.cert_pem)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "swarm-ca"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life > datetime.timedelta(days=365 * 10)
    assert pki.load_key(ca.key_pem).public_key() == cert.public_key()


@pytest.mark.parametrize("role,ou,names", [
    ("worker", "swarm-worker", ["swarm-worker", "node-a"]),
    ("manager", "swarm-manager", ["swarm-manager", "swarm-ca", "node-a"]),
])
def test_node_certificate_carries_id_role_and_cluster(ca: pki.RootCA, role: str, ou: str,
                                                      names: list[str]) -> None:
    pem, key = node_cert(ca, "node-a", role, "cluster-9")
    cert = pki.load_cert(pem)
    subject = {a.oid: a.value for a in cert.subject}
    assert subject == {NameOID.COMMON_NAME: "node-a", NameOID.ORGANIZATIONAL_UNIT_NAME: ou,
                       NameOID.ORGANIZATION_NAME: "cluster-9"}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == names
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=80) < life < datetime.timedelta(days=100)
    identity = pki.verify_node_cert(pem, ca.cert_pem)
    assert (identity.node_id, identity.role, identity.cluster_id) == ("node-a", role,
                                                                      "cluster-9")
    assert pki.same_public_key(pem, key)


def test_a_certificate_from_another_ca_does_not_verify(ca: pki.RootCA) -> None:
    other = pki.RootCA.create()
    pem, key = node_cert(other)
    with pytest.raises(pki.PKIError, match="not issued by this cluster's root CA"):
        pki.verify_node_cert(pem, ca.cert_pem)
    assert not pki.same_public_key(pem, pki.key_pem(pki.new_key()))


def test_the_csr_subject_is_ignored_and_bad_csrs_are_refused(ca: pki.RootCA) -> None:
    with pytest.raises(pki.PKIError, match="certificate signing request"):
        ca.sign_node(b"not a csr", "n1", "worker", "c1")
    with pytest.raises(pki.PKIError, match="invalid role"):
        ca.sign_node(pki.make_csr(pki.new_key()), "n1", "admin", "c1")


def test_identity_of_a_plain_certificate_is_refused(ca: pki.RootCA) -> None:
    with pytest.raises(pki.PKIError, match="not a node certificate"):
        pki.identity_of(ca.cert_pem)


def test_token_format_and_round_trip(ca: pki.RootCA) -> None:
    token = pki.new_token(ca.cert_pem)
    prefix, version, digest, secret = token.split("-")
    assert (prefix, version, len(digest), len(secret)) == ("PSWMTKN", "1", 50, 25)
    parsed = pki.parse_token(token)
    assert str(parsed) == token
    assert parsed.digest == ca.digest
    assert parsed.matches_ca(ca.cert_pem)
    assert not parsed.matches_ca(pki.RootCA.create().cert_pem)
    assert pki.new_token(ca.cert_pem) != token  # a fresh secret each time


@pytest.mark.parametrize("text,message", [
    ("", "expected PSWMTKN-1-<digest>-<secret>"),
    ("SWMTKN-1-abc-def", "expected PSWMTKN-1-<digest>-<secret>"),
    ("PSWMTKN-2-" + "a" * 50 + "-" + "b" * 25, 'unsupported version "2"'),
    ("PSWMTKN-1-" + "a" * 49 + "-" + "b" * 25, "CA digest must be 50"),
    ("PSWMTKN-1-" + "A" * 50 + "-" + "b" * 25, "CA digest must be 50"),
    ("PSWMTKN-1-" + "a" * 50 + "-" + "b" * 24, "secret must be 25"),
    ("PSWMTKN-1-" + "a" * 50 + "-" + "b" * 25 + "-x", "expected PSWMTKN"),
])
def test_malformed_tokens_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(pki.PKIError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pki.parse_token(text)


def test_token_role(ca: pki.RootCA) -> None:
    worker, manager = pki.new_token(ca.cert_pem), pki.new_token(ca.cert_pem)
    assert pki.token_role(worker, worker, manager) == "worker"
    assert pki.token_role(manager, worker, manager) == "manager"
    rotated = pki.new_token(ca.cert_pem)
    assert pki.token_role(rotated, worker, manager) is None
    # The right secret with another cluster's digest is not this cluster's token.
    other = pki.JoinToken(pki.RootCA.create().digest, pki.parse_token(worker).secret)
    assert pki.token_role(str(other), worker, manager) is None
