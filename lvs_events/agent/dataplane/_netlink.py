"""IPVS over generic netlink: one pyroute2 socket, our own message codec.

pyroute2 (pinned ``pyroute2==0.9.7``, the ``kernel`` extra) opens and binds the generic netlink
socket and resolves the ``IPVS`` family. The IPVS messages themselves are encoded and decoded
here, with ``struct``, for two reasons:

* correctness -- pyroute2 0.9.7's IPVS helpers are wrong in ways that matter to a dataplane:
  ``service("update")`` / ``dest("update")`` send ``IPVS_CMD_DEL_*`` (they delete);
  ``IPVSDest`` fills unset attributes from defaults (``fwd_method=3``, thresholds 0), so a
  ``dest("set")`` with only a weight turns a masq or ipip server into direct routing and clears its
  thresholds; ``IPVSDest.from_message`` keeps that default ``fwd_method`` instead of the kernel's;
  and ``IPVS_SVC_ATTR_NETMASK`` is declared ``ip4addr``, so an IPv6 service's netmask (a prefix
  length) can be neither sent nor read. Here every ``SET`` carries the full attribute set, the
  forwarding method is read from the raw ``IPVS_DEST_ATTR_FWD_METHOD`` and the netmask is a u32.
* speed -- pyroute2's generic message machinery costs many times the kernel's own work per
  message; ``struct`` packing a small fraction of it (figures: ``docs/kernel-dataplane.md``).
  Writes go out in batches: up to ``batch_size`` requests in one ``send``, one ack each, refusals
  matched to their request by sequence number; the kernel processes a datagram's requests in
  order and does not stop at a refusal.

The pyroute2 message classes below mirror the kernel's attribute layout; the host tests decode
our encoded bytes with them as an independent check of the codec.

The socket is used from one thread only (the dataplane's single-thread executor). pyroute2 ships
no type information, so it is imported through ``importlib`` and confined to this module.
"""

from __future__ import annotations

import errno
import importlib
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lvs_events.domain.config import Family, Forwarding, Protocol
from lvs_events.domain.table import Dest, Service, sched_flag_bits, sched_flag_names

__all__ = [
    "IpvsSocket",
    "NetlinkFailure",
    "Request",
    "dest_request",
    "service_request",
]

# --- constants (include/uapi/linux/ip_vs.h) ---------------------------------------------------

IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_FLUSH = 17

IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008
IP_VS_SVC_F_SCHED2 = 0x0010
IP_VS_SVC_F_SCHED3 = 0x0020
_SCHED_MASK = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3

IP_VS_CONN_F_MASQ = 0
IP_VS_CONN_F_TUNNEL = 2
IP_VS_CONN_F_DROUTE = 3
IP_VS_CONN_F_FWD_MASK = 0x7

FWD_CODES = {Forwarding.MASQ: IP_VS_CONN_F_MASQ, Forwarding.IPIP: IP_VS_CONN_F_TUNNEL,
             Forwarding.GATE: IP_VS_CONN_F_DROUTE}  # fmt: skip
FWD_BY_CODE = {v: k for k, v in FWD_CODES.items()}

PROTO_NUMBERS = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NUMBERS.items()}

# --- pyroute2: the socket, and the kernel's message layout (used by the tests as a cross-check)

_nl: Any = importlib.import_module("pyroute2.netlink")
_genl: Any = importlib.import_module("pyroute2.netlink.generic")

NLM_F_REQUEST: int = _nl.NLM_F_REQUEST
NLM_F_ACK: int = _nl.NLM_F_ACK
NLM_F_DUMP: int = _nl.NLM_F_DUMP
NLM_F_CREATE: int = _nl.NLM_F_CREATE
NLM_F_EXCL: int = _nl.NLM_F_EXCL
NLM_F_REPLACE: int = _nl.NLM_F_REPLACE

_FLAGS_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_FLAGS_CHANGE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE
_FLAGS_REQ = NLM_F_REQUEST | NLM_F_ACK
_FLAGS_DUMP = NLM_F_REQUEST | NLM_F_DUMP

_svc_flags = type("flags", (_nl.nla,), {"fields": (("flags", "I"), ("mask", "I"))})

# Counters are not decoded ("none"): the table does not carry them and it saves time on dumps.
_service_nla = type(
    "service",
    (_nl.nla,),
    {
        "prefix": "IPVS_SVC_ATTR_",
        "flags": _svc_flags,
        "nla_map": (
            ("IPVS_SVC_ATTR_UNSPEC", "none"),
            ("IPVS_SVC_ATTR_AF", "uint16"),
            ("IPVS_SVC_ATTR_PROTOCOL", "uint16"),
            ("IPVS_SVC_ATTR_ADDR", "cdata"),  # struct nf_inet_addr, 16 bytes
            ("IPVS_SVC_ATTR_PORT", "be16"),
            ("IPVS_SVC_ATTR_FWMARK", "uint32"),
            ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_FLAGS", "flags"),
            ("IPVS_SVC_ATTR_TIMEOUT", "uint32"),
            ("IPVS_SVC_ATTR_NETMASK", "uint32"),  # IPv4: mask bytes as sent; IPv6: prefix length
            ("IPVS_SVC_ATTR_STATS", "none"),
            ("IPVS_SVC_ATTR_PE_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_STATS64", "none"),
        ),
    },
)

_dest_nla = type(
    "dest",
    (_nl.nla,),
    {
        "prefix": "IPVS_DEST_ATTR_",
        "nla_map": (
            ("IPVS_DEST_ATTR_UNSPEC", "none"),
            ("IPVS_DEST_ATTR_ADDR", "cdata"),
            ("IPVS_DEST_ATTR_PORT", "be16"),
            ("IPVS_DEST_ATTR_FWD_METHOD", "uint32"),
            ("IPVS_DEST_ATTR_WEIGHT", "uint32"),
            ("IPVS_DEST_ATTR_U_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_L_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_INACT_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_STATS", "none"),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16"),
            ("IPVS_DEST_ATTR_STATS64", "none"),
            ("IPVS_DEST_ATTR_TUN_TYPE", "uint8"),
            ("IPVS_DEST_ATTR_TUN_PORT", "be16"),
            ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16"),
        ),
    },
)

_ipvsmsg: Any = type(
    "ipvsmsg",
    (_nl.genlmsg,),
    {
        "prefix": "IPVS_CMD_ATTR_",
        "service": _service_nla,
        "dest": _dest_nla,
        "nla_map": (
            ("IPVS_CMD_ATTR_UNSPEC", "none"),
            ("IPVS_CMD_ATTR_SERVICE", "service"),
            ("IPVS_CMD_ATTR_DEST", "dest"),
            ("IPVS_CMD_ATTR_DAEMON", "hex"),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP", "hex"),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "hex"),
            ("IPVS_CMD_ATTR_TIMEOUT_UDP", "hex"),
        ),
    },
)


# --- attribute ids (include/uapi/linux/ip_vs.h) ------------------------------------------------

CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ADDR_FAMILY = 11

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_MULTI = 0x2
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NLA_TYPE_MASK = 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_GENL = struct.Struct("=BBH")  # genlmsghdr: cmd, version, reserved
_NLA = struct.Struct("=HH")  # nlattr: len, type
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")
_ERR = struct.Struct("=i")


def _attr(kind: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _u16(kind: int, v: int) -> bytes:
    return _attr(kind, _U16.pack(v))


def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, _U32.pack(v))


def _be16(kind: int, v: int) -> bytes:
    return _attr(kind, _BE16.pack(v))


def _attrs(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    end = len(data) if end is None else end
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        n, kind = _NLA.unpack_from(data, offset)
        if n < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + n]
        offset += (n + 3) & ~3
    return out


# --- values <-> attributes ----------------------------------------------------------------------


def _addr_bytes(address: str, family: Family) -> bytes:
    ip = ipaddress.ip_address(address)
    if (ip.version == 6) != (family is Family.INET6):
        raise ValueError(f"address {address} is not of family {family.name}")
    return ip.packed.ljust(16, b"\0")


def _addr_text(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def _netmask_u32(svc: Service) -> int:
    """IPVS_SVC_ATTR_NETMASK as the kernel reads it (``nla_get_be32``: the raw 4 bytes)."""
    if svc.family is Family.INET6:
        return 128 if svc.netmask is None else int(svc.netmask)
    mask = "255.255.255.255" if svc.netmask is None else svc.netmask
    return int.from_bytes(ipaddress.IPv4Address(mask).packed, sys.byteorder)


def _netmask_text(raw: int, family: int) -> str | None:
    if family == socket.AF_INET6:
        return None if raw in (0, 128) else str(raw)
    mask = str(ipaddress.IPv4Address(raw.to_bytes(4, sys.byteorder)))
    return None if mask in ("255.255.255.255", "0.0.0.0") else mask


def _service_flags(svc: Service) -> int:
    flags = sched_flag_bits(svc.schedflags)
    if svc.persistent is not None:
        flags |= IP_VS_SVC_F_PERSISTENT
    if svc.ops:
        flags |= IP_VS_SVC_F_ONEPACKET
    return flags


def service_key_attr(svc: Service) -> bytes:
    """``IPVS_CMD_ATTR_SERVICE`` naming the service (family + fwmark, or protocol/addr/port)."""
    return _attr(CMD_ATTR_SERVICE, _service_key(svc))


def _service_key(svc: Service) -> bytes:
    out = _u16(SVC_AF, int(svc.family))
    if svc.protocol is Protocol.FWM or svc.fwmark is not None:
        if not svc.fwmark:
            raise ValueError(f"service {svc.key}: a firewall-mark service needs a mark above 0")
        return out + _u32(SVC_FWMARK, svc.fwmark)
    if svc.address is None:
        raise ValueError(f"service {svc.key}: no address")
    return (
        out
        + _u16(SVC_PROTOCOL, PROTO_NUMBERS[svc.protocol])
        + _attr(SVC_ADDR, _addr_bytes(svc.address, svc.family))
        + _be16(SVC_PORT, svc.port)
    )


def _service_full(svc: Service) -> bytes:
    return _attr(
        CMD_ATTR_SERVICE,
        _service_key(svc)
        + _attr(SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
        + _attr(SVC_FLAGS, _FLAGS.pack(_service_flags(svc), 0xFFFFFFFF))
        + _u32(SVC_TIMEOUT, svc.persistent or 0)
        + _u32(SVC_NETMASK, _netmask_u32(svc)),
    )


def _dest(d: Dest, *, full: bool) -> bytes:
    dfam = Family.INET6 if ":" in d.address else Family.INET
    body = (
        _attr(DEST_ADDR, _addr_bytes(d.address, dfam))
        + _be16(DEST_PORT, d.port)
        + _u16(DEST_ADDR_FAMILY, int(dfam))
    )
    if full:  # always all of them: a SET resets what it leaves out (pyroute2 0.9.7 bug 2)
        body += (
            _u32(DEST_FWD_METHOD, FWD_CODES[d.forwarding])
            + _u32(DEST_WEIGHT, d.weight)
            + _u32(DEST_U_THRESH, d.upper_threshold)
            + _u32(DEST_L_THRESH, d.lower_threshold)
        )
    return _attr(CMD_ATTR_DEST, body)


@dataclass(frozen=True, slots=True)
class Request:
    """One IPVS request: command, netlink flags and the encoded attributes (after the headers)."""

    cmd: int
    flags: int
    payload: bytes

    def encode(self, seq: int, family_id: int) -> bytes:
        body = _GENL.pack(self.cmd, 1, 0) + self.payload
        return _HDR.pack(_HDR.size + len(body), family_id, self.flags, seq, 0) + body


def service_request(kind: str, svc: Service) -> Request:
    """``kind``: add, set, del."""
    if kind == "add":
        return Request(IPVS_CMD_NEW_SERVICE, _FLAGS_CREATE, _service_full(svc))
    if kind == "set":
        return Request(IPVS_CMD_SET_SERVICE, _FLAGS_CHANGE, _service_full(svc))
    if kind == "del":
        return Request(IPVS_CMD_DEL_SERVICE, _FLAGS_REQ, service_key_attr(svc))
    raise ValueError(f"unknown service request {kind!r}")


def dest_request(kind: str, svc: Service, d: Dest) -> Request:
    """``kind``: add, set, del."""
    if kind == "add":
        return Request(IPVS_CMD_NEW_DEST, _FLAGS_CREATE, service_key_attr(svc) + _dest(d, full=True))
    if kind == "set":
        return Request(IPVS_CMD_SET_DEST, _FLAGS_CHANGE, service_key_attr(svc) + _dest(d, full=True))
    if kind == "del":
        return Request(IPVS_CMD_DEL_DEST, _FLAGS_REQ, service_key_attr(svc) + _dest(d, full=False))
    raise ValueError(f"unknown destination request {kind!r}")


def _u(attrs: dict[int, bytes], kind: int, default: int = 0) -> int:
    raw = attrs.get(kind)
    if raw is None:
        return default
    if len(raw) >= 4:
        return int(_U32.unpack_from(raw)[0])
    return int(_U16.unpack_from(raw)[0])


def decode_service(payload: bytes) -> Service:
    """A service from the body of ``IPVS_CMD_ATTR_SERVICE`` (destinations empty)."""
    a = _attrs(payload)
    af = _u(a, SVC_AF)
    family = Family(af)
    fwmark = _u(a, SVC_FWMARK)
    raw_flags = a.get(SVC_FLAGS)
    flags = _FLAGS.unpack_from(raw_flags)[0] if raw_flags else 0
    scheduler = a.get(SVC_SCHED_NAME, b"").split(b"\0", 1)[0].decode()
    persistent = _u(a, SVC_TIMEOUT) if flags & IP_VS_SVC_F_PERSISTENT else None
    netmask = _netmask_text(_u(a, SVC_NETMASK), af) if persistent is not None else None
    common: dict[str, Any] = {
        "family": family,
        "scheduler": scheduler,
        "persistent": persistent,
        "netmask": netmask,
        "ops": bool(flags & IP_VS_SVC_F_ONEPACKET),
        "schedflags": sched_flag_names(scheduler, flags & _SCHED_MASK),
    }
    if fwmark:
        return Service(protocol=Protocol.FWM, address=None, port=0, fwmark=fwmark, **common)
    proto = _u(a, SVC_PROTOCOL)
    if proto not in PROTO_BY_NUMBER:
        raise ValueError(f"unsupported IPVS protocol number {proto}")
    return Service(
        protocol=PROTO_BY_NUMBER[proto],
        address=_addr_text(a.get(SVC_ADDR, b""), af),
        port=_BE16.unpack_from(a[SVC_PORT])[0],
        **common,
    )


def decode_dest(payload: bytes, svc_af: int) -> Dest:
    """A destination from the body of ``IPVS_CMD_ATTR_DEST``."""
    a = _attrs(payload)
    af = _u(a, DEST_ADDR_FAMILY, svc_af)
    # The forwarding method from the raw attribute (pyroute2 0.9.7 bug 3: from_message says 3).
    fwd = _u(a, DEST_FWD_METHOD) & IP_VS_CONN_F_FWD_MASK
    if fwd not in FWD_BY_CODE:
        raise ValueError(f"unsupported forwarding method {fwd}")
    return Dest(
        address=_addr_text(a.get(DEST_ADDR, b""), af),
        port=_BE16.unpack_from(a[DEST_PORT])[0],
        forwarding=FWD_BY_CODE[fwd],
        weight=_u(a, DEST_WEIGHT),
        upper_threshold=_u(a, DEST_U_THRESH),
        lower_threshold=_u(a, DEST_L_THRESH),
    )


# --- the socket ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetlinkFailure:
    """A request the kernel refused: its index in the batch and the errno."""

    index: int
    code: int

    @property
    def message(self) -> str:
        return f"{errno.errorcode.get(self.code, self.code)} ({self.code}): {_strerror(self.code)}"


def _strerror(code: int) -> str:
    try:
        return os.strerror(code)
    except ValueError:
        return "unknown error"


_SEQ_FIRST = 0x00100000  # above pyroute2's own sequence numbers (0xFF..0xFFFF)


class IpvsSocket:
    """The one generic netlink socket bound to IPVS. Not thread-safe: use from one thread only.

    pyroute2 creates and binds it and resolves the family id; requests, acks and dumps then go
    through the same file descriptor directly (pyroute2's own reader only runs while one of its
    calls does, and none does after :meth:`open`).
    """

    def __init__(self, *, batch_size: int = 512, timeout: float = 30.0) -> None:
        self.batch_size = batch_size
        self.timeout = timeout
        self._pyroute2: Any = None
        self._fd: socket.socket | None = None
        self._family = 0
        self._seq = _SEQ_FIRST

    def open(self) -> None:
        if self._fd is not None:
            return
        sock = _genl.GenericNetlinkSocket()
        try:
            sock.bind("IPVS", _ipvsmsg)
            fd: socket.socket = sock.asyncore.socket
            fd.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # error acks without the request echoed
            family = int(sock.prid)
        except BaseException:
            sock.close()
            raise
        self._pyroute2, self._fd, self._family = sock, fd, family

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        if self._pyroute2 is not None:
            sock, self._pyroute2, self._fd = self._pyroute2, None, None
            sock.close()

    def _socket(self) -> socket.socket:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        return self._fd

    def _next_seq(self) -> int:
        self._seq = _SEQ_FIRST if self._seq >= 0x7FFFFFFF else self._seq + 1
        return self._seq

    def _recv(self, fd: socket.socket, deadline: float) -> bytes:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "no answer from the kernel's IPVS netlink")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    return fd.recv(1 << 20)
                except BlockingIOError:
                    continue

    def _messages(self, fd: socket.socket, deadline: float) -> Iterator[tuple[int, int, int, bytes, int]]:
        """(type, flags, seq, buffer, body offset) of every message received, forever."""
        while True:
            data = self._recv(fd, deadline)
            off = 0
            while off + _HDR.size <= len(data):
                n, kind, flags, seq, _pid = _HDR.unpack_from(data, off)
                if n < _HDR.size:
                    break
                yield kind, flags, seq, data[off : off + n], _HDR.size
                off += (n + 3) & ~3

    def send(self, requests: Sequence[Request]) -> list[NetlinkFailure]:
        """Send ``requests`` in order, ``batch_size`` per datagram; every one is attempted."""
        fd = self._socket()
        failures: list[NetlinkFailure] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            first = self._seq + 1 if self._seq < 0x7FFFFFFF - len(chunk) else _SEQ_FIRST
            self._seq = first + len(chunk) - 1
            fd.send(b"".join(r.encode(first + i, self._family) for i, r in enumerate(chunk)))
            pending = len(chunk)
            deadline = time.monotonic() + self.timeout
            for kind, _flags, seq, buf, off in self._messages(fd, deadline):
                if kind != NLMSG_ERROR or not first <= seq < first + len(chunk):
                    continue  # a stray answer to an earlier, abandoned request
                code = -_ERR.unpack_from(buf, off)[0]
                if code:
                    failures.append(NetlinkFailure(start + seq - first, code))
                pending -= 1
                if pending == 0:
                    break
        return failures

    def _dump(self, cmd: int, payload: bytes, attr: int) -> list[bytes]:
        fd = self._socket()
        seq = self._next_seq()
        fd.send(Request(cmd, _FLAGS_DUMP, payload).encode(seq, self._family))
        out: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        for kind, _flags, mseq, buf, off in self._messages(fd, deadline):
            if mseq != seq:
                continue
            if kind == NLMSG_DONE:
                break
            if kind == NLMSG_ERROR:
                code = -_ERR.unpack_from(buf, off)[0]
                if code:
                    raise OSError(code, f"IPVS dump refused: {_strerror(code)}")
                break
            body = _attrs(buf, off + _GENL.size)
            if attr in body:
                out.append(body[attr])
        return out

    def dump_services(self) -> list[Service]:
        return [decode_service(p) for p in self._dump(IPVS_CMD_GET_SERVICE, b"", CMD_ATTR_SERVICE)]

    def get_service(self, svc: Service) -> Service | None:
        """The service ``svc`` names (by its key) as the kernel holds it, destinations empty;
        None when there is none. One request: not a dump of every service."""
        fd = self._socket()
        seq = self._next_seq()
        fd.send(Request(IPVS_CMD_GET_SERVICE, NLM_F_REQUEST, service_key_attr(svc)).encode(seq, self._family))
        deadline = time.monotonic() + self.timeout
        for kind, _flags, mseq, buf, off in self._messages(fd, deadline):
            if mseq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -_ERR.unpack_from(buf, off)[0]
                if code in (0, errno.ESRCH, errno.ENOENT):
                    return None
                raise OSError(code, f"IPVS get service refused: {_strerror(code)}")
            body = _attrs(buf, off + _GENL.size)
            if CMD_ATTR_SERVICE in body:
                return decode_service(body[CMD_ATTR_SERVICE])
        return None  # not reached: _messages ends by a timeout

    def dump_dests(self, svc: Service) -> list[Dest]:
        payloads = self._dump(IPVS_CMD_GET_DEST, service_key_attr(svc), CMD_ATTR_DEST)
        af = int(svc.family)
        return [decode_dest(p, af) for p in payloads]

    def flush(self) -> None:
        """``ipvsadm -C``: remove every service (tests and benchmarks only)."""
        failures = self.send([Request(IPVS_CMD_FLUSH, _FLAGS_REQ, b"")])
        if failures:
            raise OSError(failures[0].code, failures[0].message)
