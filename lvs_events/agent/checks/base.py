"""Shared pieces of the probes: the verdict type, TCP/TLS connections, line reading.

A probe is ``async def probe(spec) -> Result``. It returns ``Result(False, detail)`` or raises
:class:`Down` for a failed check; anything else it raises (``OSError``, ``TimeoutError``,
``ssl.SSLError``, protocol parsing errors) is turned into a down verdict by the scheduler with
the exception as the detail. The scheduler bounds every probe by its overall timeout; the TCP
connect phase is additionally bounded by ``connecttimeout`` when the configuration sets it. Both
count the time the server had to answer, not the time the checker could not run
(:class:`lvs_events.agent.checks.admission.ServerTimeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Final

from lvs_events.agent.checks.admission import ServerTimeout
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["MAX_BODY", "Down", "Result", "close_writer", "insecure_tls", "open_tcp", "read_line", "sockaddr"]

#: Upper bound on what a probe reads from a server (responses, files, HTTP bodies).
MAX_BODY: Final = 1 << 20
MAX_LINE: Final = 8192


@dataclass(frozen=True, slots=True)
class Result:
    """A check's outcome. ``inconclusive``: it says nothing about the server (the checker was too
    late to tell, or ran out of its own resources); the verdict stays as it was."""

    up: bool
    detail: str = ""
    inconclusive: bool = False


class Down(Exception):
    """Raised by a probe: the server answered, but not as a healthy one."""


_TLS: ssl.SSLContext | None = None


def insecure_tls() -> ssl.SSLContext:
    """A client context that does not verify the certificate or the name, as ldirectord's checks."""
    global _TLS  # noqa: PLW0603 -- one context for the process (loading it is not free)
    if _TLS is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _TLS = ctx
    return _TLS


def sockaddr(address: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, (address.strip("[]"), port)


async def open_tcp(
    spec: CheckSpec, *, tls: bool = False, server_hostname: str | None = None, limit: int = 65536
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the spec's address and check port (TLS without verification when asked)."""
    family, addr = sockaddr(spec.address, spec.port)
    connect = asyncio.open_connection(
        addr[0],
        addr[1],
        family=family,
        ssl=insecure_tls() if tls else None,
        server_hostname=(server_hostname or addr[0]) if tls else None,
        limit=limit,
    )
    if spec.connecttimeout is not None:
        async with ServerTimeout(spec.connecttimeout):
            return await connect
    return await connect


async def read_line(reader: asyncio.StreamReader, what: str = "line") -> str:
    """One CRLF/LF-terminated line, decoded leniently; :class:`Down` on EOF."""
    raw = await reader.readline()
    if not raw:
        raise Down(f"connection closed before {what}")
    if len(raw) > MAX_LINE:
        raise Down(f"{what} too long")
    return raw.decode("utf-8", "replace").rstrip("\r\n")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close without waiting long for the peer (a hung server must not hold the probe)."""
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
