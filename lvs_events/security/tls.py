"""TLS material for every gRPC server and client: mutual TLS, reloaded when the files change.

A :class:`TlsFiles` names three PEM files: the CA bundle (trust anchors for the peer), this
process's certificate and its private key. They come from flags, else the environment
(``LVS_EVENTS_CA``, ``LVS_EVENTS_CERT``, ``LVS_EVENTS_KEY``), else ``/etc/default/lvs-events``
(the same variables; systemd units read that file as their environment too).

Servers (:func:`server_credentials`) require and verify a client certificate and re-read the
files when they change: grpc asks the fetcher for a configuration at every new handshake, the
fetcher compares the files' stat stamps and, on a change, loads and checks the new material. A
pair that does not check (a key written before its certificate, a half-written file) keeps the
previous one in force; the next change is tried again. Established connections keep the
material they were made with.

Clients (:class:`ClientTls`) build channel credentials and offer a cheap :meth:`ClientTls.changed`
(three ``stat`` calls) so a long-lived client can rebuild its channel after a rotation.

Key bytes never appear in a repr, an exception or a log line.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import ipaddress
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from lvs_events.errors import LvsEventsError

log = structlog.get_logger("security.tls")

ENV_CA = "LVS_EVENTS_CA"
ENV_CERT = "LVS_EVENTS_CERT"
ENV_KEY = "LVS_EVENTS_KEY"
_ENV = {"ca": ENV_CA, "cert": ENV_CERT, "key": ENV_KEY}
DEFAULTS_FILE = Path("/etc/default/lvs-events")


class TlsError(LvsEventsError):
    """TLS material that cannot be used; the message names the file and what is wrong."""


class ListenRefused(LvsEventsError):
    """A plaintext listener on a non-loopback address without an explicit ``--insecure``."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the CA bundle, the certificate and its private key (PEM)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def resolve(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        defaults_file: Path | None = DEFAULTS_FILE,
    ) -> TlsFiles | None:
        """The files from flags, else the environment, else the defaults file; None if none of
        the three is given anywhere. Giving some but not all three is an error."""
        env = os.environ if environ is None else environ
        defaults = read_defaults(defaults_file) if defaults_file is not None else {}
        chosen: dict[str, str] = {}
        for name, flag, var in (("ca", ca, ENV_CA), ("cert", cert, ENV_CERT), ("key", key, ENV_KEY)):
            value = flag or env.get(var) or defaults.get(var)
            if value:
                chosen[name] = value
        if not chosen:
            return None
        missing = [n for n in ("ca", "cert", "key") if n not in chosen]
        if missing:
            how = ", ".join(f"--tls-{n} or ${_ENV[n]}" for n in missing)
            raise TlsError(f"TLS needs a CA, a certificate and a key; not given: {how}")
        return cls(Path(chosen["ca"]), Path(chosen["cert"]), Path(chosen["key"]))


def add_arguments(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (and, for a server, ``--insecure``)."""
    g = parser.add_argument_group("TLS (default: $LVS_EVENTS_CA, $LVS_EVENTS_CERT, $LVS_EVENTS_KEY)")
    g.add_argument("--tls-ca", metavar="PEM", help="CA bundle the peer's certificate must chain to")
    g.add_argument("--tls-cert", metavar="PEM", help="this process's certificate")
    g.add_argument("--tls-key", metavar="PEM", help="its private key")
    if server:
        g.add_argument(
            "--insecure",
            action="store_true",
            help="serve plaintext on a non-loopback address, with no authentication (logged at every start)",
        )


def files_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """The files named by :func:`add_arguments`'s flags, else the environment and defaults file."""
    ca: str | None = args.tls_ca
    cert: str | None = args.tls_cert
    key: str | None = args.tls_key
    return TlsFiles.resolve(ca, cert, key)


def read_defaults(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a shell-style defaults file (comments, blanks and quotes allowed);
    an absent or unreadable file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        name = name.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


_Stamp = tuple[tuple[int, int, int, int], ...]


def _stamp(files: TlsFiles) -> _Stamp | None:
    """Identity of the three files' current contents (inode, size, mtime, ctime); None if one
    is missing. Rewriting or replacing a file changes it."""
    out = []
    for p in (files.ca, files.cert, files.key):
        try:
            st = p.stat()
        except OSError:
            return None
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Checked PEM bytes of one generation of the files. The key is kept out of the repr."""

    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    subject: str
    serial: int
    not_after: datetime.datetime
    stamp: _Stamp | None = field(repr=False, default=None)


def _read(what: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise TlsError(f"{what} file {path}: missing") from e
    except IsADirectoryError as e:
        raise TlsError(f"{what} file {path}: is a directory") from e
    except OSError as e:
        raise TlsError(f"{what} file {path}: unreadable ({e.strerror})") from e


def _certificates(what: str, path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TlsError(f"{what} file {path}: not a PEM certificate") from e
    return certs


def load_material(files: TlsFiles, *, now: datetime.datetime | None = None) -> TlsMaterial:
    """Read and check the three files: each present and readable, the key the certificate's,
    the certificate signed by one of the CA bundle's certificates and valid now."""
    stamp = _stamp(files)
    ca_pem = _read("CA", files.ca)
    cert_pem = _read("certificate", files.cert)
    key_pem = _read("key", files.key)
    cas = _certificates("CA", files.ca, ca_pem)
    cert = _certificates("certificate", files.cert, cert_pem)[0]
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        # the library's message may quote the input; it is not repeated here
        raise TlsError(f"key file {files.key}: not an unencrypted PEM private key") from e
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise TlsError(f"key file {files.key}: does not match the certificate {files.cert}")
    if not any(_issued_by(cert, ca) for ca in cas):
        raise TlsError(
            f"certificate file {files.cert}: not signed by the CA in {files.ca} "
            f"(issuer {cert.issuer.rfc4514_string()})"
        )
    moment = now or datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc <= moment:
        raise TlsError(f"certificate file {files.cert}: expired on {cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > moment:
        raise TlsError(
            f"certificate file {files.cert}: not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    return TlsMaterial(
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        subject=cert.subject.rfc4514_string(),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        stamp=stamp,
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CertificateReloader:
    """The server side: the material in force, replaced when the files change and check.

    :meth:`fetch` is grpc's certificate-configuration fetcher; grpc calls it from its own
    threads at each handshake, so the state is guarded by a lock. It returns None (keep the
    configuration in force) unless new, checked material was loaded.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._material = load_material(files)
        self._seen = self._material.stamp  # last stamp tried, good or bad: retry only on a change
        self.generation = 1  # material loaded so far (the initial one counts)

    @property
    def material(self) -> TlsMaterial:
        with self._lock:
            return self._material

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        m = self.material
        return grpc.ssl_server_certificate_configuration(
            [(m.key_pem, m.cert_pem)], root_certificates=m.ca_pem
        )

    def reload(self) -> bool:
        """Load the files if they changed since the last try; True if new material is in force."""
        stamp = _stamp(self.files)
        with self._lock:
            if stamp is None or stamp == self._seen:
                return False
            self._seen = stamp
        try:
            material = load_material(self.files)
        except TlsError as e:
            log.warning("tls reload refused; the previous certificate stays in force", error=str(e))
            return False
        if material.stamp != stamp:  # the files moved while being read: a later handshake retries
            with self._lock:
                self._seen = None
            return False
        with self._lock:
            self._material = material
            self.generation += 1
        log.info(
            "tls certificate reloaded",
            subject=material.subject,
            serial=f"{material.serial:x}",
            not_after=material.not_after.isoformat(),
        )
        return True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        return self.configuration() if self.reload() else None


def server_credentials(
    files: TlsFiles, reloader: CertificateReloader | None = None
) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by the CA and follow file changes.
    Raises :class:`TlsError` if the files do not check now."""
    r = reloader or CertificateReloader(files)
    # grpc keeps the configuration in force when the fetcher returns None; its stubs omit that
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], r.fetch)
    return grpc.dynamic_ssl_server_credentials(r.configuration(), fetch, require_client_authentication=True)


class ClientTls:
    """Channel credentials from the files, and whether the files changed since."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp: _Stamp | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Load and check the files now (:class:`TlsError` if they do not check)."""
        m = load_material(self.files)
        self._stamp = m.stamp
        return grpc.ssl_channel_credentials(
            root_certificates=m.ca_pem, private_key=m.key_pem, certificate_chain=m.cert_pem
        )

    def changed(self) -> bool:
        """True if a file differs from what :meth:`credentials` last loaded (three ``stat``s)."""
        return _stamp(self.files) != self._stamp


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    return ClientTls(files).credentials()


class ListenMode(enum.Enum):
    TLS = "tls"
    LOOPBACK_PLAINTEXT = "loopback-plaintext"  # no TLS, local callers only
    INSECURE = "insecure"  # no TLS on a reachable address: the operator said --insecure


def _host(address: str) -> str:
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address  # a bare host or an IPv6 literal without a port


def is_loopback(address: str) -> bool:
    """``host:port`` on a loopback address (127.0.0.0/8, ::1, ``localhost``) or a unix socket.
    Wildcards (``0.0.0.0``, ``[::]``) and other names are not loopback: names are not resolved."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(address: str, tls: bool, insecure: bool) -> ListenMode:
    """How a server may listen on ``address``; :class:`ListenRefused` for plaintext on a
    reachable address without ``insecure``. On :attr:`ListenMode.INSECURE` the caller logs
    :func:`insecure_warning` at every start."""
    if tls:
        return ListenMode.TLS
    if is_loopback(address):
        return ListenMode.LOOPBACK_PLAINTEXT
    if insecure:
        return ListenMode.INSECURE
    raise ListenRefused(
        f"refusing to listen on {address} without TLS: give --tls-ca/--tls-cert/--tls-key "
        f"(or ${ENV_CA}, ${ENV_CERT}, ${ENV_KEY}), listen on loopback, or pass --insecure"
    )


def insecure_warning(address: str) -> str:
    return (
        f"INSECURE: serving plaintext gRPC on {address} with no authentication: anyone who can reach "
        "it can publish events, drain servers and take the leadership; every event is stamped "
        "'unverified:'. Use TLS (see docs/security.md)."
    )
