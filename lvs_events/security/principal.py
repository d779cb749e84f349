"""Who is calling: the principal a verified client certificate names.

As Kubernetes does with client certificates, the subject's common name (CN) is the name and the
organization (O) is the role: ``O=lvs-events:director, CN=lb1`` is the director ``lb1``. A
certificate with no ``lvs-events:`` organization, more than one, an unknown role, or a name that
is not a plain node or user name (``[A-Za-z0-9][A-Za-z0-9._@-]*``, at most 64 characters) names
no principal, and the interceptor refuses its calls.

A server run with ``--insecure`` (or plaintext on loopback) has no certificate to read: every
caller is :data:`UNVERIFIED`, which the policy lets do everything the services offer and whose
events are stamped ``unverified:<claimed actor>`` (see :func:`lvs_events.security.policy.stamp`).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

ROLE_PREFIX = "lvs-events:"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(enum.StrEnum):
    DIRECTOR = "director"  # an agent (and the coordinator) on a director: node name = CN
    OPERATOR = "operator"  # a person (or automation) running lvs-events commands that change things
    READER = "reader"  # monitoring, dashboards: read-only
    WITNESS = "witness"  # the third etcd member's host; may run a coordinator; reads only over gRPC
    UNVERIFIED = "unverified"  # no TLS (--insecure or loopback plaintext); never from a certificate


CERTIFICATE_ROLES = frozenset(r for r in Role if r is not Role.UNVERIFIED)


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    name: str

    def __str__(self) -> str:
        return f"{self.role} '{self.name}'"


UNVERIFIED = Principal(Role.UNVERIFIED, "unverified")


class AuthContextSource(Protocol):
    """What a grpc.aio ServicerContext offers about the TLS peer."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


@functools.lru_cache(maxsize=512)
def principal_from_pem(pem: bytes) -> Principal | None:
    """The principal a PEM certificate names, or None. Cached: a certificate is parsed once."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return principal_from_certificate(cert)


def principal_from_certificate(cert: x509.Certificate) -> Principal | None:
    subject = cert.subject
    orgs = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    roles = [o.removeprefix(ROLE_PREFIX) for o in orgs if o.startswith(ROLE_PREFIX)]
    cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(roles) != 1 or len(cns) != 1 or not NAME_RE.match(cns[0]):
        return None
    try:
        role = Role(roles[0])
    except ValueError:
        return None
    if role not in CERTIFICATE_ROLES:
        return None
    return Principal(role, cns[0])


def principal_from_context(context: AuthContextSource) -> Principal | None:
    """The principal of a call's verified client certificate; None without one.

    grpc fills ``x509_pem_cert`` only for a peer whose certificate chain it verified against the
    server's CA (client authentication is required by
    :func:`lvs_events.security.tls.server_credentials`).
    """
    pems = list(context.auth_context().get("x509_pem_cert") or ())
    if len(pems) != 1:
        return None
    return principal_from_pem(bytes(pems[0]))
