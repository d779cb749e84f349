"""Protocol-level test servers: just enough of each protocol to answer a check, well or wrong.

Each server is written from the protocol's specification, sharing no code with the probe it
answers, so that a probe's encoding or parsing bug cannot hide in a server with the same bug.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct

import dns.message
import dns.rrset

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


# -- LDAP (RFC 4511), its messages BER-encoded by hand (X.690: identifier octet, definite length,
# contents; a length under 128 is one octet, a longer one 0x80 | n followed by n octets).
# Identifiers: 0x30 SEQUENCE, 0x31 SET, 0x02 INTEGER, 0x04 OCTET STRING, 0x0A ENUMERATED,
# 0x01 BOOLEAN, [APPLICATION n] constructed 0x60 | n, primitive 0x40 | n, [n] primitive 0x80 | n.

#: An anonymous simple bind, LDAPv3, message 1: what the check sends without login and passwd.
LDAP_BIND_ANONYMOUS = bytes.fromhex(
    "30 0c"  # LDAPMessage, 12 octets
    " 02 01 01"  # messageID 1
    " 60 07"  # [APPLICATION 0] BindRequest, 7 octets
    " 02 01 03"  # version 3
    " 04 00"  # name: empty
    " 80 00"  # authentication: [0] simple, empty password
)
#: A base-object search of dc=example,dc=org for (objectClass=*), message 2.
LDAP_SEARCH_BASE = (
    bytes.fromhex(
        "30 36"  # LDAPMessage, 54 octets
        " 02 01 02"  # messageID 2
        " 63 31"  # [APPLICATION 3] SearchRequest, 49 octets
        " 04 11"  # baseObject, 17 octets:
    )
    + b"dc=example,dc=org"
    + bytes.fromhex(
        "0a 01 00"  # scope: baseObject (0)
        " 0a 01 00"  # derefAliases: neverDerefAliases (0)
        " 02 01 00"  # sizeLimit 0
        " 02 01 00"  # timeLimit 0
        " 01 01 00"  # typesOnly FALSE
        " 87 0b"  # filter: [7] present, 11 octets:
    )
    + b"objectClass"
    + bytes.fromhex("30 00")  # attributes: none (all user attributes)
)
#: An unbind, message 3.
LDAP_UNBIND = bytes.fromhex("30 05 02 01 03 42 00")  # [APPLICATION 2] UnbindRequest, NULL

# LDAPResult: resultCode, matchedDN "", diagnosticMessage "".
LDAP_BIND_SUCCESS = bytes.fromhex("30 0c 02 01 01 61 07 0a 01 00 04 00 04 00")  # [APPLICATION 1]
LDAP_BIND_INVALID_CREDENTIALS = bytes.fromhex("30 0c 02 01 01 61 07 0a 01 31 04 00 04 00")  # 49
LDAP_BIND_PROTOCOL_ERROR = bytes.fromhex("30 0c 02 01 01 61 07 0a 01 02 04 00 04 00")  # 2
LDAP_SEARCH_DONE = bytes.fromhex("30 0c 02 01 02 65 07 0a 01 00 04 00 04 00")  # [APPLICATION 5]
LDAP_SEARCH_DONE_PROTOCOL_ERROR = bytes.fromhex("30 0c 02 01 02 65 07 0a 01 02 04 00 04 00")
_DESCRIPTION = b"an entry longer than 127 bytes: its BER lengths take the long form"  # 66 octets
#: The entry dc=example,dc=org with three attributes, message 2: 163 octets, so the message, the
#: entry and its attribute list have long-form lengths.
LDAP_SEARCH_ENTRY = (
    bytes.fromhex("30 81 a0")  # LDAPMessage, 160 octets (one length octet follows 0x81)
    + bytes.fromhex("02 01 02")  # messageID 2
    + bytes.fromhex("64 81 9a")  # [APPLICATION 4] SearchResultEntry, 154 octets
    + bytes.fromhex("04 11") + b"dc=example,dc=org"  # objectName
    + bytes.fromhex("30 81 84")  # attributes, 132 octets, three PartialAttributes:
    + bytes.fromhex("30 1c 04 0b") + b"objectClass"  # 28 octets: type, 11
    + bytes.fromhex("31 0d 04 03") + b"top" + bytes.fromhex("04 06") + b"domain"  # vals, 13
    + bytes.fromhex("30 0f 04 02") + b"dc"  # 15 octets: type, 2
    + bytes.fromhex("31 09 04 07") + b"example"  # vals, 9
    + bytes.fromhex("30 53 04 0b") + b"description"  # 83 octets: type, 11
    + bytes.fromhex("31 44 04 42") + _DESCRIPTION  # vals, 68: one value, 66
)  # fmt: skip


async def ber_message(reader: Reader) -> bytes:
    """One whole BER element off the stream (identifier, length octets, contents)."""
    head = await reader.readexactly(2)
    long_form = head[1] & 0x80
    length = await reader.readexactly(head[1] & 0x7F) if long_form else b""
    n = int.from_bytes(length, "big") if long_form else head[1]
    return head + length + await reader.readexactly(n)


def ldap(good: bool):  # type: ignore[no-untyped-def]
    """Answers exactly the check's anonymous bind and its base search of dc=example,dc=org;
    any other request gets a protocolError (result 2), which the check reports."""

    async def handler(reader: Reader, writer: Writer) -> None:
        if await ber_message(reader) != LDAP_BIND_ANONYMOUS:
            writer.write(LDAP_BIND_PROTOCOL_ERROR)
            return
        writer.write(LDAP_BIND_SUCCESS if good else LDAP_BIND_INVALID_CREDENTIALS)
        if not good:
            return
        if await ber_message(reader) != LDAP_SEARCH_BASE:
            writer.write(LDAP_SEARCH_DONE_PROTOCOL_ERROR)
            return
        writer.write(LDAP_SEARCH_ENTRY + LDAP_SEARCH_DONE)
        await ber_message(reader)  # the unbind (test_checks_ldap_speaks_rfc4511 checks it)

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
