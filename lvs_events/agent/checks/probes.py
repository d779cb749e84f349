"""Which probe runs for a spec, and its overall timeout (as ldirectord bounds each check).

=================  ==========================================  =====================================
check              probe                                       bounded by
=================  ==========================================  =====================================
connect (TCP)      TCP connect                                 checktimeout
connect (UDP)      ICMP echo                                   checktimeout x checkcount
ping               ICMP echo                                   checktimeout x checkcount
external(-perl)    ``checkcommand`` subprocess                 checktimeout
negotiate          the service's protocol                      negotiatetimeout (ldap, ldaps,
                                                               radius: checktimeout, their alarm)
N (combined)       N connect checks, then one negotiate        as connect / as negotiate
=================  ==========================================  =====================================
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from lvs_events.agent.checks import dbs, directory, dns, mail, udp
from lvs_events.agent.checks.base import Result
from lvs_events.agent.checks.http import check_http
from lvs_events.agent.checks.ping import ping
from lvs_events.agent.checks.simple import check_connect, check_external, check_external_perl, check_none
from lvs_events.agent.checks.spec import CheckSpec
from lvs_events.agent.commands import NO_CONSENT, CommandConsent

__all__ = ["NEGOTIATORS", "Probe", "plan"]

Probe = Callable[[CheckSpec], Awaitable[Result]]


async def _ping(spec: CheckSpec) -> Result:
    return await ping(spec)


async def _unsupported(spec: CheckSpec) -> Result:
    return Result(False, f"service {spec.service!r} is not supported")


NEGOTIATORS: dict[str, Probe] = {
    "http": check_http,
    "https": check_http,
    "http_proxy": check_http,
    "ftp": mail.check_ftp,
    "smtp": mail.check_smtp,
    "submission": mail.check_smtp,
    "pop": mail.check_pop,
    "pops": mail.check_pop,
    "imap": mail.check_imap,
    "imaps": mail.check_imap,
    "nntp": mail.check_nntp,
    "ldap": directory.check_ldap,
    "ldaps": directory.check_ldap,
    "dns": dns.check_dns,
    "mysql": dbs.check_mysql,
    "pgsql": dbs.check_pgsql,
    "oracle": dbs.check_oracle,
    "radius": udp.check_radius,
    "sip": udp.check_sip,
    "simpletcp": udp.check_simpletcp,
    "none": check_none,
}

_CHECKTIMEOUT_BOUND = frozenset({"ldap", "ldaps", "radius"})


def plan(
    spec: CheckSpec, negotiate: bool, consent: CommandConsent = NO_CONSENT
) -> tuple[Probe, float, str]:
    """The probe, its timeout and a short name for the detail (``connect``, ``negotiate``...).

    ``negotiate`` selects the negotiate half of a combined check. ``consent`` decides whether an
    external check's command may run (see :mod:`lvs_events.agent.commands`; default: never).
    """
    ct = spec.checktype
    if ct == "negotiate" or (ct == "combined" and negotiate):
        probe = NEGOTIATORS.get(spec.service, _unsupported)
        timeout = spec.checktimeout if spec.service in _CHECKTIMEOUT_BOUND else spec.negotiatetimeout
        return probe, timeout, "negotiate"
    if ct in ("connect", "combined"):
        if spec.protocol.value == "udp":
            return _ping, spec.checktimeout * spec.checkcount, "connect"
        return check_connect, spec.checktimeout, "connect"
    if ct == "ping":
        return _ping, spec.checktimeout * spec.checkcount, "ping"
    if ct == "external":
        return functools.partial(check_external, consent=consent), spec.checktimeout, "external"
    if ct == "external-perl":
        return functools.partial(check_external_perl, consent=consent), spec.checktimeout, "external-perl"
    raise ValueError(f"checktype {ct!r} is not probed")
