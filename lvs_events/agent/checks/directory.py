"""The ``ldap`` / ``ldaps`` negotiate check (ldirectord's ``check_ldap`` with ``Net::LDAP``).

A simple bind (anonymous unless ``login`` and ``passwd`` are set), then a base-scope search of
the request (without its leading ``/``) with filter ``(objectClass=*)``. Up when exactly one
entry comes back and, when ``receive`` is set, its DN matches it. ``ldaps`` is TLS from the first
byte (not verified). The few LDAP messages needed are BER-encoded here (RFC 4511).
"""

from __future__ import annotations

import asyncio
import re

from lvs_events.agent.checks.base import Down, Result, close_writer, open_tcp
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["ber", "check_ldap", "read_ber", "split_ber"]


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def ber(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _int(tag: int, value: int) -> bytes:
    return ber(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def split_ber(data: bytes) -> list[tuple[int, bytes]]:
    """The TLVs inside ``data`` (one level)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        tag = data[i]
        n = data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i : i + k], "big")
            i += k
        out.append((tag, data[i : i + n]))
        i += n
    return out


async def read_ber(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    n = head[1]
    if n & 0x80:
        n = int.from_bytes(await reader.readexactly(n & 0x7F), "big")
    if n > 1 << 20:
        raise Down("LDAP message too large")
    return head[0], await reader.readexactly(n)


def _message(msgid: int, op: bytes) -> bytes:
    return ber(0x30, _int(0x02, msgid) + op)


async def _response(reader: asyncio.StreamReader, msgid: int) -> tuple[int, bytes]:
    tag, body = await read_ber(reader)
    parts = split_ber(body)
    if tag != 0x30 or len(parts) < 2 or int.from_bytes(parts[0][1], "big") != msgid:
        raise Down("malformed LDAP response")
    return parts[1]


def _result_code(op: bytes) -> tuple[int, str]:
    fields = split_ber(op)
    code = int.from_bytes(fields[0][1], "big") if fields else -1
    message = fields[2][1].decode("utf-8", "replace") if len(fields) > 2 else ""
    return code, message


async def check_ldap(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec, tls=spec.service == "ldaps")
    try:
        login, passwd = (spec.login, spec.passwd) if spec.login and spec.passwd else ("", "")
        bind = ber(0x60, _int(0x02, 3) + ber(0x04, login.encode()) + ber(0x80, passwd.encode()))
        writer.write(_message(1, bind))
        await writer.drain()
        tag, op = await _response(reader, 1)
        code, text = _result_code(op)
        if tag != 0x61 or code != 0:
            raise Down(f"bind failed (result {code}{': ' + text if text else ''})")
        base = spec.request[1:] if spec.request.startswith("/") else spec.request
        search = ber(
            0x63,
            ber(0x04, base.encode())
            + ber(0x0A, b"\x00")  # scope base
            + ber(0x0A, b"\x00")  # never deref aliases
            + _int(0x02, 0)
            + _int(0x02, 0)
            + ber(0x01, b"\x00")
            + ber(0x87, b"objectClass")  # (objectClass=*)
            + ber(0x30, b""),
        )
        writer.write(_message(2, search))
        await writer.drain()
        dns: list[str] = []
        while True:
            tag, op = await _response(reader, 2)
            if tag == 0x64:  # SearchResultEntry
                fields = split_ber(op)
                dns.append(fields[0][1].decode("utf-8", "replace") if fields else "")
            elif tag == 0x65:  # SearchResultDone
                code, text = _result_code(op)
                break
        writer.write(_message(3, b"\x42\x00"))  # unbind
        if code != 0 or len(dns) != 1:
            raise Down(f"no answer received (result {code}, {len(dns)} entries)")
        if spec.receive and re.search(spec.receive, dns[0]) is None:
            raise Down(f"response mismatch: {dns[0]!r}")
        return Result(True, f"Success: {dns[0]}")
    finally:
        await close_writer(writer)
