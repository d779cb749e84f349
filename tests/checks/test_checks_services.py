"""Every negotiate service (and ping/external): healthy, answers wrong, hangs, port closed.

Servers are protocol-level test servers on loopback (tests/checks/protocols.py): just enough
of each protocol to pass or fail a check, as a real server would answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lvs_events.agent.checks import CheckSpec, Down
from lvs_events.agent.checks import ping as ping_module
from lvs_events.agent.checks.ping import Pinger, checksum, echo_request, ping, pinger_for
from lvs_events.domain.config import Protocol
from tests.checks import protocols as p
from tests.checks.servers import (
    HOST,
    HUNG_MARGIN,
    HUNG_TIMEOUT,
    TIMEOUT,
    Cert,
    check,
    check_hung,
    closed_port,
    hang,
    make_spec,
    tcp_server,
    udp_server,
)


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


def spec_of(case: Case, port: int, timeout: float = TIMEOUT) -> CheckSpec:
    protocol = Protocol.UDP if case.udp else Protocol.TCP
    return make_spec(case.service, port, protocol=protocol, timeout=timeout, **case.settings)


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
        r = await check_hung(spec_of(case, port, HUNG_TIMEOUT))
    assert not r.up
    assert "timeout" in r.detail, r.detail


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


async def test_checks_ldap_speaks_rfc4511() -> None:
    """The check's three requests are the RFC 4511 messages written by hand in the test server,
    byte for byte, and it reads the entry's DN out of a reply with long-form lengths."""
    received: list[bytes] = []
    unbound = asyncio.Event()

    async def handler(reader: p.Reader, writer: p.Writer) -> None:
        received.append(await p.ber_message(reader))
        writer.write(p.LDAP_BIND_SUCCESS)
        received.append(await p.ber_message(reader))
        writer.write(p.LDAP_SEARCH_ENTRY + p.LDAP_SEARCH_DONE)
        received.append(await p.ber_message(reader))
        unbound.set()

    async with tcp_server(handler) as port:
        r = await check(make_spec("ldap", port, request="/dc=example,dc=org", receive="^dc=example,dc=org$"))
        async with asyncio.timeout(TIMEOUT):
            await unbound.wait()
    assert r.up, r.detail
    assert r.detail == "Success: dc=example,dc=org"
    assert received == [p.LDAP_BIND_ANONYMOUS, p.LDAP_SEARCH_BASE, p.LDAP_UNBIND]


async def test_checks_ldap_refused_request_is_down() -> None:
    """A bind the server does not accept as well-formed (protocolError) is a down verdict."""

    async def handler(reader: p.Reader, writer: p.Writer) -> None:
        await p.ber_message(reader)
        writer.write(p.LDAP_BIND_PROTOCOL_ERROR)

    async with tcp_server(handler) as port:
        r = await check(make_spec("ldap", port, request="/dc=example,dc=org"))
    assert not r.up
    assert r.detail == "negotiate: bind failed (result 2)"


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
])  # fmt: skip
async def test_checks_external(tmp_path: Path, body: str, up: bool, expect: str) -> None:
    r = await check(make_spec(port=8080, checktype="external", checkcommand=_script(tmp_path, body)))
    assert r.up is up, r.detail
    assert expect in r.detail


async def test_checks_external_hangs(tmp_path: Path) -> None:
    """A script that outlasts its timeout fails the check at the timeout and is terminated and
    reaped (the process is gone, not left a zombie)."""
    pidfile = tmp_path / "pid"
    command = _script(tmp_path, f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    spec = make_spec(port=8080, checktype="external", checkcommand=command, timeout=HUNG_TIMEOUT)
    r = await check_hung(spec)
    assert not r.up
    assert r.detail == f"external: timeout after {HUNG_TIMEOUT:g}s"
    pid = int(pidfile.read_text())
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                os.kill(pid, 0)  # succeeds for a live process and for an unreaped zombie
            except ProcessLookupError:
                break
            await asyncio.sleep(0.01)


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


def require_icmp() -> None:
    """Real ICMP echo is a prerequisite (skipped without it here; under CI a skip is a failure)."""
    if pinger_for(socket.AF_INET) is None and shutil.which("ping") is None:
        pytest.skip("no ICMP socket permitted (ping_group_range, CAP_NET_RAW) and no ping program")


def rfc1071_sum(data: bytes) -> int:
    """The Internet checksum's one's-complement sum of 16-bit words (RFC 1071, section 1),
    written here from the RFC, independently of the pinger's."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_checks_rfc1071_vectors() -> None:
    # RFC 1071, section 3 (numerical example): the words 0001 f203 f4f5 f6f7 sum to ddf2
    vector = bytes.fromhex("0001f203f4f5f6f7")
    assert rfc1071_sum(vector) == 0xDDF2
    assert checksum(vector) == 0xDDF2 ^ 0xFFFF  # the checksum is the sum's complement
    assert checksum(vector + struct.pack("!H", 0xDDF2 ^ 0xFFFF)) == 0  # a packet carrying it checks


def test_checks_echo_request_checksum() -> None:
    pkt = echo_request(socket.AF_INET, 0x1234, 7)
    assert pkt[:2] == b"\x08\x00"  # type 8 (echo request), code 0 (RFC 792)
    assert struct.unpack("!HH", pkt[4:8]) == (0x1234, 7)  # identifier, sequence number
    assert rfc1071_sum(pkt) == 0xFFFF  # a correct checksum makes the whole packet sum to -0


@dataclass
class Network:
    """The "network" of a pinger over a socket pair: keeps every packet the pinger sends, with
    its destination, and answers it with ``reply(packet)`` (None: no answer)."""

    reply: Callable[[bytes], bytes | None]
    sent: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)

    def echo_requests(self) -> list[tuple[tuple[str, int], int]]:
        """(destination, sequence number) of each packet sent, asserting it is a well-formed
        ICMP echo request (type 8, code 0, a correct checksum)."""
        out = []
        for pkt, addr in self.sent:
            assert pkt[:2] == b"\x08\x00", pkt.hex()
            assert rfc1071_sum(pkt) == 0xFFFF, pkt.hex()
            out.append((addr, struct.unpack("!H", pkt[6:8])[0]))
        return out


@contextlib.contextmanager
def fake_pinger(net: Network) -> Iterator[Pinger]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(data: bytes, addr: tuple[str, int]) -> None:
        net.sent.append((data, addr))
        out = net.reply(data)
        if out is not None:
            theirs.send(out)

    pinger = Pinger(mine, "dgram", socket.AF_INET, send=send)
    try:
        yield pinger
    finally:
        pinger.close()
        theirs.close()


def echo_reply(req: bytes) -> bytes:
    return b"\x00\x00" + req[2:]  # type 0 (echo reply), same identifier and sequence


def reply_to_another(req: bytes) -> bytes:
    return b"\x00\x00" + req[2:6] + b"\xff\xff" + req[8:]  # an echo reply, for another sequence


def no_reply(req: bytes) -> None:
    return None


def port_unreachable(req: bytes) -> bytes:
    # type 3 code 3, then the offending datagram: a 20-byte IPv4 header and the request's first 8
    return b"\x03\x03\x00\x00\x00\x00\x00\x00" + b"\x45" + b"\x00" * 19 + req[:8]


# an attempt answered (or refused) at once gets a timeout no loaded machine runs out of; one
# never answered usefully waits its whole timeout
_WAIT = 0.2


@pytest.mark.parametrize(("reply", "up", "expect", "requests"), [
    (echo_reply, True, "echo reply", 1),
    (reply_to_another, False, f"no echo reply in 2 x {_WAIT:g}s", 2),
    (no_reply, False, f"no echo reply in 2 x {_WAIT:g}s", 2),
    (port_unreachable, False, "destination unreachable (code 3)", 1),
], ids=["echo reply", "answers wrong", "hangs", "unreachable"])  # fmt: skip
async def test_checks_ping_replies(
    reply: Callable[[bytes], bytes | None], up: bool, expect: str, requests: int
) -> None:
    net = Network(reply)
    wait = _WAIT if requests == 2 else TIMEOUT
    spec = make_spec(port=0, checktype="ping", timeout=wait, checkcount=2)
    with fake_pinger(net) as pinger:
        t0 = time.monotonic()
        if up:
            detail = (await ping(spec, pinger)).detail
        else:
            with pytest.raises(Down) as down:
                await ping(spec, pinger)
            detail = str(down.value)
        elapsed = time.monotonic() - t0
    assert detail == expect
    # the evidence: one echo request to the real server per attempt, each with its own sequence
    sent = net.echo_requests()
    assert [addr for addr, _ in sent] == [(HOST, 0)] * requests
    assert len({seq for _, seq in sent}) == requests
    if requests == 2:  # no usable answer: each attempt waited its whole timeout, and no longer
        assert 2 * _WAIT <= elapsed < 2 * _WAIT + HUNG_MARGIN


def test_checks_a_pinger_serves_one_event_loop_after_another() -> None:
    """The pinger of a family is shared by the process; each ``asyncio.run`` has a loop of its
    own, and the replies must be read on the loop that waits for them."""
    net = Network(echo_reply)
    spec = make_spec(port=0, checktype="ping", timeout=TIMEOUT, checkcount=1)
    with fake_pinger(net) as pinger:
        details = [asyncio.run(ping(spec, pinger)).detail for _ in range(2)]
    assert details == ["echo reply", "echo reply"]
    assert len(net.echo_requests()) == 2


async def test_checks_ping_healthy_loopback() -> None:
    require_icmp()
    r = await check(make_spec(port=0, checktype="ping"))
    assert r.up, r.detail


@pytest.mark.parametrize(
    "reply", [echo_reply, no_reply, port_unreachable], ids=["echo reply", "hangs", "unreachable"]
)
async def test_checks_udp_connect_is_a_ping(
    reply: Callable[[bytes], bytes | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UDP service's connect check sends ICMP echo requests to the real server (no datagram
    to its port) and comes to the verdict a ping check of it comes to, whatever the network
    answers."""
    seen: dict[str, tuple[bool, str, list[tuple[tuple[str, int], int]]]] = {}
    for checktype in ("ping", "connect"):
        net = Network(reply)
        with fake_pinger(net) as pinger:
            monkeypatch.setattr(ping_module, "pinger_for", lambda family, pinger=pinger: pinger)
            wait = _WAIT if reply is no_reply else TIMEOUT
            spec = make_spec(port=53, checktype=checktype, protocol=Protocol.UDP, timeout=wait, checkcount=2)
            r = await check(spec)
        # a down detail names the check ("ping: ...", "connect: ..."); a hung one may end on the
        # check's overall timeout or on the pings' own (the same 2 x _WAIT): both are timeouts
        detail = r.detail.removeprefix(f"{checktype}: ")
        if "timeout" in detail or "no echo reply" in detail:
            detail = "no answer in time"
        seen[checktype] = (r.up, detail, net.echo_requests())
    assert seen["connect"] == seen["ping"]
    up, _, sent = seen["connect"]
    assert up is (reply is echo_reply)
    assert sent
    assert all(addr == (HOST, 0) for addr, _ in sent)


async def test_checks_udp_connect_pings_the_real_server() -> None:
    """With the real ICMP: a host that answers pings is up for a UDP connect check although
    nothing listens on the UDP port (a datagram to it is refused); a destination the kernel will
    not ping (the limited broadcast address, without SO_BROADCAST) is down, as its ping."""
    require_icmp()
    port = closed_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((HOST, port))
        s.send(b"probe")
        with pytest.raises(ConnectionRefusedError):
            s.recv(16)  # the port is closed: a UDP probe would call this server down
    for address, up in ((HOST, True), ("255.255.255.255", False)):
        pinged = await check(make_spec(port=port, address=address, checktype="ping", checkcount=1))
        connected = await check(
            make_spec(port=port, address=address, checktype="connect", protocol=Protocol.UDP, checkcount=1)
        )
        assert (pinged.up, connected.up) == (up, up), (address, pinged.detail, connected.detail)
