"""The pki command: files, modes, subjects, usages and names, and issuing one more later."""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from lvs_events.security import pki, pki_cli
from lvs_events.security.principal import Principal, Role, principal_from_certificate
from lvs_events.security.tls import load_material
from tests.support.pki import files


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvs-events")
    sub = p.add_subparsers(dest="cmd", required=True)
    pki_cli.add_parser(sub)
    return p


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_writes_a_ca_and_a_pair_per_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    args = _parser().parse_args(
        ["pki", "init", "--dir", str(d), "--director", "lb1=192.0.2.201,lb1.example.net",
         "--director", "lb2=192.0.2.202", "--witness", "w1=192.0.2.203", "--operator", "alice",
         "--reader", "monitor"]
    )  # fmt: skip
    assert pki_cli.run(args) == 0
    names = {"ca", "lb1", "lb2", "w1", "alice", "monitor"}
    assert {p.name for p in d.iterdir()} == {f"{n}.pem" for n in names} | {f"{n}-key.pem" for n in names}
    assert set(capsys.readouterr().out.split()) == {str(p) for p in d.iterdir()}
    for p in d.glob("*-key.pem"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    ca = _cert(d / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lb1 = _cert(d / "lb1.pem")
    assert principal_from_certificate(lb1) == Principal(Role.DIRECTOR, "lb1")
    assert _sans(lb1) == {"192.0.2.201", "lb1.example.net", "lb1", "localhost", "127.0.0.1", "::1"}
    assert _usages(lb1) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _sans(_cert(d / "w1.pem")) >= {"192.0.2.203", "w1"}
    alice = _cert(d / "alice.pem")
    assert principal_from_certificate(alice) == Principal(Role.OPERATOR, "alice")
    assert _usages(alice) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        alice.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    for n in names - {"ca"}:
        load_material(files(d, n))  # each pair checks against the CA
    assert ipaddress.ip_address("192.0.2.202") in {
        v for v in _cert(d / "lb2.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.IPAddress)
    }  # fmt: skip


def test_init_refuses_to_replace_a_ca_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pki", "init", "--dir", str(tmp_path), "--operator", "alice"]
    assert pki_cli.run(_parser().parse_args(argv)) == 0
    ca = (tmp_path / "ca.pem").read_bytes()
    assert pki_cli.run(_parser().parse_args(argv)) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert pki_cli.run(_parser().parse_args([*argv, "--force"])) == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca


def test_init_needs_an_identity_and_plain_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pki_cli.run(_parser().parse_args(["pki", "init", "--dir", str(tmp_path)])) == 2
    assert "no identity given" in capsys.readouterr().err
    assert (
        pki_cli.run(_parser().parse_args(["pki", "init", "--dir", str(tmp_path), "--operator", "a b"])) == 2
    )
    assert "identity name 'a b'" in capsys.readouterr().err
    assert pki_cli.run(_parser().parse_args(["pki", "init", "--dir", str(tmp_path), "--reader", "ca"])) == 2


def test_issue_adds_an_identity_and_rotates_an_existing_one(tmp_path: Path) -> None:
    pki.init(tmp_path, [pki.Identity("lb1", Role.DIRECTOR)])
    old = load_material(files(tmp_path, "lb1")).serial
    argv = ["pki", "issue", "--dir", str(tmp_path), "--role", "operator", "--name", "bob"]
    assert pki_cli.run(_parser().parse_args(argv)) == 0
    assert principal_from_certificate(_cert(tmp_path / "bob.pem")) == Principal(Role.OPERATOR, "bob")
    argv = [
        "pki",
        "issue",
        "--dir",
        str(tmp_path),
        "--role",
        "director",
        "--name",
        "lb1",
        "--san",
        "192.0.2.9",
    ]
    assert pki_cli.run(_parser().parse_args(argv)) == 0
    m = load_material(files(tmp_path, "lb1"))
    assert m.serial != old
    assert "192.0.2.9" in _sans(_cert(tmp_path / "lb1.pem"))


def test_issue_needs_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pki", "issue", "--dir", str(tmp_path), "--role", "reader", "--name", "r"]
    assert pki_cli.run(_parser().parse_args(argv)) == 2
    assert "the CA in" in capsys.readouterr().err


def test_group_makes_the_identities_keys_readable_by_the_services_group_not_the_cas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--group``: what the systemd units need (they run as a dynamic user in that group)."""
    d = tmp_path / "pki"
    group = grp.getgrgid(os.getgid()).gr_name
    args = _parser().parse_args(["pki", "init", "--dir", str(d), "--director", "lb1", "--group", group])
    assert pki_cli.run(args) == 0
    issue = ["pki", "issue", "--dir", str(d), "--role", "operator", "--name", "carol", "--group", group]
    assert pki_cli.run(_parser().parse_args(issue)) == 0
    for name in ("lb1", "carol"):
        st = (d / f"{name}-key.pem").stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, os.getgid()), name
        load_material(files(d, name))
    assert stat.S_IMODE((d / "ca-key.pem").stat().st_mode) == 0o600
    capsys.readouterr()
    bad = ["pki", "issue", "--dir", str(d), "--role", "reader", "--name", "m", "--group", "no-such-group-x"]
    assert pki_cli.run(_parser().parse_args(bad)) == 2
    err = capsys.readouterr().err
    assert "group 'no-such-group-x' does not exist" in err
    assert not (d / "m-key.pem").exists()
