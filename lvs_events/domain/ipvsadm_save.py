"""A table as ``ipvsadm -S -n`` prints it: rules that ``ipvsadm -R`` restores.

Pure (standard library and the domain only). Lines and their order are ipvsadm's (1.31, Debian
12), so ``ipvsadm -R`` of this text followed by ``ipvsadm -S -n`` gives the same text back, with
one deliberate addition: destination thresholds. ``ipvsadm -S`` drops them (it never prints
``-x`` / ``-y``), which would make a restore lose them, so they are written after the weight when
set; ``ipvsadm -R`` accepts them.

    -A -t 203.0.113.10:80 -s wrr -p 7200
    -a -t 203.0.113.10:80 -r 192.0.2.11:80 -g -w 10
    -A -u [2001:db8::53]:53 -s sh -o -b sh-fallback,sh-port
    -A -f 7 -6 -s wlc -p 60 -M 64
    -a -f 7 -6 -r [2001:db8::5]:0 -i -w 1 --tun-type ipip -x 100 -y 10

Order: ipvsadm sorts services by firewall mark, address family, protocol, address, port, and
destinations by address then port, comparing 32-bit words by their difference as a C ``int``
(so addresses more than 2**31 apart compare "around the circle"); :func:`sorted_like_ipvsadm`
reproduces that comparison exactly.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace

from lvs_events.domain.config import Family, Forwarding, Protocol, endpoint_text
from lvs_events.domain.table import Dest, Service, Table, sched_flag_bits, sched_flag_names

__all__ = [
    "format_ipvsadm_save",
    "normalized_schedflags",
    "sorted_like_ipvsadm",
]

_FORWARD_SWITCH = {Forwarding.GATE: "-g", Forwarding.MASQ: "-m", Forwarding.IPIP: "-i"}


def normalized_schedflags(scheduler: str, flags: Sequence[str]) -> tuple[str, ...]:
    """``flags`` as the kernel gives them back (``flag-1`` under sh reads back as ``sh-fallback``)."""
    return sched_flag_names(scheduler, sched_flag_bits(flags))


# --- ordering ----------------------------------------------------------------------------------


def _c_int(v: int) -> int:
    """A 32-bit difference as C's ``int`` sees it."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _words(address: str | None) -> tuple[int, ...]:
    if address is None:
        return (0,)
    packed = ipaddress.ip_address(address).packed
    return tuple(int.from_bytes(packed[i : i + 4], "big") for i in range(0, len(packed), 4))


def _cmp_addr(a: str | None, b: str | None) -> int:
    wa, wb = _words(a), _words(b)
    r = 0
    for x, y in zip(wa, wb, strict=False):
        r = _c_int(x - y)
        if r:
            break
    return r


def _svc_proto(s: Service) -> int:
    if s.protocol is Protocol.FWM or s.fwmark is not None:
        return 6  # the kernel keeps firewall-mark services as TCP
    return 6 if s.protocol is Protocol.TCP else 17


def _cmp_services(a: Service, b: Service) -> int:
    r = _c_int((a.fwmark or 0) - (b.fwmark or 0))
    if r:
        return r
    r = int(a.family) - int(b.family)
    if r:
        return r
    r = _svc_proto(a) - _svc_proto(b)
    if r:
        return r
    fa = a.protocol is Protocol.FWM or a.fwmark is not None
    fb = b.protocol is Protocol.FWM or b.fwmark is not None
    r = 0 if fa or fb else _cmp_addr(a.address, b.address)
    if r:
        return r
    return (0 if fa else a.port) - (0 if fb else b.port)


def _cmp_dests(a: Dest, b: Dest) -> int:
    r = _cmp_addr(a.address, b.address)
    if r:
        return r
    return a.port - b.port


def sorted_like_ipvsadm(services: Iterable[Service]) -> list[Service]:
    """Services, each with its destinations, in ipvsadm's listing order."""
    out = [
        s if len(s.dests) < 2 else _with_dests(s, sorted(s.dests, key=functools.cmp_to_key(_cmp_dests)))
        for s in services
    ]
    return sorted(out, key=functools.cmp_to_key(_cmp_services))


def _with_dests(s: Service, dests: list[Dest]) -> Service:
    return replace(s, dests=tuple(dests))


# --- the rules ---------------------------------------------------------------------------------


def _svc_switch(s: Service) -> str:
    if s.protocol is Protocol.FWM or s.fwmark is not None:
        return f"-f {s.fwmark}" + (" -6" if s.family is Family.INET6 else "")
    if s.address is None:
        raise ValueError(f"service {s.key} has no address")
    flag = "-t" if s.protocol is Protocol.TCP else "-u"
    return f"{flag} {endpoint_text(s.address, s.port)}"


def _netmask_is_default(s: Service) -> bool:
    if s.netmask is None:
        return True
    if s.family is Family.INET6:
        return s.netmask.strip() == "128"
    return s.netmask.strip() == "255.255.255.255"


def format_ipvsadm_save(table: Table) -> str:
    """``table`` as ``ipvsadm -S -n`` prints it (plus thresholds, see the module docstring)."""
    lines: list[str] = []
    for s in sorted_like_ipvsadm(table.services):
        name = _svc_switch(s)
        line = f"-A {name} -s {s.scheduler}"
        if s.persistent is not None:
            line += f" -p {s.persistent}"
            if not _netmask_is_default(s):
                line += f" -M {s.netmask}"
        if s.ops:
            line += " -o"
        flags = normalized_schedflags(s.scheduler, s.schedflags)
        if flags:
            line += f" -b {','.join(flags)}"
        lines.append(line)
        for d in s.dests:
            real = endpoint_text(d.address, d.port)
            dl = f"-a {name} -r {real} {_FORWARD_SWITCH[d.forwarding]} -w {d.weight}"
            if d.forwarding is Forwarding.IPIP:
                dl += " --tun-type ipip"
            if d.upper_threshold:
                dl += f" -x {d.upper_threshold}"
            if d.lower_threshold:
                dl += f" -y {d.lower_threshold}"
            lines.append(dl)
    return "".join(f"{line}\n" for line in lines)
