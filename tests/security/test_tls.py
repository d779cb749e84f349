"""TLS material: checks with messages naming the file, reload while serving, client change
detection, listen rules and where the files come from."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from lvs_events.security import pki
from lvs_events.security.principal import Role
from lvs_events.security.tls import (
    CertificateReloader,
    ClientTls,
    ListenMode,
    ListenRefused,
    TlsError,
    TlsFiles,
    channel_credentials,
    check_listen,
    insecure_warning,
    load_material,
)
from tests.security.conftest import call, every_method
from tests.support.pki import files

STATUS = next(m for _, m in every_method() if m.name == "Status")


def test_good_material_loads_and_keeps_the_key_out_of_its_repr(pki_dir: Path) -> None:
    m = load_material(files(pki_dir, "lb1"))
    assert m.subject == "CN=lb1,O=lvs-events:director"
    key_text = files(pki_dir, "lb1").key.read_text()
    assert b"PRIVATE KEY" in m.key_pem
    assert "PRIVATE" not in repr(m)
    assert key_text.splitlines()[1] not in repr(m)


def test_a_missing_file_is_named(pki_dir: Path, tmp_path: Path) -> None:
    f = files(pki_dir, "lb1")
    with pytest.raises(TlsError, match=r"^key file .*nope-key\.pem: missing$"):
        load_material(TlsFiles(f.ca, f.cert, tmp_path / "nope-key.pem"))
    with pytest.raises(TlsError, match=r"^CA file .*: missing$"):
        load_material(TlsFiles(tmp_path / "ca.pem", f.cert, f.key))


def test_an_unreadable_file_is_named(server_dir: Path) -> None:
    # (a mode of 0 does not stop root, who runs the tests: a path through a file fails as any user)
    f = files(server_dir, "lb1")
    bad = f.key / "key.pem"
    with pytest.raises(TlsError, match=r"^key file .*lb1-key\.pem/key\.pem: unreadable \(Not a directory\)$"):
        load_material(TlsFiles(f.ca, f.cert, bad))


def test_a_key_that_is_not_the_certificates_is_refused(pki_dir: Path) -> None:
    f = files(pki_dir, "lb1")
    with pytest.raises(
        TlsError, match=r"^key file .*lb2-key\.pem: does not match the certificate .*lb1\.pem$"
    ):
        load_material(TlsFiles(f.ca, f.cert, files(pki_dir, "lb2").key))


def test_a_certificate_of_another_ca_is_refused(pki_dir: Path, rogue_dir: Path) -> None:
    r = files(rogue_dir, "lb1")
    with pytest.raises(TlsError, match=r"^certificate file .*lb1\.pem: not signed by the CA in .*ca\.pem"):
        load_material(TlsFiles(files(pki_dir, "lb1").ca, r.cert, r.key))


def test_an_expired_certificate_is_refused(pki_dir: Path) -> None:
    with pytest.raises(TlsError, match=r"^certificate file .*old\.pem: expired on 20"):
        load_material(files(pki_dir, "old"))


def test_garbage_is_not_a_certificate_or_a_key(server_dir: Path) -> None:
    f = files(server_dir, "lb1")
    f.key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TlsError) as e:
        load_material(f)
    assert str(e.value) == f"key file {f.key}: not an unencrypted PEM private key"
    assert "c2VjcmV0" not in str(e.value)
    f.cert.write_text("not a certificate")
    with pytest.raises(TlsError, match=r"^certificate file .*: not a PEM certificate$"):
        load_material(f)


async def _served_serial(address: str, client: TlsFiles) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    ctx = ssl.create_default_context(cafile=client.ca)
    ctx.load_cert_chain(client.cert, client.key)
    ctx.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ctx), 5.0)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_the_server_serves_a_rotated_certificate_to_new_connections_without_a_restart(
    pki_dir: Path, server_dir: Path, serve: Any
) -> None:
    s = await serve(files(server_dir, "lb1"))
    alice = files(pki_dir, "alice")
    first = await _served_serial(s.address, alice)
    assert first == load_material(files(pki_dir, "lb1")).serial

    ca = pki.load_ca(server_dir)
    ident = pki.Identity("lb1", Role.DIRECTOR, ("192.0.2.201",))
    # half a rotation: the new key is in place, the certificate is still the old one
    key, cert = pki.issue_certificate(*ca, ident)
    pki.key_path(server_dir, "lb1").write_bytes(pki.key_pem(key))
    assert await _served_serial(s.address, alice) == first
    async with grpc.aio.secure_channel(s.address, channel_credentials(alice)) as ch:
        await call(ch, STATUS)  # the old pair still serves
    # the rest of it
    pki.write_identity(server_dir, "lb1", key, cert)
    assert await _served_serial(s.address, alice) == cert.serial_number
    async with grpc.aio.secure_channel(s.address, channel_credentials(alice)) as ch:
        reply = await call(ch, STATUS)
    assert reply.reason == "operator:alice"


def test_the_reloader_keeps_the_old_pair_until_a_new_one_checks(server_dir: Path) -> None:
    r = CertificateReloader(files(server_dir, "lb1"))
    before = r.material.serial
    assert r.fetch() is None  # nothing changed
    shutil.copy(files(server_dir, "lb2").key, files(server_dir, "lb1").key)  # mismatched pair
    assert r.fetch() is None
    assert r.material.serial == before
    assert r.fetch() is None  # the same bad files are not read again
    pki.issue_all(server_dir, [pki.Identity("lb1", Role.DIRECTOR)])
    assert r.fetch() is not None
    assert r.material.serial != before
    assert r.generation == 2


def test_a_client_sees_that_its_files_changed(server_dir: Path) -> None:
    c = ClientTls(files(server_dir, "alice"))
    assert c.changed()  # nothing loaded yet
    c.credentials()
    assert not c.changed()
    pki.issue_all(server_dir, [pki.Identity("alice", Role.OPERATOR)])
    assert c.changed()
    c.credentials()
    assert not c.changed()


@pytest.mark.parametrize(
    ("address", "tls", "insecure", "expected"),
    [
        ("0.0.0.0:7420", True, False, ListenMode.TLS),
        ("127.0.0.1:7420", False, False, ListenMode.LOOPBACK_PLAINTEXT),
        ("127.3.0.1:7420", False, False, ListenMode.LOOPBACK_PLAINTEXT),
        ("localhost:7420", False, False, ListenMode.LOOPBACK_PLAINTEXT),
        ("[::1]:7420", False, False, ListenMode.LOOPBACK_PLAINTEXT),
        ("unix:/run/lvs-events.sock", False, False, ListenMode.LOOPBACK_PLAINTEXT),
        ("0.0.0.0:7420", False, True, ListenMode.INSECURE),
        ("192.0.2.201:7420", False, True, ListenMode.INSECURE),
        ("[::]:7420", False, True, ListenMode.INSECURE),
    ],
)
def test_check_listen_allows(address: str, tls: bool, insecure: bool, expected: ListenMode) -> None:
    assert check_listen(address, tls, insecure) is expected


@pytest.mark.parametrize(
    "address", ["0.0.0.0:7420", "[::]:7421", "192.0.2.201:7420", "lb1.example.net:7420", ":7420"]
)
def test_check_listen_refuses_plaintext_on_reachable_addresses(address: str) -> None:
    with pytest.raises(ListenRefused, match=r"without TLS.*--insecure"):
        check_listen(address, tls=False, insecure=False)


def test_the_insecure_warning_says_what_is_exposed() -> None:
    w = insecure_warning("0.0.0.0:7420")
    assert w.startswith("INSECURE")
    assert "0.0.0.0:7420" in w


def test_files_come_from_flags_then_environment_then_the_defaults_file(tmp_path: Path) -> None:
    defaults = tmp_path / "lvs-events"
    defaults.write_text(
        '# shared\nLVS_EVENTS_CA="/d/ca.pem"\nexport LVS_EVENTS_CERT=/d/cert.pem\nLVS_EVENTS_KEY=/d/key.pem\n'
    )
    env = {"LVS_EVENTS_CERT": "/e/cert.pem"}
    f = TlsFiles.resolve(key="/f/key.pem", environ=env, defaults_file=defaults)
    assert f == TlsFiles(Path("/d/ca.pem"), Path("/e/cert.pem"), Path("/f/key.pem"))
    assert TlsFiles.resolve(environ={}, defaults_file=tmp_path / "absent") is None
    with pytest.raises(
        TlsError, match=r"not given: --tls-cert or \$LVS_EVENTS_CERT, --tls-key or \$LVS_EVENTS_KEY"
    ):
        TlsFiles.resolve(ca="/x/ca.pem", environ={}, defaults_file=None)
