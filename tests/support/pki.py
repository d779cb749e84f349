"""Certificates for the tests: a CA and identities made with the project's own ``pki``."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from lvs_events.security import pki
from lvs_events.security.principal import Role
from lvs_events.security.tls import TlsFiles


def files(directory: Path, name: str) -> TlsFiles:
    """The CA, certificate and key of identity ``name`` in ``directory``."""
    return TlsFiles(directory / pki.CA_CERT, pki.cert_path(directory, name), pki.key_path(directory, name))


def make_pki(directory: Path, identities: Sequence[pki.Identity], *, expired: str = "") -> Path:
    """A CA and ``identities`` in ``directory``; ``expired``: also an operator of that name whose
    certificate of the right CA expired a day ago."""
    pki.init(directory, identities)
    if expired:
        ca_key, ca_cert = pki.load_ca(directory)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
        ident = pki.Identity(expired, Role.OPERATOR)
        key, cert = pki.issue_certificate(ca_key, ca_cert, ident, days=2, now=past)
        pki.write_identity(directory, expired, key, cert)
    return directory
