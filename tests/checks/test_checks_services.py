"""Every negotiate service (and ping/external): healthy, answers wrong, hangs, port closed.

Servers are protocol-level test servers on loopback (tests/checks/protocols.py): just enough
of each protocol to pass or fail a check, as a real server would answer it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lvs_events.agent.checks import CheckSpec
from lvs_events.agent.checks.ping import Pinger, echo_request, ping
from lvs_events.domain.config import Protocol
from tests.checks import protocols as p
from tests.checks.servers import TIMEOUT, Cert, check, closed_port, hang, make_spec, tcp_server, udp_server


@dataclass(frozen=True)
class Case:
    service: str
    server: Callable[[bool], object]
    udp: bool = False
    tls: bool = False
    settings: dict[str, object] = field(default_factory=dict)


CASES = [
    Case("smtp", p.smtp),
    Case("submission", p.smtp),
    Case("pop", p.pop, settings={"login": "user", "passwd": "secret"}),
    Case("pops", p.pop, tls=True, settings={"login": "user", "passwd": "secret"}),
    Case("imap", p.imap, settings={"login": "user", "passwd": "secret"}),
    Case("imaps", p.imap, tls=True, settings={"login": "user", "passwd": "secret"}),
    Case("nntp", p.nntp),
    Case("ftp", p.ftp, settings={"request": "/status.txt", "receive": "healthy"}),
    Case("ldap", p.ldap, settings={"request": "/dc=example,dc=org", "receive": "dc=example"}),
    Case("ldaps", p.ldap, tls=True, settings={"request": "/dc=example,dc=org"}),
    Case(
        "mysql", p.mysql, settings={"login": "u", "passwd": "secret", "request": "/SELECT 1", "database": "d"}
    ),
    Case(
        "pgsql", p.pgsql, settings={"login": "u", "passwd": "secret", "request": "/SELECT 1", "database": "d"}
    ),
    Case("oracle", p.oracle, settings={"login": "u", "passwd": "secret", "request": "/SELECT 1 FROM dual"}),
    Case("simpletcp", p.simpletcp, settings={"request": "/PING\\n", "receive": "PONG"}),
    Case("sip", p.sip_udp, udp=True, settings={"login": "check@example.org"}),
    Case("radius", p.radius_udp, udp=True, settings={"login": "u", "passwd": "pw", "secret": "s3cret"}),
    Case("dns", p.dns_udp, udp=True, settings={"request": "/www.example.org", "receive": r"^192\.0\.2\.1$"}),
]
IDS = [c.service for c in CASES]


@contextlib.asynccontextmanager
async def serve(case: Case, cert: Cert, good: bool | None) -> AsyncIterator[int]:
    """good=True/False: the protocol server; None: a server that never answers."""
    if case.udp:
        async with udp_server(case.server(good) if good is not None else p.silent_udp) as port:  # type: ignore[arg-type]
            yield port
        return
    handler = case.server(good) if good is not None else hang
    async with tcp_server(handler, tls=cert.server_context() if case.tls else None) as port:  # type: ignore[arg-type]
        yield port


def spec_of(case: Case, port: int) -> CheckSpec:
    return make_spec(case.service, port, protocol=Protocol.UDP if case.udp else Protocol.TCP, **case.settings)


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_checks_service_healthy(case: Case, cert: Cert) -> None:
    async with serve(case, cert, True) as port:
        r = await check(spec_of(case, port))
    assert r.up, r.detail


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_checks_service_answers_wrong(case: Case, cert: Cert) -> None:
    async with serve(case, cert, False) as port:
        r = await check(spec_of(case, port))
    assert not r.up
    assert "timeout" not in r.detail, r.detail  # refused by its answer, not by silence


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_checks_service_hangs(case: Case, cert: Cert) -> None:
    async with serve(case, cert, None) as port:
        t0 = time.monotonic()
        r = await check(spec_of(case, port))
        elapsed = time.monotonic() - t0
    assert not r.up
    assert "timeout" in r.detail, r.detail
    assert elapsed < TIMEOUT + 0.5


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_checks_service_port_closed(case: Case) -> None:
    port = closed_port(socket.SOCK_DGRAM if case.udp else socket.SOCK_STREAM)
    r = await check(spec_of(case, port))
    assert not r.up
    assert "Refused" in r.detail, r.detail


async def test_checks_dns_over_tcp_and_ptr() -> None:
    import dns.message
    import dns.rrset

    from tests.checks.protocols import Reader, Writer

    async def handler(reader: Reader, writer: Writer) -> None:
        n = int.from_bytes(await reader.readexactly(2), "big")
        q = dns.message.from_wire(await reader.readexactly(n))
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "PTR", "web1.example.org."))
        wire = r.to_wire()
        writer.write(len(wire).to_bytes(2, "big") + wire)

    async with tcp_server(handler) as port:
        r = await check(make_spec("dns", port, request="/192.0.2.1", receive="web1"))
    assert r.up, r.detail


async def test_checks_dns_empty_receive_never_matches() -> None:
    async with udp_server(p.dns_udp(True)) as port:
        r = await check(make_spec("dns", port, protocol=Protocol.UDP, request="/www.example.org"))
    assert not r.up


async def test_checks_sql_needs_login_and_request() -> None:
    async with tcp_server(p.pgsql(True)) as port:
        r = await check(make_spec("pgsql", port, request="/SELECT 1"))
    assert not r.up
    assert "login and a request" in r.detail


# -- external / external-perl ---------------------------------------------------------------


def _script(tmp_path: Path, body: str, name: str = "check.sh") -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


_ARGS_CHECK = (
    '#!/bin/sh\n[ "$1 $2 $3 $4" = "10.0.0.1 8080 127.0.0.1 8080" ] && exit 0\necho "args $*"; exit 3\n'
)


@pytest.mark.parametrize(("body", "up", "expect"), [
    (_ARGS_CHECK, True, "exit 0"),
    ("#!/bin/sh\necho unhealthy; exit 2\n", False, "exit 2: unhealthy"),
    ("#!/bin/sh\nexec sleep 30\n", False, "timeout"),
])  # fmt: skip
async def test_checks_external(tmp_path: Path, body: str, up: bool, expect: str) -> None:
    spec = make_spec(port=8080, checktype="external", checkcommand=_script(tmp_path, body))
    t0 = time.monotonic()
    r = await check(spec)
    assert r.up is up, r.detail
    assert expect in r.detail
    assert time.monotonic() - t0 < TIMEOUT + 0.5


async def test_checks_external_command_missing(tmp_path: Path) -> None:
    r = await check(make_spec(port=8080, checktype="external", checkcommand=str(tmp_path / "absent")))
    assert not r.up
    assert "cannot run" in r.detail


@pytest.mark.skipif(not os.path.exists("/usr/bin/perl"), reason="no perl")
@pytest.mark.parametrize(
    ("body", "up"), [("exit 0 if $ARGV[2] eq '127.0.0.1'; exit 1;\n", True), ("exit 1;\n", False)]
)
async def test_checks_external_perl(tmp_path: Path, body: str, up: bool) -> None:
    path = tmp_path / "check.pl"
    path.write_text(body)
    r = await check(make_spec(port=8080, checktype="external-perl", checkcommand=str(path)))
    assert r.up is up, r.detail


# -- ping -----------------------------------------------------------------------------------


async def test_checks_ping_healthy_loopback() -> None:
    from lvs_events.agent.checks.ping import pinger_for

    if pinger_for(socket.AF_INET) is None and shutil.which("ping") is None:
        pytest.skip("no ICMP socket permitted and no ping program")
    r = await check(make_spec(port=0, checktype="ping"))
    assert r.up, r.detail


_UNREACH = b"\x03\x03\x00\x00\x00\x00\x00\x00"


def _fake_pinger(reply: Callable[[bytes], bytes | None]) -> tuple[Pinger, socket.socket]:
    """A pinger over a socket pair: ``reply(request)`` is what the "network" answers."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(data: bytes, addr: tuple[str, int]) -> None:
        out = reply(data)
        if out is not None:
            theirs.send(out)

    return Pinger(mine, "dgram", socket.AF_INET, send=send), theirs


@pytest.mark.parametrize(("name", "reply", "up", "expect"), [
    ("echo reply", lambda req: b"\x00\x00\x00\x00" + req[4:], True, "echo reply"),
    ("answers wrong", lambda req: b"\x00\x00\x00\x00" + req[4:6] + b"\xff\xff", False, "no echo reply"),
    ("hangs", lambda req: None, False, "no echo reply"),
    ("unreachable", lambda req: _UNREACH + bytes([0x45]) + b"\x00" * 19 + req[:8], False, "unreachable"),
])  # fmt: skip
async def test_checks_ping_replies(
    name: str, reply: Callable[[bytes], bytes | None], up: bool, expect: str
) -> None:
    pinger, other = _fake_pinger(reply)
    try:
        t0 = time.monotonic()
        spec = make_spec(port=0, checktype="ping", timeout=0.2, checkcount=2)
        try:
            r = await ping(spec, pinger)
        except Exception as e:
            r = None
            detail = str(e)
        else:
            detail = r.detail
        assert (r is not None and r.up) is up, detail
        assert expect in detail
        assert time.monotonic() - t0 < 0.2 * 2 + 0.3
    finally:
        pinger.close()
        other.close()


def test_checks_echo_request_checksum() -> None:
    from lvs_events.agent.checks.ping import checksum

    pkt = echo_request(socket.AF_INET, 0x1234, 7)
    assert checksum(pkt) == 0


async def test_checks_udp_connect_is_a_ping() -> None:
    from lvs_events.agent.checks.probes import plan

    spec = make_spec(port=53, checktype="connect", protocol=Protocol.UDP, checkcount=2)
    probe, timeout, kind = plan(spec, False)
    assert kind == "connect"
    assert timeout == 2 * TIMEOUT
    assert probe.__name__ == "_ping"
