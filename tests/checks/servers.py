"""Loopback servers and spec builders for the check tests (127.0.0.0/8 only)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from lvs_events.agent.checks import Checker, CheckSpec, Result, spec_for
from lvs_events.agent.commands import CommandKind, Consent
from lvs_events.domain.config import CheckSettings, GlobalSettings, Protocol, RealServer, VirtualService

HOST = "127.0.0.1"
#: The timeout of checks that end on an answer or a refusal: generous, so that a loaded machine
#: cannot turn a healthy server's late answer into a timeout (nothing waits for it to run out).
TIMEOUT = 10.0
#: The timeout of checks of a server that never answers: they end at it, not before.
HUNG_TIMEOUT = 0.5
#: The margin a check of a hung server gets past its timeout before the test calls it unbounded:
#: wide for a loaded machine; a check not cut at its timeout runs far longer (a 30 s script, forever).
HUNG_MARGIN = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def make_spec(
    service: str = "none",
    port: int = 0,
    *,
    checktype: str = "negotiate",
    protocol: Protocol = Protocol.TCP,
    address: str = HOST,
    real_request: str | None = None,
    real_receive: str | None = None,
    timeout: float = TIMEOUT,
    fork: bool = False,
    **check: object,
) -> CheckSpec:
    """A spec for one real server at ``address:port`` (virtual 10.0.0.1:<port>)."""
    settings: dict[str, object] = {"checktimeout": timeout, "negotiatetimeout": timeout}
    settings.update(check)
    v = VirtualService(
        protocol=protocol,
        address="10.0.0.1",
        port=port,
        reals=(RealServer(address, port, request=real_request, receive=real_receive),),
        check=CheckSettings(checktype=checktype, service=service, **settings),  # type: ignore[arg-type]
    )
    return spec_for(v, v.reals[0], GlobalSettings(fork=fork))


class AllowAll:
    """A command policy allowing every command (these tests are about the probes themselves;
    the policy has its own tests in tests/agent/test_agent_consent*.py)."""

    def consent(self, kind: CommandKind, command: str) -> Consent:
        return Consent(True, "test")


async def check(spec: CheckSpec, *, negotiate: bool = False) -> Result:
    """One check of ``spec``, exactly as the scheduler runs it (timeout, error mapping)."""
    return await Checker("test", commands=AllowAll()).check_once(spec, negotiate)


async def check_hung(spec: CheckSpec, ends_at: float = HUNG_TIMEOUT) -> Result:
    """One check of a server that never answers: it must end at its timeout (``ends_at``, the
    spec's), neither before (a timeout counts the server's time, never less) nor unbounded after."""
    t0 = time.monotonic()
    r = await check(spec)
    elapsed = time.monotonic() - t0
    assert ends_at <= elapsed < ends_at + HUNG_MARGIN, (elapsed, r.detail)
    return r


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on HOST with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Handler, *, tls: ssl.SSLContext | None = None, host: str = HOST
) -> AsyncIterator[int]:
    """An asyncio TCP server running ``handler`` per connection; yields its port."""
    conns: set[asyncio.StreamWriter] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.add(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            conns.discard(writer)
            writer.close()

    server = await asyncio.start_server(wrapped, host, 0, ssl=tls)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for w in list(conns):
            w.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await server.wait_closed()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never answer, not even to an EOF (the test server closes it at the end)."""
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def udp_server(
    respond: Callable[[bytes, tuple[str, int]], bytes | None], host: str = HOST
) -> AsyncIterator[int]:
    """A UDP server answering each datagram with ``respond(data, addr)`` (None: no answer)."""

    class P(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]  # a datagram transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            out = respond(data, addr)
            if out is not None:
                self.transport.sendto(out, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(P, local_addr=(host, 0))
    port: int = transport.get_extra_info("sockname")[1]
    try:
        yield port
    finally:
        transport.close()


@dataclass(frozen=True)
class Cert:
    certfile: Path
    keyfile: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx


def make_cert(directory: Path) -> Cert:
    """A self-signed certificate for ``localhost`` / 127.0.0.1 (the checks do not verify it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Cert(certfile, keyfile)
