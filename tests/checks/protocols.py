"""Protocol-level test servers: just enough of each protocol to answer a check, well or wrong."""

from __future__ import annotations

import asyncio
import hashlib
import struct

import dns.message
import dns.rrset

from lvs_events.agent.checks.directory import ber, read_ber, split_ber

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def _line(reader: Reader) -> str:
    return (await reader.readline()).decode().rstrip("\r\n")


async def _say(writer: Writer, *lines: str) -> None:
    writer.write("".join(line + "\r\n" for line in lines).encode())
    await writer.drain()


def smtp(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        if not good:
            await _say(writer, "554 no SMTP service here")
            return
        await _say(writer, "220 mail.example ESMTP")
        while line := await _line(reader):
            if line.startswith("EHLO"):
                await _say(writer, "250-mail.example", "250 8BITMIME")
            elif line == "QUIT":
                await _say(writer, "221 bye")
                return

    return handler


def pop(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        await _say(writer, "+OK POP3 ready")
        while line := await _line(reader):
            if line.startswith("USER"):
                await _say(writer, "+OK")
            elif line.startswith("PASS"):
                await _say(writer, "+OK logged in" if good and line == "PASS secret" else "-ERR auth failed")
            elif line == "QUIT":
                await _say(writer, "+OK bye")
                return

    return handler


def imap(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        await _say(writer, "* OK IMAP4rev1 ready")
        while line := await _line(reader):
            tag, _, rest = line.partition(" ")
            if rest.startswith("LOGIN"):
                await _say(writer, f"{tag} OK logged in" if good else f"{tag} NO authentication failed")
            elif rest == "LOGOUT":
                await _say(writer, "* BYE", f"{tag} OK")
                return

    return handler


def nntp(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        await _say(writer, "200 news.example ready" if good else "502 no permission")
        await reader.read()

    return handler


def ftp(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        await _say(writer, "220 FTP ready")
        data_server: asyncio.Server | None = None
        conn: asyncio.Future[Writer] = asyncio.get_running_loop().create_future()

        async def data(r: Reader, w: Writer) -> None:
            conn.set_result(w)

        try:
            while line := await _line(reader):
                cmd = line.split(" ", 1)[0]
                if cmd == "USER":
                    await _say(writer, "331 password please")
                elif cmd == "PASS":
                    await _say(writer, "230 logged in")
                elif cmd in ("CWD", "TYPE"):
                    await _say(writer, "250 ok")
                elif cmd == "PASV":
                    data_server = await asyncio.start_server(data, "127.0.0.1", 0)
                    p = data_server.sockets[0].getsockname()[1]
                    await _say(writer, f"227 Entering Passive Mode (127,0,0,1,{p // 256},{p % 256})")
                elif cmd == "RETR":
                    await _say(writer, "150 sending")
                    w = await conn
                    w.write(b"status: healthy\n" if good else b"status: broken\n")
                    w.close()
                    await _say(writer, "226 done")
                elif cmd == "QUIT":
                    await _say(writer, "221 bye")
                    return
        finally:
            if data_server is not None:
                data_server.close()

    return handler


def ldap(good: bool):  # type: ignore[no-untyped-def]
    def msg(msgid: int, op: bytes) -> bytes:
        return ber(0x30, ber(0x02, bytes([msgid])) + op)

    def result(tag: int, code: int) -> bytes:
        return ber(tag, ber(0x0A, bytes([code])) + ber(0x04, b"") + ber(0x04, b""))

    async def handler(reader: Reader, writer: Writer) -> None:
        while True:
            _tag, body = await read_ber(reader)
            parts = split_ber(body)
            msgid, (optag, _op) = parts[0][1][0], parts[1]
            if optag == 0x60:
                writer.write(msg(msgid, result(0x61, 0 if good else 49)))
            elif optag == 0x63:
                entry = ber(0x64, ber(0x04, b"dc=example,dc=org") + ber(0x30, b""))
                writer.write(msg(msgid, entry) + msg(msgid, result(0x65, 0)))
            else:
                return
            await writer.drain()

    return handler


def mysql(good: bool):  # type: ignore[no-untyped-def]
    salt = b"abcdefgh" + b"ijklmnopqrst"

    def pkt(seq: int, body: bytes) -> bytes:
        return len(body).to_bytes(3, "little") + bytes([seq]) + body

    async def read(reader: Reader) -> tuple[int, bytes]:
        head = await reader.readexactly(4)
        return head[3], await reader.readexactly(int.from_bytes(head[:3], "little"))

    async def handler(reader: Reader, writer: Writer) -> None:
        caps = 0x00000200 | 0x00008000 | 0x00080000
        hello = (
            b"\x0a8.0.0-test\x00" + struct.pack("<I", 7) + salt[:8] + b"\x00"
            + struct.pack("<HBHH", caps & 0xFFFF, 33, 2, caps >> 16) + bytes([21]) + b"\x00" * 10
            + salt[8:] + b"\x00" + b"mysql_native_password\x00"
        )  # fmt: skip
        writer.write(pkt(0, hello))
        seq, auth = await read(reader)
        user_end = auth.index(b"\x00", 32)
        n = auth[user_end + 1]
        token = auth[user_end + 2 : user_end + 2 + n]
        a = hashlib.sha1(b"secret").digest()
        expect = bytes(
            x ^ y for x, y in zip(a, hashlib.sha1(salt + hashlib.sha1(a).digest()).digest(), strict=True)
        )
        if token != expect:
            writer.write(pkt(seq + 1, b"\xff\x15\x04#28000Access denied"))
            return
        writer.write(pkt(seq + 1, b"\x00\x00\x00\x02\x00\x00\x00"))
        await read(reader)
        if not good:
            writer.write(pkt(1, b"\xff\x7a\x04#42S02Table 'x' doesn't exist"))
            return
        col = b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"
        eof = b"\xfe\x00\x00\x02\x00"
        writer.write(pkt(1, b"\x01") + pkt(2, col) + pkt(3, eof) + pkt(4, b"\x011") + pkt(5, eof))
        await read(reader)

    return handler


def pgsql(good: bool):  # type: ignore[no-untyped-def]
    def m(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    async def read(reader: Reader) -> tuple[bytes, bytes]:
        head = await reader.readexactly(5)
        return head[:1], await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)

    async def handler(reader: Reader, writer: Writer) -> None:
        (n,) = struct.unpack("!I", await reader.readexactly(4))
        await reader.readexactly(n - 4)
        writer.write(m(b"R", struct.pack("!I", 3)))  # cleartext password
        _, pw = await read(reader)
        if pw != b"secret\x00":
            writer.write(m(b"E", b"SFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00"))
            return
        writer.write(m(b"R", struct.pack("!I", 0)) + m(b"S", b"server_version\x0015\x00") + m(b"Z", b"I"))
        await read(reader)
        if good:
            writer.write(
                m(b"T", struct.pack("!H", 1) + b"x\x00" + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0))
                + m(b"D", struct.pack("!HI", 1, 1) + b"1")
                + m(b"C", b"SELECT 1\x00")
                + m(b"Z", b"I")
            )
        else:
            writer.write(m(b"E", b"SERROR\x00C42P01\x00Mrelation does not exist\x00\x00") + m(b"Z", b"I"))
        await reader.read()

    return handler


def oracle(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        head = await reader.readexactly(8)
        await reader.readexactly(struct.unpack("!H", head[:2])[0] - 8)
        err = 0 if good else 12514
        text = f"(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR={err})(ALIAS=LISTENER))".encode()
        body = struct.pack("!BBH", 0, 0, len(text)) + text
        writer.write(struct.pack("!HHBBH", len(body) + 8, 0, 4, 0, 0) + body)
        await reader.read()

    return handler


def simpletcp(good: bool):  # type: ignore[no-untyped-def]
    async def handler(reader: Reader, writer: Writer) -> None:
        request = await reader.read()
        if request == b"PING\n":
            writer.write(b"banner\nPONG healthy\n" if good else b"banner\nERROR\n")

    return handler


def sip_udp(good: bool):  # type: ignore[no-untyped-def]
    def respond(data: bytes, addr: tuple[str, int]) -> bytes:
        assert data.startswith(b"OPTIONS sip:")
        status = b"SIP/2.0 200 OK" if good else b"SIP/2.0 503 Service Unavailable"
        return status + b"\r\nContent-Length: 0\r\n\r\n"

    return respond


def radius_udp(good: bool, secret: bytes = b"s3cret"):  # type: ignore[no-untyped-def]
    def respond(data: bytes, addr: tuple[str, int]) -> bytes:
        code = 2 if good else 3
        head = struct.pack("!BBH", code, data[1], 20)
        auth = hashlib.md5(head + data[4:20] + secret).digest()
        return head + auth

    return respond


def dns_udp(good: bool):  # type: ignore[no-untyped-def]
    def respond(data: bytes, addr: tuple[str, int]) -> bytes:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(
            dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1" if good else "192.0.2.99")
        )
        return r.to_wire()

    return respond


def silent_udp(data: bytes, addr: tuple[str, int]) -> None:
    return None
