"""Write a :class:`Config` back as ldirectord.cf text.

``parse_text(format_config(c)) == c`` for every ``c`` the parser produces: addresses and ports are
written numerically (so re-reading needs no resolver), defaults are left out, and every value is
written in a form ldirectord reads back unchanged (quoted where ldirectord takes quotes, ``00`` for
a zero that ldirectord would otherwise refuse as false).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lvs_events.domain.config import (
    CheckSettings,
    Config,
    Family,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)

from .parser import derived_service

__all__ = ["format_config", "format_config_diff"]

_INDENT = "    "


def _num(value: float | int) -> str:
    """A whole number as ldirectord reads it back; 0 as ``00`` (ldirectord takes "0" for false)."""
    n = int(value)
    return "00" if n == 0 else str(n)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _email(value: str) -> str:
    return value if '"' in value else f'"{value}"'


def _fallback(server: RealServer) -> str:
    return f"{_host(server.address)}:{server.port} {server.forwarding.value}"


def _real(server: RealServer) -> str:
    text = f"{_host(server.address)}:{server.port} {server.forwarding.value} {server.weight}"
    if server.request is not None or server.receive is not None:
        text += f' "{server.request or "/"}", "{server.receive or ""}"'
    if server.lower_threshold:
        text += f" l:{server.lower_threshold}"
    if server.upper_threshold:
        text += f" u:{server.upper_threshold}"
    return text


def _globals(g: GlobalSettings) -> Iterable[str]:  # noqa: PLR0912 (one branch per directive)
    defaults = GlobalSettings()
    if (g.checktimeout, g.negotiatetimeout) != (defaults.checktimeout, defaults.negotiatetimeout):
        yield f"checktimeout={_num(g.checktimeout)}"
        yield f"negotiatetimeout={_num(g.negotiatetimeout)}"
    if g.checkinterval != defaults.checkinterval:
        yield f"checkinterval={_num(g.checkinterval)}"
    if g.checkcount != defaults.checkcount:
        yield f"checkcount={_num(g.checkcount)}"
    if g.failurecount != defaults.failurecount:
        yield f"failurecount={_num(g.failurecount)}"
    if g.autoreload:
        yield "autoreload=yes"
    if g.callback is not None:
        yield f'callback="{g.callback}"'
    if g.fallback is not None:
        yield f"fallback={_fallback(g.fallback)}"
    if g.fallback6 is not None:
        yield f"fallback6={_fallback(g.fallback6)}"
    if g.fallbackcommand is not None:
        yield f"fallbackcommand={g.fallbackcommand}"
    if g.logfile is not None:
        yield f'logfile="{g.logfile}"'
    if g.emailalert is not None:
        yield f"emailalert={_email(g.emailalert)}"
    if g.emailalertfreq != defaults.emailalertfreq:
        yield f"emailalertfreq={int(g.emailalertfreq)}"
    if g.emailalertstatus != defaults.emailalertstatus:
        yield f"emailalertstatus={','.join(g.emailalertstatus)}"
    if g.emailalertfrom is not None:
        yield f"emailalertfrom={g.emailalertfrom}"
    if g.smtp is not None:
        yield f"smtp={g.smtp}"
    for instance in g.execute:
        yield f"execute={instance}"
    if g.fork:
        yield "fork=yes"
    if g.supervised:
        yield "supervised=yes"
    if g.quiescent:
        yield "quiescent=yes"
    if g.readdquiescent:
        yield "readdquiescent=yes"
    if not g.cleanstop:
        yield "cleanstop=no"
    if g.maintenancedir is not None:
        yield f"maintenancedir={g.maintenancedir}"


def _check(v: VirtualService, c: CheckSettings) -> Iterable[str]:
    yield f"checktype={c.checktype}"
    derived = "none" if v.protocol is Protocol.FWM else derived_service(str(v.port))
    if c.service is not None and c.service != derived:
        yield f"service={c.service}"
    if c.request is not None:
        yield f'request="{c.request}"'
    if c.receive is not None:
        yield f'receive="{c.receive}"'
    if c.httpmethod != "GET":
        yield f"httpmethod={c.httpmethod}"
    if c.virtualhost is not None:
        yield f'virtualhost="{c.virtualhost}"'
    if c.checkport is not None:
        yield f"checkport={c.checkport}"
    for key in ("login", "passwd", "database", "secret", "checkcommand"):
        value = getattr(c, key)
        if value is not None:
            yield f'{key}="{value}"'
    for key in ("checktimeout", "negotiatetimeout", "checkinterval", "checkcount", "failurecount"):
        value = getattr(c, key)
        if value is not None:
            yield f"{key}={_num(value)}"
    if c.cleanstop is not None:
        yield f"cleanstop={_yes(c.cleanstop)}"


def _virtual(v: VirtualService) -> Iterable[str]:  # noqa: PLR0912 (one branch per directive)
    six = "6" if v.family is Family.INET6 else ""
    if v.protocol is Protocol.FWM or v.fwmark is not None:
        yield f"virtual{six}={v.fwmark}"
    else:
        assert v.address is not None
        yield f"virtual{six}={_host(v.address)}:{v.port}"
    body: list[str] = [f"protocol={v.protocol.value}"]
    body += [f"real{six}={_real(r)}" for r in v.reals]
    if v.fallback is not None:
        body.append(f"fallback{six}={_fallback(v.fallback)}")
    body.append(f"scheduler={v.scheduler}")
    if v.persistent is not None:
        body.append(f"persistent={v.persistent}")
    if v.netmask is not None:
        body.append(f"netmask={v.netmask}")
    if v.ops:
        body.append("ops=yes")
    if v.schedflags:
        body.append(f"schedflags={','.join(v.schedflags)}")
    body += _check(v, v.check)
    if v.fallbackcommand is not None:
        body.append(f'fallbackcommand="{v.fallbackcommand}"')
    if v.quiescent is not None:
        body.append(f"quiescent={_yes(v.quiescent)}")
    if v.emailalert is not None:
        body.append(f"emailalert={_email(v.emailalert)}")
    if v.emailalertfreq is not None:
        body.append(f"emailalertfreq={v.emailalertfreq}")
    if v.emailalertstatus is not None:
        body.append(f"emailalertstatus={','.join(v.emailalertstatus)}")
    if v.smtp is not None:
        body.append(f"smtp={v.smtp}")
    if v.monitorfile is not None:
        body.append(f'monitorfile="{v.monitorfile}"')
    if v.servicename is not None:
        body.append(f"servicename={v.servicename}")
    if v.comment is not None:
        body.append(f"comment={v.comment}")
    for line in body:
        yield _INDENT + line


def format_config(config: Config) -> str:
    """The ldirectord.cf text of ``config`` (globals first, then one block per virtual service)."""
    lines = list(_globals(config.globals))
    for v in config.virtuals:
        lines.append("")
        lines.extend(_virtual(v))
    return "\n".join(lines) + "\n" if lines else ""


def _changed_lines(old: list[str], new: list[str]) -> list[str]:
    """``-``/``+`` lines turning ``old`` into ``new`` (a line diff; equal lines left out)."""
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            out += [f"-{line}" for line in old[i1:i2]]
        if tag in ("replace", "insert"):
            out += [f"+{line}" for line in new[j1:j2]]
    return out


def format_config_diff(old: Config | None, new: Config) -> list[str]:
    """What turns ``old`` into ``new``, as ldirectord.cf lines: ``-`` removed, ``+`` added, `` ``
    (one space) the ``virtual=`` line of a changed service; globals first, then each service that
    is added, changed or removed. Empty: the two configurations write the same file."""
    old_globals = list(_globals(old.globals)) if old is not None else []
    lines = _changed_lines(old_globals, list(_globals(new.globals)))
    before = {v.key: v for v in (old.virtuals if old is not None else ())}
    after = {v.key: v for v in new.virtuals}
    for key, v in after.items():
        prev = before.get(key)
        block = list(_virtual(v))
        if prev is None:
            lines += [f"+{line}" for line in block]
            continue
        prev_block = list(_virtual(prev))
        if prev_block != block:
            lines.append(f" {block[0]}")
            lines += _changed_lines(prev_block[1:], block[1:])
    for key, v in before.items():
        if key not in after:
            lines += [f"-{line}" for line in _virtual(v)]
    return lines
