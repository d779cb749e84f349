"""Line-protocol negotiate checks: smtp/submission, pop/pops, imap/imaps, nntp, ftp.

Small clients speaking just what ldirectord's Perl modules do for a check:

* **smtp, submission** (``Net::SMTP->new``): a 2xx greeting, ``EHLO`` (``HELO`` if refused)
  answered 2xx, ``QUIT``;
* **pop, pops** (``Mail::POP3Client``): a ``+OK`` greeting; with ``login``, ``USER``/``PASS``
  answered ``+OK``; ``QUIT``. ``pops`` is TLS from the first byte (not verified);
* **imap, imaps** (``Net::IMAP::Simple``): a ``* OK`` (or ``PREAUTH``) greeting; with ``login``,
  ``LOGIN`` answered ``OK``; ``LOGOUT``;
* **nntp**: the greeting's first bytes start with ``2``;
* **ftp** (``Net::FTP``): a 2xx greeting, ``USER``/``PASS`` (``anonymous`` by default), then, when
  ``receive`` is set, ``CWD /``, ``TYPE I``, ``PASV`` and ``RETR request``: up when the file's
  content matches ``receive``. Without ``receive`` a successful login is up (ldirectord matches
  an empty Perl pattern, whose meaning depends on the previous match).
"""

from __future__ import annotations

import asyncio
import re
import socket

from lvs_events.agent.checks.base import MAX_BODY, Down, Result, close_writer, open_tcp, read_line
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["check_ftp", "check_imap", "check_nntp", "check_pop", "check_smtp"]


async def _reply(reader: asyncio.StreamReader, what: str) -> tuple[int, str]:
    """An SMTP/FTP style reply (``NNN-`` continuation lines, then ``NNN text``)."""
    lines: list[str] = []
    while True:
        line = await read_line(reader, what)
        lines.append(line)
        if len(line) < 3 or not line[:3].isdigit():
            raise Down(f"{what}: not a reply: {line[:80]!r}")
        if len(line) == 3 or line[3] != "-":
            return int(line[:3]), line


async def _send(writer: asyncio.StreamWriter, line: str) -> None:
    writer.write(line.encode("utf-8") + b"\r\n")
    await writer.drain()


async def check_smtp(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec)
    try:
        code, greeting = await _reply(reader, "greeting")
        if code // 100 != 2:
            raise Down(greeting[:120])
        hostname = socket.gethostname() or "localhost.localdomain"
        await _send(writer, f"EHLO {hostname}")
        code, text = await _reply(reader, "EHLO reply")
        if code // 100 != 2:
            await _send(writer, f"HELO {hostname}")
            code, text = await _reply(reader, "HELO reply")
            if code // 100 != 2:
                raise Down(f"HELO refused: {text[:120]}")
        await _send(writer, "QUIT")
        return Result(True, greeting[:120])
    finally:
        await close_writer(writer)


async def check_pop(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec, tls=spec.service == "pops")
    try:
        greeting = await read_line(reader, "greeting")
        if not greeting.startswith("+OK"):
            raise Down(greeting[:120])
        if spec.login:
            await _send(writer, f"USER {spec.login}")
            line = await read_line(reader, "USER reply")
            if not line.startswith("+OK"):
                raise Down(f"USER refused: {line[:120]}")
            await _send(writer, f"PASS {spec.passwd}")
            line = await read_line(reader, "PASS reply")
            if not line.startswith("+OK"):
                raise Down(f"login failed: {line[:120]}")
        await _send(writer, "QUIT")
        return Result(True, greeting[:120])
    finally:
        await close_writer(writer)


def _imap_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def check_imap(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec, tls=spec.service == "imaps")
    try:
        greeting = await read_line(reader, "greeting")
        if not (greeting.startswith("* OK") or greeting.startswith("* PREAUTH")):
            raise Down(greeting[:120])
        if spec.login:
            await _send(writer, f"a1 LOGIN {_imap_quote(spec.login)} {_imap_quote(spec.passwd)}")
            while True:
                line = await read_line(reader, "LOGIN reply")
                if line.startswith("a1 "):
                    break
            if not line.startswith("a1 OK"):
                raise Down(f"login failed: {line[:120]}")
        await _send(writer, "a2 LOGOUT")
        return Result(True, greeting[:120])
    finally:
        await close_writer(writer)


async def check_nntp(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec)
    try:
        data = await reader.read(64)
        text = data.decode("utf-8", "replace").strip()
        if not data.startswith(b"2"):
            raise Down(f"greeting {text[:80]!r}" if data else "connection closed without a greeting")
        return Result(True, text[:120])
    finally:
        await close_writer(writer)


_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


async def check_ftp(spec: CheckSpec) -> Result:
    reader, writer = await open_tcp(spec)
    try:
        code, greeting = await _reply(reader, "greeting")
        if code // 100 != 2:
            raise Down(greeting[:120])
        login = spec.login or "anonymous"
        await _send(writer, f"USER {login}")
        code, text = await _reply(reader, "USER reply")
        if code == 331:
            await _send(writer, f"PASS {spec.passwd or '-anonymous@'}")
            code, text = await _reply(reader, "PASS reply")
        if code // 100 != 2:
            raise Down(f"login failed: {text[:120]}")
        if not spec.receive:
            await _send(writer, "QUIT")
            return Result(True, f"logged in: {greeting[:100]}")
        for cmd in ("CWD /", "TYPE I"):
            await _send(writer, cmd)
            await _reply(reader, cmd)
        await _send(writer, "PASV")
        code, text = await _reply(reader, "PASV reply")
        m = _PASV.search(text)
        if code != 227 or m is None:
            raise Down(f"PASV refused: {text[:120]}")
        port = int(m.group(5)) * 256 + int(m.group(6))
        # connect the data channel to the real server (not to the address in the reply)
        dreader, dwriter = await asyncio.open_connection(spec.address, port)
        try:
            await _send(writer, f"RETR {spec.request}")
            code, text = await _reply(reader, "RETR reply")
            if code // 100 not in (1, 2):
                raise Down(f"RETR {spec.request}: {text[:120]}")
            buf = bytearray()
            while len(buf) < MAX_BODY:
                chunk = await dreader.read(65536)
                if not chunk:
                    break
                buf += chunk
            content = bytes(buf)
        finally:
            await close_writer(dwriter)
        body = content.decode("utf-8", "replace")
        if re.search(spec.receive, body) is None:
            raise Down(f"receive {spec.receive!r} not found in {spec.request}: {body[:80]!r}")
        await _send(writer, "QUIT")
        return Result(True, f"RETR {spec.request}: {len(content)} bytes")
    finally:
        await close_writer(writer)
