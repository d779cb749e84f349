"""A verdict-compatible parser for ldirectord.cf (ldirectord 4.x grammar).

The grammar, as ldirectord's ``read_config`` reads it, line by line (lines end at ``\\n`` only):

* A line matching ``virtual=`` / ``virtual6=`` at column 1 opens a block. The block's lines follow
  immediately; each is either a comment (optional blanks, then ``#``), skipped, or, once ``#...`` is
  cut off and every tab widened to four spaces, four or more spaces and a directive. Any other
  line (a blank line, a less indented line, the next ``virtual=``) ends the block and is then read
  again as a global line.
* Outside blocks: blank lines and comments are skipped; global directives start at column 1 and
  are *not* stripped of trailing ``# comments`` (so ``quiescent=no # x`` is refused while
  ``checktimeout=3 # x`` reads the number and passes, exactly as ldirectord does).
* Names (hosts, services) are resolved once a block is complete, fallback first, then the virtual
  address, then each real server in order, so errors are reported at ldirectord's line.

With ``strict=True`` every known ldirectord bug is reproduced too; the default mode departs from
ldirectord only where its behaviour is a plain bug (see ``docs/ldirectord-migration.md``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lvs_events.domain.config import (
    CheckSettings,
    Config,
    Family,
    Forwarding,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)

from .errors import ConfigError, ConfigWarning
from .resolve import Resolver, SystemResolver

__all__ = [
    "MAX_RANGE",
    "SERVICES",
    "derived_service",
    "parse_file",
    "parse_text",
]

A = re.ASCII

#: Largest real-server range we expand (ldirectord has no limit and would try to add millions).
MAX_RANGE = 65536

#: ldirectord's ``service=`` values.
SERVICES = (
    "dns", "ftp", "http", "https", "http_proxy", "imap", "imaps", "ldap", "ldaps", "nntp", "mysql",
    "none", "oracle", "pop", "pops", "radius", "pgsql", "sip", "smtp", "submission", "simpletcp",
)  # fmt: skip

_PORT_SERVICE = {
    "21": "ftp", "25": "smtp", "53": "dns", "80": "http", "110": "pop", "119": "nntp", "143": "imap",
    "389": "ldap", "443": "https", "587": "submission", "636": "ldaps", "995": "pops", "993": "imaps",
    "1521": "oracle", "1812": "radius", "3128": "http_proxy", "3306": "mysql", "5060": "sip",
    "5432": "pgsql",
}  # fmt: skip

_CHECKTYPES = ("connect", "negotiate", "ping", "off", "on", "external", "external-perl")
_FORWARDS = ("gate", "masq", "ipip")
_EMAIL_STATUSES = ("all", "starting", "stopping", "running", "reloading")
_SERVICES_TEXT = (
    "dns, ftp, http, https, http_proxy, imap, imaps, ldap, ldaps, mysql, nntp, none, oracle, pop, "
    "pops, radius, pgsql, simpletcp, sip, smtp or submission"
)
_CHECKTYPE_TEXT = (
    '"connect", "negotiate", "on", "off", "ping", "external", "external-perl" or a positive number'
)

_VIRTUAL = re.compile(r"virtual(6)?\s*=\s*(.*)", A)
_NAME_VALUE = re.compile(r"(\w+)\s*=\s*(.*)", A)
_BLOCK_LINE = re.compile(r" {4,}(.+)", A)
_V4_ADDR_PORT = re.compile(r"(\d+\.\d+\.\d+\.\d+):([0-9A-Za-z_-]+)", A)
_HOST_PORT = re.compile(r"([0-9A-Za-z._+-]+):([0-9A-Za-z_-]+)", A)
_FWMARK = re.compile(r"(\d+)", A)
_V6_ADDR_PORT = re.compile(r"\[([0-9A-Fa-f:]+)\]:([0-9A-Za-z_-]+)", A)
_REAL = re.compile(
    r"(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-fa-f:]+\])"
    r"(->(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-fa-f:]+\]))?"
    r"(:(\d+|[A-Za-z0-9_-]+))?\s+(.*)",
    A,
)
_FALLBACK_WORDS = re.compile(r"(\S+)(\s+(\S+))?\s*$", A)
_PORT_SUFFIX = re.compile(r"(:(\d+|[A-Za-z0-9_-]+))?$", A)
_DIGITS = re.compile(r"\d+", A)


def derived_service(port_text: str) -> str:
    """ldirectord's default ``service=`` for a virtual port (compared as text: ``080`` is not 80)."""
    return _PORT_SERVICE.get(port_text, "none")


def _perl_true(value: str | None) -> bool:
    return value is not None and value not in ("", "0")


def _quoted(value: str) -> str | None:
    """The inside of ``"(.*)"`` at the start of ``value`` (greedy: up to the last quote)."""
    if value.startswith('"'):
        end = value.rfind('"')
        if end > 0:
            return value[1:end]
    return None


def _split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass(slots=True)
class _Loc:
    """Where a block directive sits: maps positions in the cleaned directive back to the raw line."""

    line: int
    raw: str
    index: list[int]  # index[i] = raw position of cleaned character i

    def col(self, pos: int) -> int:
        if not self.index:
            return 1
        pos = max(0, min(pos, len(self.index) - 1))
        return self.index[pos] + 1


@dataclass(slots=True)
class _Fallback:
    server: str
    port: str | None
    forward: str
    loc: _Loc


@dataclass(slots=True)
class _Block:
    """One virtual block being read: ldirectord's ``%vsrv`` while it is still text."""

    af: Family
    line: int
    loc: _Loc
    host: str | None = None  # address text as written (ip, name or [v6])
    port_text: str = "0"
    fwm_text: str | None = None
    protocol: str = "tcp"
    scheduler: str = "wrr"
    persistent: int | None = None
    netmask: str | None = None
    ops: bool = False
    schedflags: tuple[str, ...] = ()
    reals_todo: list[tuple[str, _Loc, int]] = field(default_factory=list)
    fallback: _Fallback | None = None
    fallbackcommand: str | None = None
    quiescent: bool | None = None
    emailalert: str | None = None
    emailalertfreq: int | None = None
    emailalertstatus: tuple[str, ...] | None = None
    smtp: str | None = None
    monitorfile: str | None = None
    servicename: str | None = None
    comment: str | None = None
    checktype: str = "negotiate"
    service: str | None = None
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
    checkinterval: float | None = None
    checkinterval_line: int = 0
    checkcount: int | None = None
    failurecount: int | None = None
    cleanstop: bool | None = None


class _Parser:
    def __init__(
        self,
        text: str,
        filename: str,
        resolver: Resolver,
        strict: bool,
        warnings: list[ConfigWarning] | None,
    ) -> None:
        self.lines = _split_lines(text)
        self.filename = filename
        self.resolver = resolver
        self.strict = strict
        self.warnings = warnings
        self.pos = 0  # lines read so far == ldirectord's $line
        self.virtuals: list[VirtualService] = []
        self.seen: dict[str, int] = {}
        # globals, as ldirectord keeps them (None = unset)
        self.g_checktimeout: int | None = None
        self.g_negotiatetimeout: int | None = None
        self.g: dict[str, object] = {}
        self.execute: list[str] = []
        self.fork = False

    # -- reporting -------------------------------------------------------------------------------

    def fail(
        self,
        line: int,
        column: int,
        message: str,
        *,
        upstream: str,
        found: str | None = None,
        expected: str | None = None,
        hint: str | None = None,
    ) -> ConfigError:
        return ConfigError(
            message,
            filename=self.filename,
            line=line,
            column=column,
            found=found,
            expected=expected,
            hint=hint,
            upstream=upstream,
        )

    def warn(self, line: int, message: str) -> None:
        if self.warnings is not None:
            self.warnings.append(ConfigWarning(self.filename, line, message))

    # -- name resolution (ldirectord's ld_gethostbyname / ld_getservbyname) ----------------------

    def gethost(self, name: str, af: Family) -> str | None:
        m = re.search(r"\[(.*)\]", name)
        if m:
            name = m.group(1)
        if name == "":  # getaddrinfo(NULL, ...) answers the loopback address
            return "127.0.0.1" if af is Family.INET else "::1"
        return self.resolver.host(name, af)

    def getserv(self, name: str, protocol: str) -> str | None:
        if re.fullmatch(r"[0-9]+", name):
            return name if int(name) < 65536 else None
        port = self.resolver.service(name, protocol or None)
        return str(port) if port is not None and 0 <= port < 65536 else None

    # -- driver ----------------------------------------------------------------------------------

    def parse(self) -> Config:
        pending: str | None = None
        while True:
            if pending is None:
                if self.pos >= len(self.lines):
                    break
                raw = self.lines[self.pos]
                self.pos += 1
            else:
                raw, pending = pending, None
            m = _VIRTUAL.match(raw)
            if m:
                pending = self.virtual_block(raw, m)
                if pending is None:
                    break
                continue
            if re.match(r"\s*$", raw, A) or re.match(r"\s*#", raw, A):
                continue
            self.global_line(raw)
        if not self.fork:
            for v in self.virtuals:
                if v.check.checkinterval is not None:
                    self.warn(0, f"checkinterval in virtual service {v.key} ignored when fork=no")
        return Config(globals=self.build_globals(), virtuals=tuple(self.virtuals), source=self.filename)

    # -- global directives -----------------------------------------------------------------------

    def global_line(self, raw: str) -> None:
        line = self.pos
        text = raw.rstrip("\n") if raw.endswith("\n") else raw
        if raw.startswith("supervised"):
            m = re.match(r"supervised\s*=\s*(.*)", raw, A)
            if m and m.group(1) in ("yes", "no"):
                self.g["supervised"] = m.group(1) == "yes"
            elif re.match(r"supervised\s*$", raw, A):
                self.g["supervised"] = True
                self.warn(line, "please update your config not to use a bare supervised directive")
            else:
                col = m.start(1) + 1 if m else 1
                raise self.fail(
                    line, col, "supervised must be 'yes' or 'no'",
                    upstream="supervised must be 'yes' or 'no'",
                    found=repr(m.group(1) if m else text), expected="yes or no",
                    hint=_yes_no_hint(m.group(1) if m else ""),
                )  # fmt: skip
            return
        m = _NAME_VALUE.match(raw)
        name = m.group(1) if m else ""
        handler = _GLOBAL_HANDLERS.get(name)
        if m is None or handler is None or not handler(self, line, m.group(2), m.start(2) + 1):
            self.unknown_global(line, raw, text)

    def unknown_global(self, line: int, raw: str, text: str) -> None:
        if re.match(r"timeout\s*=\s*(.*)", raw, A):
            raise self.fail(
                line, 1, "the timeout directive was removed",
                upstream="timeout directive deprecated in favour of checktimeout and negotiatetimeout",
                found="timeout=", expected="checktimeout= and/or negotiatetimeout=",
                hint="use checktimeout= (connect, ping, external checks) and negotiatetimeout= (negotiate)",
            )  # fmt: skip
        stripped = text.lstrip(" \t")
        word = re.match(r"\w*", stripped, A)
        name = word.group(0) if word else ""
        if len(stripped) != len(text) and stripped and not stripped.startswith("#"):
            hint = (
                "this indented line is not inside a virtual block: a block ends at the first blank or "
                "non-indented line, and global directives start at column 1"
            )
        elif name in _VIRTUAL_ONLY:
            hint = f"{name}= is only valid inside a virtual block (indented under virtual=)"
        elif name in ("callback", "logfile") and re.match(name + r"\s*=", stripped, A):
            hint = f'{name}= needs its value in double quotes: {name}="..."'
        elif name == "maintenance_dir":
            hint = "the directive is spelled maintenancedir="
        elif name in _VIRTUAL_ONLY or name == "virtualhost":
            hint = f"{name}= is only valid inside a virtual block"
        else:
            hint = "not an ldirectord directive; see ldirectord(8) for the directives"
        raise self.fail(
            line, 1, "unknown directive",
            upstream=f"Unknown command {text}",
            found=repr(text), expected="a global directive, virtual= or virtual6=", hint=hint,
        )  # fmt: skip

    def build_globals(self) -> GlobalSettings:
        ct, nt = self.g_checktimeout, self.g_negotiatetimeout
        checktimeout = ct if ct is not None else (nt if nt is not None else 5)
        negotiatetimeout = nt if nt is not None else (ct if ct is not None else 30)
        g = self.g
        return GlobalSettings(
            checktimeout=float(checktimeout),
            negotiatetimeout=float(negotiatetimeout),
            checkinterval=float(_int(g.get("checkinterval"), 10)),
            checkcount=_int(g.get("checkcount"), 1),
            failurecount=_int(g.get("failurecount"), 1),
            autoreload=bool(g.get("autoreload", False)),
            callback=_str(g.get("callback")),
            fallback=_real(g.get("fallback")),
            fallback6=_real(g.get("fallback6")),
            fallbackcommand=_str(g.get("fallbackcommand")),
            logfile=_str(g.get("logfile")),
            emailalert=_str(g.get("emailalert")),
            emailalertfreq=_int(g.get("emailalertfreq"), 0),
            emailalertstatus=_tuple(g.get("emailalertstatus"), ("all",)),
            emailalertfrom=_str(g.get("emailalertfrom")),
            smtp=_str(g.get("smtp")),
            execute=tuple(self.execute),
            fork=self.fork,
            supervised=bool(g.get("supervised", False)),
            quiescent=bool(g.get("quiescent", False)),
            readdquiescent=bool(g.get("readdquiescent", False)),
            cleanstop=bool(g.get("cleanstop", True)),
            maintenancedir=_str(g.get("maintenancedir")),
        )

    # -- virtual blocks --------------------------------------------------------------------------

    def virtual_block(self, raw: str, m: re.Match[str]) -> str | None:  # noqa: PLR0912 -- one branch per line kind
        """Read one block; return the line that ended it (to be read again), None at end of file."""
        line = self.pos
        af = Family.INET6 if m.group(1) else Family.INET
        vattr = m.group(2)
        vcol = m.start(2) + 1
        loc = _Loc(line, raw, list(range(len(raw))))
        b = _Block(af=af, line=line, loc=loc)
        directive = "virtual6" if af is Family.INET6 else "virtual"
        mm = _V4_ADDR_PORT.match(vattr) if af is Family.INET else None
        mm = mm or _HOST_PORT.match(vattr)
        if mm:
            b.host, b.port_text = mm.group(1), mm.group(2)
        elif fw := _FWMARK.match(vattr):
            if not self.strict and not re.fullmatch(r"\d+(\s.*)?", vattr, A):
                raise self.fail(
                    line, vcol, f"{directive}= needs address:port or a firewall mark",
                    upstream=f"invalid address for virtual server: {vattr}",
                    found=repr(vattr), expected="ip:port, host:service or a firewall-mark number",
                    hint=f"ldirectord would silently read this as firewall mark {fw.group(1)}; "
                    "add the port (e.g. 192.0.2.10:80), or use --strict to keep ldirectord's reading",
                )  # fmt: skip
            b.fwm_text = fw.group(1)
            b.protocol = "fwm"
            b.service = "none"
        elif v6 := _V6_ADDR_PORT.match(vattr):
            if af is Family.INET:
                raise self.fail(
                    line, vcol, "an IPv6 address needs virtual6=",
                    upstream='cannot specify an IPv6 address here. please use "virtual6" instead.',
                    found=repr(vattr), expected="an IPv4 address or host name with :port",
                    hint="write virtual6=[...]:port (with real6= and fallback6= inside) for IPv6",
                )  # fmt: skip
            try:
                ipaddress.IPv6Address(v6.group(1))
            except ValueError:
                raise self.fail(
                    line, vcol + 1, "invalid IPv6 address",
                    upstream="invalid ipv6 address for virtual server",
                    found=repr(v6.group(1)), expected="an IPv6 address in brackets, e.g. [2001:db8::1]:80",
                ) from None  # fmt: skip
            b.host, b.port_text = f"[{v6.group(1)}]", v6.group(2)
        else:
            raise self.fail(
                line, vcol, f"invalid address for {directive}=",
                upstream="invalid address for virtual server",
                found=repr(vattr), expected=(
                    "[ipv6]:port or a firewall-mark number" if af is Family.INET6
                    else "ip:port, host:service or a firewall-mark number"
                ),
                hint="IPv6 addresses go in brackets: virtual6=[2001:db8::1]:80" if ":" in vattr else None,
            )  # fmt: skip
        if b.host is not None and b.port_text in ("53", "domain"):
            b.protocol = "udp"

        linedata: str | None = raw
        while self.pos < len(self.lines):
            raw_line = self.lines[self.pos]
            self.pos += 1
            linedata = raw_line
            if re.match(r"\s*#", raw_line, A):
                continue
            cleaned, index = _clean(raw_line)
            bm = _BLOCK_LINE.match(cleaned)
            if not bm:
                break
            rcmd = bm.group(1)
            start = bm.start(1)
            dloc = _Loc(self.pos, raw_line, index[start:])
            self.block_directive(b, rcmd, dloc, raw_line)
            linedata = None
        else:
            if not self.strict:
                # ldirectord reads a virtual= on the very last line twice and refuses it as a
                # duplicate of itself; comment lines would be skipped anyway.
                linedata = None
        self.finish_block(b)
        return linedata

    def block_directive(self, b: _Block, rcmd: str, loc: _Loc, raw: str) -> None:
        m = _NAME_VALUE.match(rcmd)
        handler = _BLOCK_HANDLERS.get(m.group(1)) if m else None
        if m is None or handler is None or not handler(self, b, m.group(2), loc, m.start(2)):
            name = m.group(1) if m else ""
            text = raw[:-1] if raw.endswith("\n") else raw
            if name in _GLOBAL_ONLY:
                hint = f"{name}= is a global directive: put it at column 1 before the first virtual="
            elif name in ("request", "receive", "login", "passwd", "database", "secret", "load"):
                hint = f'{name}= needs its value in double quotes, e.g. {name}="..." (and no # inside)'
            elif name == "connecttimeout":
                hint = None
            elif rcmd.startswith(" "):
                hint = "a line of spaces only inside a block is not allowed; leave the line empty"
            else:
                hint = "not a directive of a virtual block; see ldirectord(8)"
            raise self.fail(
                loc.line, loc.col(0), "unknown directive in virtual block",
                upstream=f'Unknown command "{text}"',
                found=repr(text.strip()), expected="a virtual-block directive", hint=hint,
            )  # fmt: skip

    # -- end of block: resolve names, expand reals, check for duplicates -------------------------

    def finish_block(self, b: _Block) -> None:
        fallback: RealServer | None = None
        if b.fallback is not None:
            fallback = self.resolve_fallback(b.fallback, b.protocol, b.af)
        address: str | None = None
        port_text = "0"
        if b.host is not None:
            address = self.gethost(b.host, b.af)
            resolved_port = self.getserv(b.port_text, b.protocol) if address is not None else None
            if address is None or resolved_port is None:
                what = "host" if address is None else "port"
                raise self.fail(
                    b.line, b.loc.col(len("virtual=")),
                    f"invalid address for virtual service: cannot resolve the {what}",
                    upstream="invalid address for virtual service",
                    found=repr(b.host if address is None else b.port_text),
                    expected=(
                        f"an {'IPv4' if b.af is Family.INET else 'IPv6'} address or a resolvable name"
                        if address is None else f"a port number below 65536 or a {b.protocol} service name"
                    ),
                )  # fmt: skip
            port_text = resolved_port
            if b.service is None:
                b.service = derived_service(port_text)
        reals: list[RealServer] = []
        for text, loc, offset in b.reals_todo:
            reals.extend(self.resolve_real(text, loc, offset, b.af))
        if b.host is not None:
            vid = f"{b.protocol}:{address}:{port_text}"
        else:
            vid = f"fwm{'6' if b.af is Family.INET6 else ''}:{b.fwm_text}"
        if vid in self.seen:
            raise self.fail(
                self.pos, 1, "duplicate virtual service",
                upstream="duplicate virtual server",
                found=repr(vid), expected="each virtual service once",
                hint=f"the same virtual service is already defined at line {self.seen[vid]}; "
                "ldirectord reports it at the line that ends the second block",
            )  # fmt: skip
        self.seen[vid] = b.line
        self.virtuals.append(
            VirtualService(
                protocol=Protocol(b.protocol),
                address=address,
                port=int(port_text),
                fwmark=int(b.fwm_text) if b.fwm_text is not None else None,
                family=b.af,
                scheduler=b.scheduler,
                persistent=b.persistent,
                netmask=b.netmask,
                ops=b.ops,
                schedflags=b.schedflags,
                reals=tuple(reals),
                fallback=fallback,
                fallbackcommand=b.fallbackcommand,
                quiescent=b.quiescent,
                emailalert=b.emailalert,
                servicename=b.servicename,
                comment=b.comment,
                check=CheckSettings(
                    checktype=b.checktype,
                    service=b.service,
                    request=b.request,
                    receive=b.receive,
                    httpmethod=b.httpmethod,
                    virtualhost=b.virtualhost,
                    checkport=b.checkport,
                    login=b.login,
                    passwd=b.passwd,
                    database=b.database,
                    secret=b.secret,
                    checkcommand=b.checkcommand,
                    checktimeout=b.checktimeout,
                    negotiatetimeout=b.negotiatetimeout,
                    checkinterval=b.checkinterval,
                    checkcount=b.checkcount,
                    failurecount=b.failurecount,
                    cleanstop=b.cleanstop,
                ),
                emailalertfreq=b.emailalertfreq,
                emailalertstatus=b.emailalertstatus,
                smtp=b.smtp,
                monitorfile=b.monitorfile,
            )
        )

    def parse_fallback(self, text: str, default_port: str | None, loc: _Loc, offset: int) -> _Fallback:
        hostport, forward = text, None
        m = _FALLBACK_WORDS.search(text)
        if m:
            forward, hostport = m.group(3), m.group(1)
        p = _PORT_SUFFIX.search(hostport)
        assert p is not None  # the pattern matches every string
        port = p.group(2)
        server = hostport[: p.start()] + hostport[p.end() :]
        if port is None:
            port = default_port
        if _perl_true(forward):
            if forward not in _FORWARDS:
                col = offset + (m.start(3) if m else 0)
                raise self.fail(
                    loc.line, loc.col(col), "forward method must be gate, masq or ipip",
                    upstream="forward method must be gate, masq or ipip",
                    found=repr(forward), expected="gate, masq or ipip",
                    hint=_comment_hint(text, global_line=True),
                )  # fmt: skip
        else:
            forward = "gate"
        assert forward is not None
        return _Fallback(server, port, forward, loc)

    def resolve_fallback(self, fb: _Fallback, protocol: str, af: Family) -> RealServer:
        version = "IPv4" if af is Family.INET else "IPv6"
        address = self.gethost(fb.server, af)
        if address is None:
            raise self.fail(
                fb.loc.line, fb.loc.col(0), f"invalid {version} address for the fallback server",
                upstream=f"invalid {version} address or could not resolve for fallback server: {fb.server}",
                found=repr(fb.server), expected=f"an {version} address or a resolvable host name",
                hint="IPv6 fallbacks use fallback6=[...]:port" if ":" in fb.server else None,
            )  # fmt: skip
        port = 0
        if _perl_true(fb.port):
            assert fb.port is not None
            text = self.getserv(fb.port, protocol)
            if not _perl_true(text):
                raise self.fail(
                    fb.loc.line, fb.loc.col(0), "invalid port for the fallback server",
                    upstream="invalid port for fallback server",
                    found=repr(fb.port), expected=f"a port number below 65536 or a {protocol} service name",
                )  # fmt: skip
            assert text is not None
            port = int(text)
        return RealServer(address=address, port=port, forwarding=Forwarding(fb.forward))

    def resolve_real(self, text: str, loc: _Loc, offset: int, af: Family) -> list[RealServer]:
        m = _REAL.search(text)
        if not m:
            raise self.fail(
                loc.line, loc.col(offset), "invalid real server",
                upstream="invalid address for real server (wrong format)",
                found=repr(text), expected="address[->address][:port] gate|masq|ipip [weight] ...",
                hint="the forwarding method (gate, masq or ipip) is required after the address",
            )  # fmt: skip
        ip1, ip2, port_text, flags = m.group(1), m.group(3), m.group(5) or "0", m.group(6)
        first = self.gethost(ip1, af)
        if first is None:
            raise self.fail(
                loc.line, loc.col(offset + m.start(1)), "invalid address for real server: cannot resolve it",
                upstream=f"invalid address ({ip1}) for real server (could not resolve host)",
                found=repr(ip1), expected=f"an {'IPv4' if af is Family.INET else 'IPv6'} address or a "
                "resolvable host name",
                hint="IPv6 real servers go in brackets under virtual6=: real6=[2001:db8::1]:80 gate"
                if ":" in ip1 or "[" in ip1 else None,
            )  # fmt: skip
        port = self.getserv(port_text, "")
        if port is None:
            raise self.fail(
                loc.line, loc.col(offset + m.start(5)), "invalid port for real server: cannot resolve it",
                upstream=f"invalid port ({port_text}) for real server (could not resolve port)",
                found=repr(port_text), expected="a port number below 65536 or a service name",
            )  # fmt: skip
        fcol = offset + m.start(6)
        if ip2 is None:
            return [self.add_real(first, int(port), flags, loc, fcol)]
        last = self.gethost(ip2, af)
        if last is None:
            raise self.fail(
                loc.line, loc.col(offset + m.start(3)), "invalid end address of the real server range",
                upstream=f"invalid address ({ip2}) for real server (could not resolve end host)",
                found=repr(ip2), expected="an address or a resolvable host name",
            )  # fmt: skip
        if af is Family.INET6:
            raise self.fail(
                loc.line, loc.col(offset), "address ranges are not supported for IPv6",
                upstream="Address range for IPv6 is not supported yet",
                found=repr(m.group(0)), expected="one real6= line per IPv6 real server",
            )  # fmt: skip
        lo, hi = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
        if lo > hi:
            raise self.fail(
                loc.line, loc.col(offset), "invalid range: the first address is above the last",
                upstream=f"Invalid Range: {first}-{last}: First value must be greater than or equal to "
                "the second value",
                found=f"{first}->{last}", expected="first address <= last address",
            )  # fmt: skip
        if hi - lo + 1 > MAX_RANGE:
            raise self.fail(
                loc.line, loc.col(offset), f"range of {hi - lo + 1} addresses is too large",
                upstream=f"Invalid Range: {first}-{last}: more than {MAX_RANGE} addresses",
                found=f"{first}->{last}", expected=f"at most {MAX_RANGE} addresses",
            )  # fmt: skip
        out: list[RealServer] = []
        i = lo
        # ldirectord compares the loop counter as text ("9" > "10"); --strict keeps that.
        while (str(i) <= str(hi)) if self.strict else (i <= hi):
            out.append(self.add_real(str(ipaddress.IPv4Address(i)), int(port), flags, loc, fcol))
            i += 1
        return out

    def add_real(self, address: str, port: int, flags: str, loc: _Loc, fcol: int) -> RealServer:
        m = re.search(r"(\w+)(.*)", flags, A)
        if not m or m.group(1) not in _FORWARDS:
            raise self.fail(
                loc.line, loc.col(fcol + (m.start(1) if m else 0)),
                "forward method must be gate, masq or ipip",
                upstream="forward method must be gate, masq or ipip",
                found=repr(m.group(1) if m else flags), expected="gate, masq or ipip",
            )  # fmt: skip
        forwarding = Forwarding(m.group(1))
        rest = m.group(2)
        base = fcol + m.start(2)
        weight = 1
        if w := re.search(r"\s+(\d+)(.*)", rest, A):
            weight = int(w.group(1))
            base, rest = base + w.start(2), w.group(2)
        request = receive = None
        if rr := re.search(r"\s+\"(.*)\"[, ]\s*\"(.*)\"(.*)", rest, A):
            request = rr.group(1) if rr.group(1).startswith("/") else "/" + rr.group(1)
            receive = rr.group(2)
            base, rest = base + rr.start(3), rr.group(3)
        lower = upper = 0
        if lm := re.search(r"\s+l:(\d+)(.*)", rest, A):
            lower = int(lm.group(1))
            base, rest = base + lm.start(2), lm.group(2)
        if um := re.search(r"\s+u:(\d+)(.*)", rest, A):
            upper = int(um.group(1))
            base, rest = base + um.start(2), um.group(2)
        if junk := re.search(r"\S", rest, A):
            raise self.fail(
                loc.line, loc.col(base + junk.start()), "invalid real server line",
                upstream=f'Invalid real server line, around "{rest}"',
                found=repr(rest.strip()),
                expected='[weight] ["request", "receive"] [l:N] [u:N], in that order',
            )  # fmt: skip
        return RealServer(
            address=address,
            port=port,
            forwarding=forwarding,
            weight=weight,
            lower_threshold=lower,
            upper_threshold=upper,
            request=request,
            receive=receive,
        )


def _clean(raw: str) -> tuple[str, list[int]]:
    """ldirectord's ``s/#.*//; s/\\t/    /g`` on a block line, with a map back to raw columns."""
    out: list[str] = []
    index: list[int] = []
    for pos, ch in enumerate(raw):
        if ch == "#":
            rest = raw[pos:]
            nl = rest.find("\n")
            if nl >= 0:
                out.append("\n")
                index.append(pos + nl)
                for extra_pos in range(pos + nl + 1, len(raw)):
                    out.append(raw[extra_pos])
                    index.append(extra_pos)
            break
        if ch == "\t":
            out.append("    ")
            index.extend([pos] * 4)
        else:
            out.append(ch)
            index.append(pos)
    return "".join(out), index


def _yes_no_hint(value: str) -> str | None:
    if "#" in value:
        return "a trailing comment is not allowed after a global directive; put it on its own line"
    if value.strip() in ("yes", "no"):
        return "remove the trailing blanks after the value"
    if value.lower() in ("yes", "no", "true", "false", "on", "off", "1", "0"):
        return "write exactly yes or no (lower case)"
    return None


def _comment_hint(value: str, *, global_line: bool) -> str | None:
    if "#" in value and global_line:
        return "a trailing comment is not allowed after a global directive; put it on its own line"
    return None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _real(value: object) -> RealServer | None:
    return value if isinstance(value, RealServer) else None


def _tuple(value: object, default: tuple[str, ...]) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else default


# -- directive handlers ------------------------------------------------------------------------
# A handler returns False when the line does not have the directive's shape at all, which
# ldirectord reports as an unknown command.

_GlobalHandler = Callable[[_Parser, int, str, int], bool]
_BlockHandler = Callable[[_Parser, _Block, str, _Loc, int], bool]


def _digits_value(
    p: _Parser, line: int, col: int, value: str, *, name: str, upstream: str, positive: bool
) -> int:
    """ldirectord's ``$v =~ /(\\d+)/ && $1 [&& $1 > 0]``: the first run of digits, not "0"."""
    m = _DIGITS.search(value)
    ok = m is not None and _perl_true(m.group(0)) and (not positive or int(m.group(0)) > 0)
    if not ok or m is None:
        raise p.fail(
            line, col, f"invalid {name} value",
            upstream=upstream, found=repr(value), expected="a positive whole number of seconds"
            if "timeout" in name or "interval" in name else "a positive whole number",
            hint=_comment_hint(value, global_line=True) if "#" in value else None,
        )  # fmt: skip
    if value != m.group(0) and not value[m.end() :].lstrip().startswith("#"):
        p.warn(line, f"{name}: only {m.group(0)!r} of {value!r} is used")
    return int(m.group(0))


def _g_timeout(key: str, upstream: str) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        n = _digits_value(p, line, col, value, name=key, upstream=upstream, positive=True)
        if key == "checktimeout":
            p.g_checktimeout = n
        else:
            p.g_negotiatetimeout = n
        return True

    return handler


def _g_count(key: str, upstream: str) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        p.g[key] = _digits_value(p, line, col, value, name=key, upstream=upstream, positive=False)
        if key == "checkcount":
            p.warn(line, "checkcount option is deprecated and slated for removal.  please see 'failurecount'")
        return True

    return handler


def _g_connecttimeout(p: _Parser, line: int, value: str, col: int) -> bool:
    raise p.fail(
        line, 1, "connecttimeout= was removed from ldirectord",
        upstream="connecttimeout directive deprecated in favour of negotiatetimeout",
        found="connecttimeout=", expected="negotiatetimeout= (or checktimeout=)",
        hint="replace it by negotiatetimeout=",
    )  # fmt: skip


def _g_yes_no(key: str) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        if value not in ("yes", "no"):
            raise p.fail(
                line, col, f"{key} must be 'yes' or 'no'",
                upstream=f"{key} must be 'yes' or 'no'",
                found=repr(value), expected="yes or no", hint=_yes_no_hint(value),
            )  # fmt: skip
        if key == "fork":
            p.fork = value == "yes"
        else:
            p.g[key] = value == "yes"
        return True

    return handler


def _g_fallback(family: Family) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        loc = _Loc(line, p.lines[line - 1], list(range(len(p.lines[line - 1]))))
        fb = p.parse_fallback(value, None, loc, col - 1)
        tcp = p.resolve_fallback(fb, "tcp", family)
        p.resolve_fallback(fb, "udp", family)
        p.g["fallback" if family is Family.INET else "fallback6"] = tcp
        return True

    return handler


def _g_nonempty(key: str, upstream: str) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        if value == "":
            raise p.fail(line, col, f"{key}= needs a value", upstream=upstream, found="nothing",
                         expected="a value")  # fmt: skip
        p.g[key] = value
        return True

    return handler


def _g_quoted(key: str) -> _GlobalHandler:
    def handler(p: _Parser, line: int, value: str, col: int) -> bool:
        inner = _quoted(value)
        if inner is None:
            return False
        p.g[key] = inner
        if key == "callback":
            p.warn(line, "callback= is accepted but not run: configuration changes travel through the log")
        return True

    return handler


def _g_execute(p: _Parser, line: int, value: str, col: int) -> bool:
    if value not in p.execute:
        p.execute.append(value)
    return True


def _read_emailalert(p: _Parser, line: int, col: int, value: str) -> str:
    m = re.fullmatch(r"\"([^\"]*)\"", value)
    addr = m.group(1) if m else value
    if addr == "":
        raise p.fail(line, col, "no email address given", upstream="no email address specified",
                     found=repr(value), expected="an address, e.g. \"ops@example.com\"")  # fmt: skip
    return addr


def _parse_emailalertstatus(p: _Parser, line: int, col: int, value: str) -> tuple[str, ...]:
    words = re.split(r"\s*,\s*", value, flags=A)
    while words and words[-1] == "":
        words.pop()
    none = "none" in words
    for w in words:
        if w == "none":
            continue
        if w not in _EMAIL_STATUSES:
            raise p.fail(
                line, col, "invalid email alert status", upstream=f'invalid email alert status at: "{w}"',
                found=repr(w), expected="all, none, starting, running, stopping or reloading",
                hint=_comment_hint(value, global_line=True),
            )  # fmt: skip
        if none:
            raise p.fail(
                line, col, "email alert status 'none' cannot be combined with others",
                upstream=f'invalid email alert status: "{w}" specified with "none"',
                found=repr(value), expected="none alone, or a list without none",
            )  # fmt: skip
    return tuple(words)


def _g_emailalert(p: _Parser, line: int, value: str, col: int) -> bool:
    p.g["emailalert"] = _read_emailalert(p, line, col, value)
    return True


def _g_emailalertfreq(p: _Parser, line: int, value: str, col: int) -> bool:
    m = re.match(r"\d+", value, A)
    if not m:
        raise p.fail(line, col, "invalid email alert frequency", upstream="invalid email alert frequency",
                     found=repr(value), expected="a number of seconds")  # fmt: skip
    p.g["emailalertfreq"] = int(m.group(0))
    return True


def _g_emailalertstatus(p: _Parser, line: int, value: str, col: int) -> bool:
    p.g["emailalertstatus"] = _parse_emailalertstatus(p, line, col, value)
    return True


def _g_smtp(p: _Parser, line: int, value: str, col: int) -> bool:
    m = re.match(r"[0-9A-Za-z._+-]+", value, A)
    if not m:
        raise p.fail(line, col, "invalid SMTP server address", upstream="invalid SMTP server address",
                     found=repr(value), expected="a host name or address")  # fmt: skip
    p.g["smtp"] = m.group(0)
    return True


def _g_maintenancedir(p: _Parser, line: int, value: str, col: int) -> bool:
    if value == "":
        raise p.fail(line, col, "maintenancedir= needs a directory",
                     upstream="maintenance directory not specified", found="nothing",
                     expected="a directory path")  # fmt: skip
    p.g["maintenancedir"] = value
    return True


_GLOBAL_HANDLERS: dict[str, _GlobalHandler] = {
    "checktimeout": _g_timeout("checktimeout", "invalid check timeout value"),
    "connecttimeout": _g_connecttimeout,
    "negotiatetimeout": _g_timeout("negotiatetimeout", "invalid negotiate timeout value"),
    "checkinterval": _g_count("checkinterval", "invalid check interval value"),
    "checkcount": _g_count("checkcount", "invalid check count value"),
    "failurecount": _g_count("failurecount", "invalid failure count value"),
    "fallback": _g_fallback(Family.INET),
    "fallback6": _g_fallback(Family.INET6),
    "fallbackcommand": _g_nonempty("fallbackcommand", "invalid fallback command"),
    "autoreload": _g_yes_no("autoreload"),
    "callback": _g_quoted("callback"),
    "logfile": _g_quoted("logfile"),
    "execute": _g_execute,
    "fork": _g_yes_no("fork"),
    "quiescent": _g_yes_no("quiescent"),
    "readdquiescent": _g_yes_no("readdquiescent"),
    "emailalert": _g_emailalert,
    "emailalertfreq": _g_emailalertfreq,
    "emailalertstatus": _g_emailalertstatus,
    "emailalertfrom": _g_nonempty("emailalertfrom", "no email from address specified"),
    "cleanstop": _g_yes_no("cleanstop"),
    "smtp": _g_smtp,
    "maintenancedir": _g_maintenancedir,
}
_GLOBAL_ONLY = frozenset(
    {"autoreload", "callback", "logfile", "execute", "fork", "supervised", "readdquiescent",
     "emailalertfrom", "maintenancedir", "virtual", "virtual6"}
)  # fmt: skip


# -- block handlers ----------------------------------------------------------------------------


def _b_real(v6: bool) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        if (b.af is Family.INET) == v6:
            name = "real6" if v6 else "real"
            want = "real" if b.af is Family.INET else "real6"
            raise p.fail(
                loc.line, loc.col(0), f"{name}= is not allowed in a {'virtual' if v6 else 'virtual6'}"
                " block", upstream=f'cannot specify "{name}" here.  please use "{want}" instead',
                found=f"{name}=", expected=f"{want}=",
            )  # fmt: skip
        b.reals_todo.append((value, loc, off))
        return True

    return handler


def _b_quoted(key: str, upstream: str, *, slash: bool = False, word: bool = False) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        inner = _quoted(value)
        if inner is None:
            return False
        if word:
            m = re.search(r"\w+", inner, A)
            if not m:
                raise p.fail(loc.line, loc.col(off), f"invalid {key}", upstream=upstream,
                             found=repr(inner), expected="a word")  # fmt: skip
            return True  # load= is read and never used by ldirectord
        if inner == "":
            raise p.fail(loc.line, loc.col(off), f"{key}= must not be empty", upstream=upstream,
                         found='""', expected=f"a non-empty {key} in double quotes")  # fmt: skip
        if slash and not inner.startswith("/"):
            inner = "/" + inner
        setattr(b, key, inner)
        return True

    return handler


def _b_checktype(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    if m := _DIGITS.search(value):
        b.checktype = str(int(m.group(0)))
        return True
    m2 = re.search(r"[\w-]+", value, A)
    if m2 and m2.group(0) in _CHECKTYPES:
        b.checktype = m2.group(0)
        return True
    raise p.fail(
        loc.line, loc.col(off), "invalid checktype",
        upstream=f"checktype must be {_CHECKTYPE_TEXT}",
        found=repr(value), expected=_CHECKTYPE_TEXT,
    )  # fmt: skip


def _b_command(key: str, upstream: str) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        inner = _quoted(value)
        text = inner if inner is not None else value
        if text == "":
            raise p.fail(loc.line, loc.col(off), f"{key}= needs a command", upstream=upstream,
                         found="nothing", expected="a command, e.g. \"/usr/local/bin/check\"")  # fmt: skip
        setattr(b, key, text)
        return True

    return handler


def _b_number(key: str, upstream: str, kind: type) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        m = _DIGITS.search(value)
        if m is None or not _perl_true(m.group(0)):
            raise p.fail(loc.line, loc.col(off), f"invalid {key} value", upstream=upstream,
                         found=repr(value), expected="a positive whole number")  # fmt: skip
        setattr(b, key, kind(int(m.group(0))))
        if key == "checkcount":
            p.warn(
                loc.line, "checkcount option is deprecated and slated for removal.  please see 'failurecount'"
            )
        if key == "checkinterval":
            b.checkinterval_line = loc.line
        return True

    return handler


def _b_connecttimeout(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    raise p.fail(
        loc.line, loc.col(0), "connecttimeout= was removed from ldirectord",
        upstream="connecttimeout directive deprecated in favour of negotiatetimeout",
        found="connecttimeout=", expected="negotiatetimeout= (or checktimeout=)",
        hint="replace it by negotiatetimeout=",
    )  # fmt: skip


def _b_checkport(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = _DIGITS.search(value)
    if m is None:
        raise p.fail(loc.line, loc.col(off), "invalid checkport", upstream="invalid port",
                     found=repr(value), expected="a port number")  # fmt: skip
    n = int(m.group(0))
    if not 0 < n < 65536:
        raise p.fail(loc.line, loc.col(off), "checkport out of range",
                     upstream="checkport must be in range 1..65536", found=m.group(0),
                     expected="1..65535")  # fmt: skip
    b.checkport = n
    return True


def _b_scheduler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.search(r"[a-z]+", value)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid scheduler",
                     upstream="invalid scheduler, should be only lowercase letters (a-z)",
                     found=repr(value),
                     expected="a lower-case scheduler name (rr, wrr, lc, wlc, sh, ...)")  # fmt: skip
    b.scheduler = m.group(0)
    return True


def _b_persistent(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = _DIGITS.search(value)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid persistent timeout",
                     upstream="invalid persistent timeout", found=repr(value),
                     expected="a number of seconds")  # fmt: skip
    b.persistent = int(m.group(0))
    return True


def _b_schedflags(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.search(r"\S+", value, A)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid sched-flags", upstream="invalid sched-flags",
                     found="nothing", expected="flags such as sh-fallback,sh-port")  # fmt: skip
    b.schedflags = tuple(m.group(0).split(","))
    return True


def _b_netmask(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    if b.af is Family.INET6:
        if not re.fullmatch(r"\d+", value, A) or not 1 <= int(value) <= 128:
            raise p.fail(loc.line, loc.col(off), "invalid netmask for an IPv6 service",
                         upstream="invalid netmask: a prefix length between 1 and 128 is required",
                         found=repr(value), expected="a prefix length between 1 and 128")  # fmt: skip
    elif not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value, A):
        raise p.fail(loc.line, loc.col(off), "invalid netmask",
                     upstream="invalid netmask: dotted quad notation is required",
                     found=repr(value), expected="a dotted quad such as 255.255.255.0",
                     hint="remove trailing blanks" if value.strip() != value else None)  # fmt: skip
    b.netmask = value
    return True


def _b_protocol(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.search(r"\w+", value, A)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid protocol", upstream="invalid protocol",
                     found=repr(value), expected="tcp, udp or fwm")  # fmt: skip
    word = m.group(0)
    if b.protocol == "fwm":
        if word != "fwm":
            raise p.fail(loc.line, loc.col(off), "a firewall-mark service has protocol fwm",
                         upstream="protocol must be fwm if the virtual service is a fwmark (a number)",
                         found=repr(word), expected="fwm")  # fmt: skip
    elif word in ("tcp", "udp"):
        b.protocol = word
    else:
        raise p.fail(loc.line, loc.col(off), "invalid protocol for an address:port service",
                     upstream="protocol must be tcp or udp if the virtual service is an address and port",
                     found=repr(word), expected="tcp or udp")  # fmt: skip
    return True


def _b_yes_no(key: str) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        if value not in ("yes", "no"):
            raise p.fail(loc.line, loc.col(off), f"{key} must be 'yes' or 'no'",
                         upstream=f"{key} must be 'yes' or 'no'", found=repr(value),
                         expected="yes or no", hint=_yes_no_hint(value))  # fmt: skip
        setattr(b, key, value == "yes")
        return True

    return handler


def _b_service(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.search(r"\w+", value, A)
    if not m or m.group(0) not in SERVICES:
        raise p.fail(loc.line, loc.col(off), "unknown service", upstream=f"service must be {_SERVICES_TEXT}",
                     found=repr(m.group(0) if m else value), expected=_SERVICES_TEXT,
                     hint="for a service ldirectord cannot check, use service=none with checktype=connect"
                     " or checktype=external")  # fmt: skip
    b.service = m.group(0)
    if b.service == "ftp" and b.login is None:
        b.login = "anonymous"
    return True


def _b_httpmethod(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.search(r"\w+", value, A)
    if not m or m.group(0).upper() not in ("GET", "HEAD"):
        raise p.fail(loc.line, loc.col(off), "httpmethod must be GET or HEAD",
                     upstream="httpmethod must be GET or HEAD", found=repr(value),
                     expected="GET or HEAD")  # fmt: skip
    b.httpmethod = m.group(0).upper()
    return True


def _b_virtualhost(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.match(r"\"?([^\"]*)\"?", value)
    assert m is not None
    b.virtualhost = m.group(1)
    return True


def _b_fallback(v6: bool) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        if (b.af is Family.INET) == v6:
            name = "fallback6" if v6 else "fallback"
            want = "fallback" if b.af is Family.INET else "fallback6"
            raise p.fail(
                loc.line, loc.col(0), f"{name}= is not allowed in this block",
                upstream=f'cannot specify "{name}" here.  please use "{want}" instead',
                found=f"{name}=", expected=f"{want}=",
            )  # fmt: skip
        b.fallback = p.parse_fallback(value, b.port_text, loc, off)
        return True

    return handler


def _b_emailalert(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    b.emailalert = _read_emailalert(p, loc.line, loc.col(off), value)
    return True


def _b_emailalertfreq(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.match(r"\d+", value, A)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid email alert frequency",
                     upstream="invalid email alert frequency", found=repr(value),
                     expected="a number of seconds")  # fmt: skip
    b.emailalertfreq = int(m.group(0))
    return True


def _b_emailalertstatus(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    b.emailalertstatus = _parse_emailalertstatus(p, loc.line, loc.col(off), value)
    return True


def _b_monitorfile(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    inner = _quoted(value)
    path = inner if inner is not None else value
    if path == "":
        raise p.fail(loc.line, loc.col(off), "monitorfile= needs a file name",
                     upstream="unable to open monitorfile : No such file or directory",
                     found="nothing", expected="a file path")  # fmt: skip
    b.monitorfile = path
    return True


def _b_smtp(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
    m = re.match(r"[0-9A-Za-z._+-]+", value, A)
    if not m:
        raise p.fail(loc.line, loc.col(off), "invalid SMTP server address",
                     upstream="invalid SMTP server address", found=repr(value),
                     expected="a host name or address")  # fmt: skip
    b.smtp = m.group(0)
    return True


def _b_text(key: str) -> _BlockHandler:
    def handler(p: _Parser, b: _Block, value: str, loc: _Loc, off: int) -> bool:
        setattr(b, key, value)
        return True

    return handler


_BLOCK_HANDLERS: dict[str, _BlockHandler] = {
    "real": _b_real(False),
    "real6": _b_real(True),
    "request": _b_quoted("request", "no request string specified", slash=True),
    "receive": _b_quoted("receive", "invalid receive string"),
    "checktype": _b_checktype,
    "checkcommand": _b_command("checkcommand", "invalid check command"),
    "checktimeout": _b_number("checktimeout", "invalid check timeout", float),
    "connecttimeout": _b_connecttimeout,
    "negotiatetimeout": _b_number("negotiatetimeout", "invalid negotiate timeout", float),
    "checkcount": _b_number("checkcount", "invalid check count", int),
    "failurecount": _b_number("failurecount", "invalid failure count", int),
    "checkinterval": _b_number("checkinterval", "invalid checkinterval", float),
    "checkport": _b_checkport,
    "login": _b_quoted("login", "invalid login string"),
    "passwd": _b_quoted("passwd", "invalid password"),
    "database": _b_quoted("database", "invalid database"),
    "secret": _b_quoted("secret", "invalid secret"),
    "load": _b_quoted("load", "invalid string for load testing", word=True),
    "scheduler": _b_scheduler,
    "persistent": _b_persistent,
    "schedflags": _b_schedflags,
    "netmask": _b_netmask,
    "protocol": _b_protocol,
    "ops": _b_yes_no("ops"),
    "service": _b_service,
    "httpmethod": _b_httpmethod,
    "virtualhost": _b_virtualhost,
    "fallback": _b_fallback(False),
    "fallback6": _b_fallback(True),
    "fallbackcommand": _b_command("fallbackcommand", "invalid fallback command"),
    "quiescent": _b_yes_no("quiescent"),
    "emailalert": _b_emailalert,
    "emailalertfreq": _b_emailalertfreq,
    "emailalertstatus": _b_emailalertstatus,
    "monitorfile": _b_monitorfile,
    "cleanstop": _b_yes_no("cleanstop"),
    "smtp": _b_smtp,
    "servicename": _b_text("servicename"),
    "comment": _b_text("comment"),
}
_VIRTUAL_ONLY = frozenset(_BLOCK_HANDLERS) - frozenset(_GLOBAL_HANDLERS)


# -- public API --------------------------------------------------------------------------------


def parse_text(
    text: str,
    filename: str = "ldirectord.cf",
    resolver: Resolver | None = None,
    strict: bool = False,
    *,
    warnings: list[ConfigWarning] | None = None,
) -> Config:
    """Parse ldirectord.cf text into a :class:`Config`, or raise :class:`ConfigError`.

    ``resolver`` answers host and service names (default: the system's, like ldirectord);
    ``strict`` reproduces ldirectord's known bugs too; ``warnings``, when given, collects what
    ldirectord would warn about.
    """
    return _Parser(text, filename, resolver or SystemResolver(), strict, warnings).parse()


def parse_file(
    path: str | Path,
    resolver: Resolver | None = None,
    strict: bool = False,
    *,
    warnings: list[ConfigWarning] | None = None,
    filename: str | None = None,
) -> Config:
    """Read and parse an ldirectord.cf file (bytes that are not UTF-8 are kept, escaped)."""
    name = filename if filename is not None else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            filename=name,
            line=0,
            column=0,
            upstream=f"can not open file {name}",
        ) from exc
    return parse_text(data.decode("utf-8", "surrogateescape"), name, resolver, strict, warnings=warnings)
