"""The desired configuration: what ldirectord.cf says, as typed, immutable values.

Pure: no I/O. The ldirectord parser (``lvs_events.ldirectord``) produces a :class:`Config`;
``ConfigApplied`` events carry one; the fold keeps the one in force; the render turns it,
with health and operator overrides, into the desired IPVS table.

Addresses are kept as the normalised text of an IP address (``ipaddress`` canonical form),
never as host names: names are resolved once, by the parser, at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Forwarding(enum.StrEnum):
    """LVS packet forwarding method (ldirectord's ``gate``, ``masq``, ``ipip``)."""

    GATE = "gate"  # direct routing, ipvsadm -g, shown as "Route"
    MASQ = "masq"  # NAT, ipvsadm -m, shown as "Masq"
    IPIP = "ipip"  # tunnelling, ipvsadm -i, shown as "Tunnel"


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    FWM = "fwm"  # firewall-mark service


class Family(enum.IntEnum):
    INET = 2
    INET6 = 10


@dataclass(frozen=True, slots=True, order=True)
class RealServer:
    """One ``real=`` line (after range expansion): a destination of a virtual service."""

    address: str
    port: int
    forwarding: Forwarding = Forwarding.GATE
    weight: int = 1
    lower_threshold: int = 0  # IPVS l-threshold, 0 = none
    upper_threshold: int = 0  # IPVS u-threshold, 0 = none
    request: str | None = None  # per-real override of the check request
    receive: str | None = None  # per-real override of the check receive regex

    @property
    def key(self) -> str:
        """Identity of the real server inside its virtual service (``ip:port``, IPv6 bracketed)."""
        return endpoint_text(self.address, self.port)


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """How a virtual service's real servers are checked (ldirectord's per-virtual check directives).

    ``None`` means "inherit the global value" for the timing fields.
    """

    checktype: str = "negotiate"  # connect | negotiate | ping | external | external-perl | off | on | <N>
    service: str | None = None  # http, https, ftp, ... ; None = derived from the port
    request: str | None = None
    receive: str | None = None
    httpmethod: str = "GET"
    virtualhost: str | None = None
    checkport: int | None = None
    login: str | None = None
    passwd: str | None = None
    database: str | None = None
    secret: str | None = None
    checkcommand: str | None = None
    checktimeout: float | None = None
    negotiatetimeout: float | None = None
    connecttimeout: float | None = None
    checkinterval: float | None = None
    checkcount: int | None = None
    failurecount: int | None = None
    cleanstop: bool | None = None


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One ``virtual=`` / ``virtual6=`` block."""

    protocol: Protocol
    address: str | None = None  # None for a fwmark service
    port: int = 0
    fwmark: int | None = None
    family: Family = Family.INET
    scheduler: str = "wrr"
    persistent: int | None = None  # persistence timeout in seconds
    netmask: str | None = None  # persistence granularity netmask (IPv4 dotted or IPv6 prefix length)
    ops: bool = False  # one-packet scheduling (UDP)
    schedflags: tuple[str, ...] = ()  # e.g. ("sh-fallback", "sh-port")
    reals: tuple[RealServer, ...] = ()
    fallback: RealServer | None = None
    fallbackcommand: str | None = None
    quiescent: bool | None = None  # None = global value
    readdquiescent: bool | None = None
    emailalert: str | None = None
    servicename: str | None = None
    comment: str | None = None
    check: CheckSettings = field(default_factory=CheckSettings)
    # Per-virtual overrides ldirectord also accepts (None = the global value / unset).
    emailalertfreq: int | None = None
    emailalertstatus: tuple[str, ...] | None = None
    smtp: str | None = None
    monitorfile: str | None = None

    @property
    def key(self) -> str:
        """Identity of the virtual service, as ``ipvsadm -L -n`` names it: ``TCP 1.2.3.4:80``, ``FWM 5``."""
        return service_key(self.protocol, self.address, self.port, self.fwmark, self.family)

    def real(self, key: str) -> RealServer | None:
        for r in self.reals:
            if r.key == key:
                return r
        return None


@dataclass(frozen=True, slots=True)
class GlobalSettings:
    """ldirectord's global directives, with ldirectord's defaults."""

    checktimeout: float = 5.0
    negotiatetimeout: float = 30.0
    connecttimeout: float = 5.0
    checkinterval: float = 10.0
    checkcount: int = 1
    failurecount: int = 1
    autoreload: bool = False
    callback: str | None = None
    fallback: RealServer | None = None
    fallback6: RealServer | None = None
    fallbackcommand: str | None = None
    logfile: str | None = None
    emailalert: str | None = None
    emailalertfreq: int = 0
    emailalertstatus: tuple[str, ...] = ("all",)
    emailalertfrom: str | None = None
    smtp: str | None = None
    execute: tuple[str, ...] = ()
    fork: bool = False
    supervised: bool = False
    quiescent: bool = False
    readdquiescent: bool = False
    cleanstop: bool = True
    maintenancedir: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole ldirectord.cf: globals and virtual services, in file order."""

    globals: GlobalSettings = field(default_factory=GlobalSettings)
    virtuals: tuple[VirtualService, ...] = ()
    source: str = ""  # where it came from (file name), informative only

    def virtual(self, key: str) -> VirtualService | None:
        for v in self.virtuals:
            if v.key == key:
                return v
        return None


def endpoint_text(address: str, port: int) -> str:
    """``ip:port`` as ipvsadm prints it (IPv6 in brackets)."""
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def service_key(
    protocol: Protocol, address: str | None, port: int, fwmark: int | None, family: Family = Family.INET
) -> str:
    if protocol is Protocol.FWM or fwmark is not None:
        return f"FWM {fwmark} IPv6" if family is Family.INET6 else f"FWM {fwmark}"
    if address is None:
        raise ValueError("a TCP/UDP virtual service needs an address")
    return f"{protocol.value.upper()} {endpoint_text(address, port)}"
