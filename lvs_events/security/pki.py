"""A small PKI for tests, the demo and first installs: one CA, one certificate per identity.

Layout of the directory (``<name>`` is the identity's CN):

* ``ca.pem`` (the trust anchor, given to every process as its CA) and ``ca-key.pem``;
* ``<name>.pem`` and ``<name>-key.pem`` per identity.

Keys are ECDSA P-256, written ``0600``. The subject is ``O=lvs-events:<role>, CN=<name>`` (see
:mod:`lvs_events.security.principal`). Directors and the witness get server and client usage
and subject alternative names: their addresses and DNS names as given, their name, and the
loopback addresses (a local client reaches the local coordinator on 127.0.0.1), so one
certificate serves the coordinator listener, the Peer listener and etcd. Operators and readers
get client usage only.

Every file is written to a temporary name and renamed into place, the key before the
certificate: a server reloading meanwhile sees either the old pair or a key that does not match
the old certificate (refused, the old pair stays) and then the new pair.
"""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lvs_events.errors import LvsEventsError
from lvs_events.security.principal import NAME_RE, ROLE_PREFIX, Role

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
CERT_DAYS = 825  # the longest lifetime browsers accepted for server certificates; rotate before
SERVER_ROLES = frozenset({Role.DIRECTOR, Role.WITNESS})
LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")


class PkiError(LvsEventsError):
    """A PKI command that cannot be carried out (bad name, existing CA, missing CA key)."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role
    sans: tuple[str, ...] = ()  # IP addresses and DNS names (server identities)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise PkiError(f"identity name {self.name!r}: expected [A-Za-z0-9][A-Za-z0-9._@-]*, 64 at most")
        if self.role is Role.UNVERIFIED:
            raise PkiError("no certificate names the unverified role")
        if self.name == "ca" or self.name.endswith("-key"):
            raise PkiError(f"identity name {self.name!r} would clash with the CA's or a key's file name")

    @property
    def server(self) -> bool:
        return self.role in SERVER_ROLES


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.UTC)


def new_ca(
    common_name: str = "lvs-events CA", *, days: int = CA_DAYS, now: datetime.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now) - datetime.timedelta(minutes=5)  # clock skew between hosts
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures only (ECDSA keys: TLS needs no key encipherment); a CA also signs
    certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    identity: Identity,
    *,
    days: int = CERT_DAYS,
    now: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now) - datetime.timedelta(minutes=5)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ROLE_PREFIX + identity.role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if identity.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names = dict.fromkeys((*identity.sans, identity.name, *LOOPBACK_SANS))  # ordered, unique
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_group(name: str) -> int:
    """The id of the group that may read the identities' keys (``--group``)."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise PkiError(
            f"group {name!r} does not exist: create it (groupadd --system {name}) or leave --group out"
        ) from None


def _write(path: Path, data: bytes, mode: int, gid: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, renamed),
    with ``mode`` and group ``gid`` (None: the writer's) set before a byte is written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}-key.pem"


def write_identity(
    directory: Path,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    group: int | None = None,
) -> tuple[Path, Path]:
    """Write a pair, the key first (see the module docstring); returns (certificate, key). The
    key is ``0600``, or ``0640`` of ``group`` (the services' group, which the systemd units
    name in ``SupplementaryGroups``)."""
    kp, cp = key_path(directory, name), cert_path(directory, name)
    _write(kp, key_pem(key), 0o600 if group is None else 0o640, group)
    _write(cp, cert_pem(cert), 0o644)
    return cp, kp


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except OSError as e:
        raise PkiError(f"the CA in {directory}: {e.strerror} ({e.filename})") from e
    except ValueError as e:
        raise PkiError(f"the CA in {directory}: not a PEM certificate and unencrypted key") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"the CA key in {directory}: not an ECDSA key (this tool makes P-256 keys)")
    return key, cert


def init(
    directory: Path,
    identities: Sequence[Identity],
    *,
    days: int = CERT_DAYS,
    ca_days: int = CA_DAYS,
    force: bool = False,
    now: datetime.datetime | None = None,
    group: int | None = None,
) -> list[Path]:
    """A new CA in ``directory`` and a certificate per identity; the files written. The CA's
    key is always ``0600``: ``group`` is for the identities' keys (:func:`write_identity`)."""
    names = [i.name for i in identities]
    if len(set(names)) != len(names):
        raise PkiError(f"identity names must differ: {sorted(names)}")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists() and not force:
        raise PkiError(
            f"{directory / CA_KEY} exists: use 'issue' for more identities, or --force for a new CA"
        )
    ca_key, ca_cert = new_ca(days=ca_days, now=now)
    _write(directory / CA_KEY, key_pem(ca_key), 0o600)
    _write(directory / CA_CERT, cert_pem(ca_cert), 0o644)
    written = [directory / CA_CERT, directory / CA_KEY]
    written += issue_all(directory, identities, ca=(ca_key, ca_cert), days=days, now=now, group=group)
    return written


def issue_all(
    directory: Path,
    identities: Iterable[Identity],
    *,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    days: int = CERT_DAYS,
    now: datetime.datetime | None = None,
    group: int | None = None,
) -> list[Path]:
    """A certificate per identity, signed by ``ca`` (default: the CA in ``directory``); an
    existing pair of the same name is replaced (rotation). ``group``: see :func:`write_identity`."""
    ca_key, ca_cert = ca or load_ca(directory)
    written: list[Path] = []
    for ident in identities:
        key, cert = issue_certificate(ca_key, ca_cert, ident, days=days, now=now)
        written += write_identity(directory, ident.name, key, cert, group=group)
    return written
