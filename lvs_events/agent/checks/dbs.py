"""SQL negotiate checks: ``mysql``, ``pgsql`` (a query answering rows) and ``oracle`` (listener).

ldirectord runs ``request`` (an SQL ``SELECT``; leading ``/`` removed) through DBI after logging
in with ``login`` / ``passwd`` to ``database``; up when it returns one or more rows. Both
``login`` and ``request`` are required (down otherwise, as ldirectord). Small wire clients:

* **pgsql**: protocol 3.0 startup, cleartext / MD5 / SCRAM-SHA-256 authentication, one simple
  ``Query``; the ``DataRow`` messages are counted;
* **mysql**: handshake v10, ``mysql_native_password`` or ``caching_sha2_password`` (fast path;
  a server asking for full authentication, which needs TLS or RSA, is reported down), one
  ``COM_QUERY``; the rows are counted;
* **oracle**: no SQL is run: the TNS listener is asked ``(CONNECT_DATA=(COMMAND=ping))`` as
  ``tnsping`` does and must answer without an error. (Running the query would need the Oracle
  client protocol beyond the listener; see docs/health-checks.md.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import struct

from lvs_events.agent.checks.base import Down, Result, close_writer, open_tcp
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["check_mysql", "check_oracle", "check_pgsql", "tns_connect"]


def _query(spec: CheckSpec) -> str:
    query = spec.request[1:] if spec.request.startswith("/") else spec.request
    if not spec.login or not query:
        raise Down("a login and a request (SQL query) are required")
    return query


# -- PostgreSQL ------------------------------------------------------------------------------


async def _pg_read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack("!I", head[1:])[0]
    if length > 1 << 24:
        raise Down("PostgreSQL message too large")
    return kind, await reader.readexactly(length - 4)


def _pg_msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _pg_error(body: bytes) -> str:
    fields = dict((f[:1], f[1:].decode("utf-8", "replace")) for f in body.split(b"\x00") if f)
    return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '')}: {fields.get(b'M', '')}"


async def _pg_scram(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str) -> None:
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    writer.write(_pg_msg(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!I", len(first)) + first))
    kind, body = await _pg_read(reader)
    if kind != b"R" or struct.unpack("!I", body[:4])[0] != 11:
        raise Down("unexpected SCRAM server-first")
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise Down("SCRAM nonce mismatch")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final_bare = f"c=biws,r={attrs['r']}"
    auth = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    writer.write(_pg_msg(b"p", f"{final_bare},p={proof}".encode()))
    kind, body = await _pg_read(reader)
    if kind == b"E":
        raise Down(_pg_error(body))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expect = base64.b64encode(hmac.digest(server_key, auth, "sha256")).decode()
    if kind != b"R" or body[4:].decode() != f"v={expect}":
        raise Down("SCRAM server signature mismatch")


async def check_pgsql(spec: CheckSpec) -> Result:  # noqa: PLR0912 -- one protocol exchange
    query = _query(spec)
    reader, writer = await open_tcp(spec)
    try:
        params = f"user\x00{spec.login}\x00database\x00{spec.database or spec.login}\x00\x00".encode()
        body = struct.pack("!I", 196608) + params
        writer.write(struct.pack("!I", len(body) + 4) + body)
        while True:
            kind, body = await _pg_read(reader)
            if kind == b"E":
                raise Down(_pg_error(body))
            if kind != b"R":
                raise Down(f"unexpected PostgreSQL message {kind!r}")
            code = struct.unpack("!I", body[:4])[0]
            if code == 0:
                break
            if code == 3:
                writer.write(_pg_msg(b"p", spec.passwd.encode() + b"\x00"))
            elif code == 5:
                inner = hashlib.md5((spec.passwd + spec.login).encode(), usedforsecurity=False).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8], usedforsecurity=False).hexdigest()
                writer.write(_pg_msg(b"p", b"md5" + outer.encode() + b"\x00"))
            elif code == 10:
                if b"SCRAM-SHA-256\x00" not in body[4:]:
                    raise Down("no supported SASL mechanism")
                await _pg_scram(reader, writer, spec.passwd)
            else:
                raise Down(f"unsupported PostgreSQL authentication {code}")
        while kind != b"Z":  # parameter status, backend key, ready for query
            kind, body = await _pg_read(reader)
            if kind == b"E":
                raise Down(_pg_error(body))
        writer.write(_pg_msg(b"Q", query.encode() + b"\x00"))
        rows, error = 0, ""
        while True:
            kind, body = await _pg_read(reader)
            if kind == b"D":
                rows += 1
            elif kind == b"E":
                error = _pg_error(body)
            elif kind == b"Z":
                break
        writer.write(_pg_msg(b"X", b""))
        if error:
            raise Down(error)
        if rows < 1:
            raise Down("the query returned no rows")
        return Result(True, f"{rows} rows")
    finally:
        await close_writer(writer)


# -- MySQL -----------------------------------------------------------------------------------


async def _my_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(4)
    length = int.from_bytes(head[:3], "little")
    return head[3], await reader.readexactly(length)


def _my_packet(seq: int, body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + bytes([seq & 0xFF]) + body


def _my_error(body: bytes) -> str:
    code = struct.unpack("<H", body[1:3])[0]
    text = body[9:] if body[3:4] == b"#" else body[3:]
    return f"MySQL error {code}: {text.decode('utf-8', 'replace')}"


def _scramble(plugin: str, password: str, salt: bytes) -> bytes:
    if not password:
        return b""
    pw = password.encode()
    if plugin == "caching_sha2_password":
        a = hashlib.sha256(pw).digest()
        b = hashlib.sha256(hashlib.sha256(a).digest() + salt).digest()
        return bytes(x ^ y for x, y in zip(a, b, strict=True))
    a = hashlib.sha1(pw, usedforsecurity=False).digest()
    b = hashlib.sha1(salt + hashlib.sha1(a, usedforsecurity=False).digest(), usedforsecurity=False).digest()
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _lenenc(data: bytes, i: int) -> tuple[int, int]:
    first = data[i]
    if first < 0xFB:
        return first, i + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    return int.from_bytes(data[i + 1 : i + 1 + size], "little"), i + 1 + size


async def _my_auth(  # noqa: PLR0912 -- one protocol exchange
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: CheckSpec
) -> None:
    seq, hello = await _my_read(reader)
    if hello[:1] == b"\xff":
        raise Down(_my_error(hello))
    if hello[0] != 10:
        raise Down(f"unsupported MySQL protocol {hello[0]}")
    i = hello.index(b"\x00", 1) + 1 + 4  # server version, thread id
    salt = hello[i : i + 8]
    i += 9
    caps = struct.unpack("<H", hello[i : i + 2])[0]
    i += 2
    plugin = "mysql_native_password"
    if len(hello) > i + 16:
        caps |= struct.unpack("<H", hello[i + 3 : i + 5])[0] << 16
        salt_len = hello[i + 5]
        i += 16
        rest = max(13, salt_len - 8)
        salt += hello[i : i + rest].rstrip(b"\x00")
        i += rest
        if caps & 0x80000:
            plugin = hello[i:].split(b"\x00", 1)[0].decode() or plugin
    flags = 0x00000200 | 0x00008000 | 0x00080000  # PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH
    if spec.database:
        flags |= 0x00000008  # CONNECT_WITH_DB
    auth = _scramble(plugin, spec.passwd, salt[:20])
    body = struct.pack("<IIB23x", flags, 1 << 24, 33) + spec.login.encode() + b"\x00"
    body += bytes([len(auth)]) + auth
    if spec.database:
        body += spec.database.encode() + b"\x00"
    body += plugin.encode() + b"\x00"
    writer.write(_my_packet(seq + 1, body))
    while True:
        seq, reply = await _my_read(reader)
        if reply[:1] == b"\x00":
            return
        if reply[:1] == b"\xff":
            raise Down(_my_error(reply))
        if reply[:1] == b"\xfe":  # auth switch
            plugin = reply[1:].split(b"\x00", 1)[0].decode()
            salt = reply[len(plugin) + 2 :].rstrip(b"\x00")
            writer.write(_my_packet(seq + 1, _scramble(plugin, spec.passwd, salt[:20])))
        elif reply[:2] == b"\x01\x03":  # caching_sha2 fast auth success; OK follows
            continue
        elif reply[:2] == b"\x01\x04":
            raise Down("caching_sha2_password full authentication (TLS/RSA) is not supported")
        else:
            raise Down(f"unexpected MySQL auth reply {reply[:1]!r}")


async def check_mysql(spec: CheckSpec) -> Result:
    query = _query(spec)
    reader, writer = await open_tcp(spec)
    try:
        await _my_auth(reader, writer, spec)
        writer.write(_my_packet(0, b"\x03" + query.encode()))
        _, first = await _my_read(reader)
        if first[:1] == b"\xff":
            raise Down(_my_error(first))
        if first[:1] == b"\x00":
            raise Down("the query returned no result set")
        columns, _ = _lenenc(first, 0)
        for _ in range(columns):
            await _my_read(reader)
        _, pkt = await _my_read(reader)
        if pkt[:1] != b"\xfe":  # EOF after the column definitions (no CLIENT_DEPRECATE_EOF)
            raise Down("malformed result set")
        rows = 0
        while True:
            _, pkt = await _my_read(reader)
            if pkt[:1] == b"\xfe" and len(pkt) < 9:
                break
            if pkt[:1] == b"\xff":
                raise Down(_my_error(pkt))
            rows += 1
        writer.write(_my_packet(0, b"\x01"))  # COM_QUIT
        if rows < 1:
            raise Down("the query returned no rows")
        return Result(True, f"{rows} rows")
    finally:
        await close_writer(writer)


# -- Oracle ----------------------------------------------------------------------------------


def tns_connect(data: str) -> bytes:
    payload = data.encode()
    header_len = 58
    body = struct.pack(
        "!HHHHHHHHHHIHHII",
        0x013A, 0x012C, 0, 0x7FFF, 0x7F08, 0, 1,  # versions, options, SDU, TDU, NT caps, line
        len(payload), header_len, 0, 0, 0, 0, 0, 0,  # data length/offset, max data, flags
    )  # fmt: skip
    packet = body + b"\x00" * (header_len - 8 - len(body)) + payload
    return struct.pack("!HHBBH", len(packet) + 8, 0, 1, 0, 0) + packet


_ERR = re.compile(r"\(ERR=(\d+)\)")


async def check_oracle(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec)
    try:
        writer.write(tns_connect("(CONNECT_DATA=(COMMAND=ping))"))
        await writer.drain()
        head = await reader.readexactly(8)
        length, _, kind = struct.unpack("!HHB", head[:5])
        body = await reader.readexactly(max(0, length - 8))
        text = body.decode("latin-1")
        err = _ERR.search(text)
        if kind in (2, 4) and (err is None or err.group(1) == "0"):  # ACCEPT, or REFUSE with ERR=0
            return Result(True, "TNS listener answered" + (f" {err.group(0)}" if err else ""))
        raise Down(f"TNS packet type {kind}" + (f" {err.group(0)}" if err else ""))
    finally:
        await close_writer(writer)
