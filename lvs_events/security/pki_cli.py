"""``lvs-events pki``: make the CA and the certificates (``init``), or one more later (``issue``).

    lvs-events pki init --dir /etc/lvs-events/pki \\
        --director lb1=192.0.2.201,lb1.example.net --director lb2=192.0.2.202 \\
        --witness w1=192.0.2.203 --operator alice [--reader monitor]
    lvs-events pki issue --dir /etc/lvs-events/pki --role operator --name bob

``issue`` replaces an existing identity's pair (rotation): servers reload it at the next
handshake, clients when they rebuild their channel (docs/security.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvs_events.security import pki
from lvs_events.security.principal import CERTIFICATE_ROLES, Role


def _server(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=ADDR,ADDR`` (addresses and DNS names; ``NAME`` alone for none)."""
    name, _, rest = spec.partition("=")
    return name, tuple(s.strip() for s in rest.split(",") if s.strip())


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "pki", help="make a CA and certificates for the directors, the witness and operators"
    )
    sub = p.add_subparsers(dest="pki_cmd", required=True)
    i = sub.add_parser("init", help="a new CA and a certificate per identity")
    i.add_argument("--dir", type=Path, required=True, help="where to write the PEM files")
    i.add_argument(
        "--director",
        action="append",
        default=[],
        metavar="NAME=ADDR,...",
        help="a director and the addresses/DNS names its coordinator and Peer service answer on (repeat)",
    )
    i.add_argument(
        "--witness", action="append", default=[], metavar="NAME=ADDR,...", help="the witness (etcd member)"
    )
    i.add_argument("--operator", action="append", default=[], metavar="NAME", help="an operator (repeat)")
    i.add_argument(
        "--reader", action="append", default=[], metavar="NAME", help="a read-only identity (repeat)"
    )
    i.add_argument(
        "--days", type=int, default=pki.CERT_DAYS, help="certificate lifetime (default %(default)s)"
    )
    i.add_argument("--ca-days", type=int, default=pki.CA_DAYS, help="CA lifetime (default %(default)s)")
    i.add_argument(
        "--force", action="store_true", help="replace an existing CA (every certificate must be reissued)"
    )
    _group_option(i)
    s = sub.add_parser("issue", help="one more certificate (or a new one for an identity: rotation)")
    s.add_argument("--dir", type=Path, required=True, help="the directory holding ca.pem and ca-key.pem")
    s.add_argument("--role", choices=sorted(r.value for r in CERTIFICATE_ROLES), required=True)
    s.add_argument("--name", required=True, help="the identity's name (node or user name)")
    s.add_argument("--san", action="append", default=[], help="an address or DNS name (directors, witness)")
    s.add_argument("--days", type=int, default=pki.CERT_DAYS)
    _group_option(s)
    return p


def _group_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--group",
        metavar="GROUP",
        help="write the identities' keys 0640 of this group (e.g. lvs-events, the group the systemd"
        " units run in) instead of 0600; the CA key stays 0600",
    )


def _identities(args: argparse.Namespace) -> list[pki.Identity]:
    out = [pki.Identity(n, Role.DIRECTOR, sans) for n, sans in map(_server, args.director)]
    out += [pki.Identity(n, Role.WITNESS, sans) for n, sans in map(_server, args.witness)]
    out += [pki.Identity(n, Role.OPERATOR) for n in args.operator]
    out += [pki.Identity(n, Role.READER) for n in args.reader]
    return out


def _need_identities(idents: list[pki.Identity]) -> list[pki.Identity]:
    if not idents:
        raise pki.PkiError("no identity given: --director, --witness, --operator or --reader")
    return idents


def run(args: argparse.Namespace) -> int:
    """Carry out ``pki init`` or ``pki issue``; prints the files written. 0 on success, 2 on error."""
    try:
        group = pki.key_group(args.group) if args.group else None
        if args.pki_cmd == "init":
            idents = _need_identities(_identities(args))
            written = pki.init(
                args.dir, idents, days=args.days, ca_days=args.ca_days, force=args.force, group=group
            )
        else:
            ident = pki.Identity(args.name, Role(args.role), tuple(args.san))
            written = pki.issue_all(args.dir, [ident], days=args.days, group=group)
    except pki.PkiError as e:
        print(f"lvs-events pki: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
