"""radius, sip and simpletcp negotiate checks (datagram or stream, as ldirectord opens them).

* **radius** (``Authen::Radius->check_pwd``): an Access-Request with ``User-Name`` = ``login``
  and ``User-Password`` = ``passwd`` hidden with ``secret`` (RFC 2865), over UDP; up on an
  Access-Accept whose Response Authenticator verifies, down on Access-Reject or silence;
* **sip**: ``OPTIONS sip:<login>`` over the virtual service's protocol (UDP or TCP); up when
  the status line starts with ``SIP/2.0 200 OK``. ``login`` defaults to ``ldirectord@<hostname>``;
* **simpletcp**: the request (``\\n`` becomes a newline) is sent, the write side shut, and the
  answer read line by line until one matches ``receive`` (on a UDP service: one datagram).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import socket
import struct
from collections.abc import Callable

from lvs_events.agent.checks.base import MAX_BODY, Down, Result, close_writer, open_tcp, sockaddr
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["check_radius", "check_simpletcp", "check_sip", "datagram", "radius_request"]

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT = 1, 2, 3


class _Once(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def datagram(
    spec: CheckSpec, payload: bytes | None, build: Callable[[tuple[str, int]], bytes] | None = None
) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram to the check port and wait for the first answer (connected socket:
    an ICMP port unreachable surfaces as ``ConnectionRefusedError``)."""
    family, addr = sockaddr(spec.address, spec.port)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Once, remote_addr=addr, family=family)
    try:
        local = transport.get_extra_info("sockname")
        data = payload if payload is not None else b""
        if build is not None:
            data = build(local)
        transport.sendto(data)
        return await proto.answer, local
    finally:
        transport.close()


def _hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    padded = password + b"\x00" * (-len(password) % 16 or (16 if not password else 0))
    out = bytearray()
    last = authenticator
    for i in range(0, len(padded), 16):
        digest = hashlib.md5(secret + last, usedforsecurity=False).digest()
        block = bytes(a ^ b for a, b in zip(padded[i : i + 16], digest, strict=True))
        out += block
        last = block
    return bytes(out)


def radius_request(ident: int, authenticator: bytes, login: str, passwd: str, secret: str) -> bytes:
    attrs = bytearray()
    user = login.encode()
    attrs += struct.pack("!BB", 1, len(user) + 2) + user
    hidden = _hide_password(passwd.encode(), secret.encode(), authenticator)
    attrs += struct.pack("!BB", 2, len(hidden) + 2) + hidden
    attrs += struct.pack("!BBI", 5, 6, 0)  # NAS-Port 0, as Authen::Radius sends one
    return struct.pack("!BBH", ACCESS_REQUEST, ident, 20 + len(attrs)) + authenticator + bytes(attrs)


async def check_radius(spec: CheckSpec) -> Result:
    ident = secrets.randbelow(256)
    authenticator = os.urandom(16)
    packet = radius_request(ident, authenticator, spec.login, spec.passwd, spec.secret)
    answer, _ = await datagram(spec, packet)
    if len(answer) < 20:
        raise Down("short RADIUS answer")
    code, rid, length = struct.unpack("!BBH", answer[:4])
    if rid != ident or length > len(answer):
        raise Down("RADIUS answer does not match the request")
    expect = hashlib.md5(
        answer[:4] + authenticator + answer[20:length] + spec.secret.encode(), usedforsecurity=False
    ).digest()
    if answer[4:20] != expect:
        raise Down("RADIUS response authenticator mismatch (wrong secret?)")
    if code == ACCESS_ACCEPT:
        return Result(True, "Access-Accept")
    if code == ACCESS_REJECT:
        raise Down("Access-Reject")
    raise Down(f"RADIUS code {code}")


def _sip_request(spec: CheckSpec, local: tuple[str, int], transport: str) -> bytes:
    login = spec.login or f"ldirectord@{socket.gethostname()}"
    call_id = secrets.token_hex(8)
    host = f"[{local[0]}]" if ":" in local[0] else local[0]
    return (
        f"OPTIONS sip:{login} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:{login}>\r\n"
        f"From: <sip:{login}>;tag={secrets.token_hex(4)}\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 63104 OPTIONS\r\n"
        f"Contact: <sip:{login}>\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _sip_status(first: str) -> Result:
    if not first.startswith("SIP/2.0 200 OK"):
        raise Down(first[:120] if first else "no status line")
    return Result(True, first[:120])


async def check_sip(spec: CheckSpec) -> Result:
    if spec.protocol.value == "udp":
        answer, _ = await datagram(spec, None, build=lambda local: _sip_request(spec, local, "UDP"))
        return _sip_status(answer.decode("utf-8", "replace").split("\r\n", 1)[0].rstrip("\n"))
    reader, writer = await open_tcp(spec)
    try:
        local = writer.get_extra_info("sockname")
        writer.write(_sip_request(spec, (local[0], local[1]), "TCP"))
        await writer.drain()
        first = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
        return _sip_status(first)
    finally:
        await close_writer(writer)


def _simpletcp_request(spec: CheckSpec) -> bytes:
    return spec.request[1:].replace("\\n", "\n").encode() if spec.request else b""


async def check_simpletcp(spec: CheckSpec) -> Result:
    pattern = re.compile(spec.receive)
    if spec.protocol.value == "udp":
        answer, _ = await datagram(spec, _simpletcp_request(spec))
        for line in answer.decode("utf-8", "replace").splitlines():
            if pattern.search(line):
                return Result(True, line[:120])
        raise Down(f"receive {spec.receive!r} not found in {answer[:80]!r}")
    reader, writer = await open_tcp(spec)
    try:
        writer.write(_simpletcp_request(spec))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        seen = 0
        while seen < MAX_BODY:
            raw = await reader.readline()
            if not raw:
                break
            seen += len(raw)
            line = raw.decode("utf-8", "replace")
            if pattern.search(line):
                return Result(True, line.strip()[:120])
        raise Down(f"receive {spec.receive!r} not found")
    finally:
        await close_writer(writer)
