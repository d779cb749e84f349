"""Principals from certificates: CN = name, O = lvs-events:<role>."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lvs_events.security.principal import (
    Principal,
    Role,
    principal_from_certificate,
    principal_from_context,
    principal_from_pem,
)
from tests.support.pki import files


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lb1", Principal(Role.DIRECTOR, "lb1")),
        ("lb2", Principal(Role.DIRECTOR, "lb2")),
        ("w1", Principal(Role.WITNESS, "w1")),
        ("alice", Principal(Role.OPERATOR, "alice")),
        ("monitor", Principal(Role.READER, "monitor")),
    ],
)
def test_the_pki_certificates_name_their_principal(pki_dir: Path, name: str, expected: Principal) -> None:
    assert principal_from_pem(files(pki_dir, name).cert.read_bytes()) == expected


def _cert(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


ORG, CN = NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME


@pytest.mark.parametrize(
    "attrs",
    [
        [(CN, "lb1")],  # no role
        [(ORG, "example corp"), (CN, "lb1")],  # an organization that is not a role
        [(ORG, "lvs-events:admin"), (CN, "lb1")],  # an unknown role
        [(ORG, "lvs-events:unverified"), (CN, "lb1")],  # never from a certificate
        [(ORG, "lvs-events:director"), (ORG, "lvs-events:operator"), (CN, "lb1")],  # two roles
        [(ORG, "lvs-events:director")],  # no name
        [(ORG, "lvs-events:director"), (CN, "lb1"), (CN, "lb2")],  # two names
        [(ORG, "lvs-events:operator"), (CN, "al ice")],  # not a plain name
        [(ORG, "lvs-events:operator"), (CN, "alice\x1b[31m")],  # control characters
        [(ORG, "lvs-events:operator"), (CN, "-rf")],  # not starting with a letter or digit
    ],
)
def test_certificates_that_name_no_principal(attrs: list[tuple[x509.ObjectIdentifier, str]]) -> None:
    assert principal_from_certificate(_cert(*attrs)) is None


def test_a_role_and_name_with_other_subject_fields() -> None:
    c = _cert((NameOID.COUNTRY_NAME, "NL"), (ORG, "lvs-events:reader"), (ORG, "ACME"), (CN, "grafana.ex"))
    assert principal_from_certificate(c) == Principal(Role.READER, "grafana.ex")


class _Context:
    def __init__(self, values: Mapping[str, Iterable[bytes]]) -> None:
        self.values = values

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self.values


def test_the_principal_of_a_call_comes_from_the_verified_pem(pki_dir: Path) -> None:
    pem = files(pki_dir, "alice").cert.read_bytes()
    ctx = _Context({"x509_pem_cert": [pem], "x509_common_name": [b"someone-else"]})
    assert principal_from_context(ctx) == Principal(Role.OPERATOR, "alice")
    assert principal_from_context(_Context({})) is None
    assert principal_from_context(_Context({"x509_pem_cert": [b"garbage"]})) is None


def test_parsing_is_cached_per_certificate(pki_dir: Path) -> None:
    pem = files(pki_dir, "monitor").cert.read_bytes()
    principal_from_pem(pem)
    hits = principal_from_pem.cache_info().hits
    principal_from_pem(pem)
    assert principal_from_pem.cache_info().hits == hits + 1
