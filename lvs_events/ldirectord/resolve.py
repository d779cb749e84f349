"""Name resolution for the ldirectord.cf parser: explicit and injectable.

ldirectord resolves host names with ``getaddrinfo(name, 0, family)`` (first answer, printed
numerically) and service names with ``getservbyname(name, protocol)``. The parser only ever
talks to a :class:`Resolver`; :class:`SystemResolver` does what ldirectord does, and
:class:`StaticResolver` answers from tables (plus the numeric forms getaddrinfo itself accepts),
so unit tests never touch DNS.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from typing import Protocol

from lvs_events.domain.config import Family

__all__ = ["Resolver", "StaticResolver", "SystemResolver", "numeric_host"]


class Resolver(Protocol):
    def host(self, name: str, family: Family) -> str | None:
        """The first address of ``name`` in ``family``, as canonical text; ``None`` if unresolvable."""
        ...

    def service(self, name: str, protocol: str | None) -> int | None:
        """The port of service ``name`` for ``protocol`` (``None``: any protocol); ``None`` if unknown."""
        ...


_AT_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)\Z", re.ASCII)


def _aton_part(text: str) -> int | None:
    if not _AT_PART.match(text):
        return None
    if text[:2] in ("0x", "0X"):
        return int(text[2:] or "0", 16)
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)
    return int(text)


def _inet_aton_exact(name: str) -> str | None:
    """glibc's ``inet_aton`` forms (``a``, ``a.b``, ``a.b.c``, ``a.b.c.d``; octal, hex), nothing trailing."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    limits = [256] * (len(nums) - 1)
    if any(v >= lim for v, lim in zip(nums, limits, strict=False)):
        return None
    last = nums[-1]
    if last >= 256 ** (5 - len(nums)):
        return None
    value = 0
    for v in nums[:-1]:
        value = (value << 8) | v
    value = (value << (8 * (5 - len(nums)))) | last
    return str(ipaddress.IPv4Address(value))


def numeric_host(name: str, family: Family) -> str | None:
    """The address a numeric host string denotes for ``getaddrinfo`` in ``family``, else ``None``."""
    if family is Family.INET:
        return _inet_aton_exact(name)
    if not name or "%" in name or not re.fullmatch(r"[0-9A-Fa-f:.]+", name):
        return None
    try:
        return str(ipaddress.IPv6Address(name))
    except ValueError:
        return None


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address.split("%", 1)[0]))


class SystemResolver:
    """What ldirectord does: the system's resolver (``/etc/hosts``, DNS) and ``/etc/services``."""

    def host(self, name: str, family: Family) -> str | None:
        try:
            answers = socket.getaddrinfo(name, 0, int(family))
        except (OSError, UnicodeError, ValueError):
            return None
        for fam, _type, _proto, _canon, sockaddr in answers:
            if fam == int(family):
                return _canonical(str(sockaddr[0]))
        return None

    def service(self, name: str, protocol: str | None) -> int | None:
        try:
            return socket.getservbyname(name, protocol) if protocol else socket.getservbyname(name)
        except (OSError, UnicodeError, ValueError):
            return None


# The few /etc/services entries real configurations use, so tests do not depend on the host.
DEFAULT_SERVICES: Mapping[str, int] = {
    "ftp": 21,
    "ssh": 22,
    "smtp": 25,
    "domain": 53,
    "http": 80,
    "www": 80,
    "pop3": 110,
    "nntp": 119,
    "imap": 143,
    "imap2": 143,
    "ldap": 389,
    "https": 443,
    "submission": 587,
    "ldaps": 636,
    "imaps": 993,
    "pop3s": 995,
    "radius": 1812,
    "radius-acct": 1813,
    "mysql": 3306,
    "sip": 5060,
    "postgresql": 5432,
}


class StaticResolver:
    """Answers from tables: no I/O, deterministic.

    ``hosts`` maps a name to an address (or to per-family addresses ``{Family.INET: ..., ...}``);
    numeric forms are understood as ``getaddrinfo`` understands them. ``services`` maps a service
    name (any protocol) or ``(name, protocol)`` to a port.
    """

    def __init__(
        self,
        hosts: Mapping[str, str | Mapping[Family, str]] | None = None,
        services: Mapping[str | tuple[str, str], int] | None = None,
    ) -> None:
        self._hosts = dict(hosts or {})
        self._services: dict[str | tuple[str, str], int] = {}
        self._services.update(DEFAULT_SERVICES if services is None else services)

    def host(self, name: str, family: Family) -> str | None:
        if not name:
            return None
        numeric = numeric_host(name, family)
        if numeric is not None:
            return numeric
        entry = self._hosts.get(name)
        if entry is None:
            return None
        if isinstance(entry, str):
            try:
                addr = ipaddress.ip_address(entry)
            except ValueError:
                return None
            wanted = 4 if family is Family.INET else 6
            return str(addr) if addr.version == wanted else None
        value = entry.get(family)
        return _canonical(value) if value is not None else None

    def service(self, name: str, protocol: str | None) -> int | None:
        if protocol:
            port = self._services.get((name, protocol))
            if port is not None:
                return port
            if protocol not in ("tcp", "udp"):
                return None
        return self._services.get(name)
