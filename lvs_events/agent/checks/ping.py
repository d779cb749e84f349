"""ICMP echo (``checktype = ping``, and ``connect`` on UDP services).

One shared socket per address family serves every ping in flight; replies are matched to the
waiting probe by sequence number (and, on raw sockets, by our identifier). The socket is, in
order of preference:

1. an unprivileged ICMP datagram socket (``SOCK_DGRAM``/``IPPROTO_ICMP``), allowed when the
   process's group is inside ``net.ipv4.ping_group_range``; the kernel sets the identifier and
   delivers only our replies;
2. a raw ICMP socket (needs ``CAP_NET_RAW``, e.g. root);
3. neither: the ``ping`` program, one subprocess per probe (``ping -n -c 1 -W <timeout>``).

Like ldirectord (``Net::Ping`` with ``checkcount`` attempts), a probe sends up to ``checkcount``
echo requests, each waiting ``checktimeout``; the first reply is a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import socket
import struct
from collections.abc import Callable
from typing import Final

from lvs_events.agent.checks.base import Down, Result, sockaddr
from lvs_events.agent.checks.spec import CheckSpec

__all__ = ["Pinger", "checksum", "echo_request", "ping", "pinger_for"]

ECHO_REQUEST: Final = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: Final = {socket.AF_INET: 0, socket.AF_INET6: 129}
UNREACHABLE: Final = {socket.AF_INET: 3, socket.AF_INET6: 1}
_PAYLOAD: Final = b"lvs-events-ping\x00" * 2


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int) -> bytes:
    kind = ECHO_REQUEST[socket.AddressFamily(family)]
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    csum = checksum(head + _PAYLOAD) if family == socket.AF_INET else 0  # the kernel does ICMPv6
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + _PAYLOAD


class Pinger:
    """Echo requests over one socket; ``kind`` is ``dgram`` or ``raw`` (tells how to parse)."""

    def __init__(
        self,
        sock: socket.socket,
        kind: str,
        family: socket.AddressFamily,
        *,
        send: Callable[[bytes, tuple[str, int]], object] | None = None,
    ) -> None:
        self.sock = sock
        self.kind = kind
        self.family = family
        self.ident = os.getpid() & 0xFFFF
        self._send = send or sock.sendto
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[str]] = {}
        # the loop reading the socket: a shared pinger outlives an event loop (one per
        # asyncio.run), and replies are read only by a reader on the loop that waits for them
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        sock.setblocking(False)

    def close(self) -> None:
        self._drop_reader()
        self.sock.close()

    def _drop_reader(self) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.sock.fileno())

    def _ensure_reader(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader_loop is not loop:
            self._drop_reader()
            loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reader_loop = loop

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: the matching probe times out
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """One received packet (with the IPv4 header on IPv4 raw sockets)."""
        if self.kind == "raw" and self.family == socket.AF_INET and data and data[0] >> 4 == 4:
            data = data[(data[0] & 0x0F) * 4 :]
        if len(data) < 8:
            return
        kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
        if kind == ECHO_REPLY[self.family]:
            if self.kind == "raw" and ident != self.ident:
                return
            self._resolve(seq, "")
        elif kind == UNREACHABLE[self.family]:
            inner = data[8:]
            if self.family == socket.AF_INET and inner and inner[0] >> 4 == 4:
                inner = inner[(inner[0] & 0x0F) * 4 :]
            elif self.family == socket.AF_INET6:
                inner = inner[40:]
            if len(inner) >= 8:
                _k, _c, _s, ident, seq = struct.unpack("!BBHHH", inner[:8])
                if self.kind == "raw" and ident != self.ident:
                    return
                self._resolve(seq, f"destination unreachable (code {_code})")

    def _resolve(self, seq: int, error: str) -> None:
        fut = self._waiting.get(seq)
        if fut is not None and not fut.done():
            fut.set_result(error)

    async def echo(self, address: str, wait: float) -> None:
        """One echo request; returns on a reply, raises :class:`Down` or ``TimeoutError``."""
        self._ensure_reader()
        seq = next(self._seq) & 0xFFFF
        while seq in self._waiting:
            seq = next(self._seq) & 0xFFFF
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        try:
            self._send(echo_request(self.family, self.ident, seq), sockaddr(address, 0)[1])
            async with asyncio.timeout(wait):
                error = await fut
        finally:
            del self._waiting[seq]
        if error:
            raise Down(error)


_pingers: dict[int, Pinger | None] = {}


def _open(family: socket.AddressFamily) -> Pinger | None:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    for kind, stype in (("dgram", socket.SOCK_DGRAM), ("raw", socket.SOCK_RAW)):
        try:
            sock = socket.socket(family, stype, proto)
        except OSError:
            continue
        return Pinger(sock, kind, family)
    return None


def pinger_for(family: socket.AddressFamily) -> Pinger | None:
    """The shared pinger of a family, or None when no ICMP socket can be opened here."""
    if family not in _pingers:
        _pingers[family] = _open(family)
    return _pingers[family]


async def _ping_binary(address: str, wait: float) -> None:
    exe = shutil.which("ping")
    if exe is None:
        raise Down("no ICMP socket permitted and no ping program")
    proc = await asyncio.create_subprocess_exec(
        exe, "-n", "-q", "-c", "1", "-W", str(max(1, math.ceil(wait))), address,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    if code != 0:
        raise TimeoutError(f"ping exit {code}")


async def ping(spec: CheckSpec, pinger: Pinger | None = None) -> Result:
    family = sockaddr(spec.address, 0)[0]
    p = pinger or pinger_for(family)
    last: BaseException | None = None
    for attempt in range(1, spec.checkcount + 1):
        try:
            if p is None:
                await _ping_binary(spec.address, spec.checktimeout)
            else:
                await p.echo(spec.address, spec.checktimeout)
        except (TimeoutError, OSError) as e:
            last = e
            continue
        return Result(True, "echo reply" + (f" (attempt {attempt})" if attempt > 1 else ""))
    if isinstance(last, OSError) and last.strerror:
        raise Down(f"no echo reply: {last.strerror}")
    raise Down(f"no echo reply in {spec.checkcount} x {spec.checktimeout:g}s")
