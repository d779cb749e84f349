"""What to check, resolved: one :class:`CheckSpec` per (virtual service, real server).

Pure. :func:`specs_from_config` applies ldirectord's defaulting rules once, so a probe never looks
at the configuration again:

* ``checktimeout`` and ``negotiatetimeout`` are mutual defaults (per virtual, then global; the
  global pair is already resolved by the parser the same way);
* the check port is ``checkport``, else the real server's port, else the service's well-known port
  (``ld_checkport``);
* ``request`` / ``receive`` come from the real server line when it has both, else from the
  virtual (``request`` defaults to ``/``, ``receive`` to the empty string);
* the HTTP URL is built as ldirectord's ``ld_setup`` does (``http_proxy`` takes the request as an
  absolute URL);
* ``checkinterval`` of a virtual applies only with ``fork = yes`` (ldirectord ignores it
  otherwise), else the global one;
* a numeric ``checktype`` N is the combined check: N connect checks, then one negotiate.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvs_events.domain.config import Config, GlobalSettings, Protocol, RealServer, VirtualService
from lvs_events.domain.state import RealKey

__all__ = ["SERVICE_PORTS", "CheckSpec", "spec_for", "specs_from_config"]

#: ldirectord's ``ld_service_to_port``.
SERVICE_PORTS: dict[str, int] = {
    "ftp": 21, "smtp": 25, "dns": 53, "http": 80, "pop": 110, "nntp": 119, "imap": 143, "ldap": 389,
    "https": 443, "submission": 587, "ldaps": 636, "imaps": 993, "pops": 995, "oracle": 1521,
    "radius": 1812, "http_proxy": 3128, "mysql": 3306, "sip": 5060, "pgsql": 5432,
}  # fmt: skip

CHECKTYPES = ("connect", "negotiate", "ping", "external", "external-perl", "off", "on")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """Everything one probe of one real server needs. Equal specs mean "the same check"."""

    virtual: str  # virtual service key, e.g. "TCP 10.0.0.1:80"
    real: str  # real server key, e.g. "192.168.1.10:80"
    checktype: str  # connect | negotiate | ping | external | external-perl | off | on | combined
    connects: int  # combined: connect checks between two negotiate checks
    service: str  # http, https, ..., none
    protocol: Protocol  # of the virtual service (UDP changes connect and some negotiate checks)
    address: str  # real server address (no brackets)
    port: int  # the port probes connect to (checkport / real port / service port)
    real_port: int  # the real server's own port (argument of external checks)
    virtual_address: str  # virtual address or firewall mark (argument of external checks)
    virtual_port: int
    request: str  # with ldirectord's leading "/"
    receive: str  # regular expression; "" = not checked
    url: str  # http/https/http_proxy: the URL requested
    httpmethod: str
    virtualhost: str | None
    login: str
    passwd: str
    database: str
    secret: str
    checkcommand: str
    checktimeout: float
    negotiatetimeout: float
    connecttimeout: float | None  # bounds the TCP connect phase of negotiate checks when set
    checkinterval: float
    checkcount: int
    failurecount: int

    @property
    def key(self) -> RealKey:
        return (self.virtual, self.real)

    @property
    def label(self) -> str:
        """The check type as reported in events: ``negotiate:http``, ``3:http``, ``connect``..."""
        if self.checktype == "negotiate":
            return f"negotiate:{self.service}"
        if self.checktype == "combined":
            return f"{self.connects}:{self.service}"
        return self.checktype


def _timeouts(v: VirtualService, g: GlobalSettings) -> tuple[float, float]:
    c = v.check
    checktimeout = c.checktimeout if c.checktimeout is not None else c.negotiatetimeout
    if checktimeout is None:
        checktimeout = g.checktimeout
    negotiatetimeout = c.negotiatetimeout if c.negotiatetimeout is not None else c.checktimeout
    if negotiatetimeout is None:
        negotiatetimeout = g.negotiatetimeout
    return float(checktimeout), float(negotiatetimeout)


def _url(service: str, address: str, port: int, request: str, per_real: bool) -> str:
    scheme = "http" if service == "http_proxy" else service
    uri = request.lstrip("/")
    host = f"[{address}]" if ":" in address else address
    if per_real and f"{scheme}://" in request:
        return uri
    if service == "http_proxy" and not per_real:
        return uri
    return f"{scheme}://{host}:{port}/{uri}"


def spec_for(v: VirtualService, r: RealServer, g: GlobalSettings) -> CheckSpec:
    c = v.check
    checktype = c.checktype
    connects = 0
    if checktype.isdigit():
        connects = int(checktype)
        checktype = "combined"
    service = c.service or "none"
    if c.checkport is not None:
        port = c.checkport
    elif r.port > 0:
        port = r.port
    else:
        port = SERVICE_PORTS.get(service, 0)
    per_real = r.request is not None and r.receive is not None
    if per_real:
        request = r.request or "/"
        receive = r.receive or ""
    else:
        request = r.request if r.request is not None else (c.request or "/")
        receive = c.receive or ""
    checktimeout, negotiatetimeout = _timeouts(v, g)
    interval = c.checkinterval if (g.fork and c.checkinterval is not None) else g.checkinterval
    virtual_address = v.address if v.address is not None else str(v.fwmark or 0)
    sip_login = c.login or ""
    return CheckSpec(
        virtual=v.key,
        real=r.key,
        checktype=checktype,
        connects=connects,
        service=service,
        protocol=v.protocol,
        address=r.address,
        port=port,
        real_port=r.port,
        virtual_address=virtual_address,
        virtual_port=v.port,
        request=request,
        receive=receive,
        url=_url(service, r.address, port, request, per_real),
        httpmethod=(c.httpmethod or "GET").upper(),
        virtualhost=c.virtualhost,
        login=sip_login,
        passwd=c.passwd or "",
        database=c.database or "",
        secret=c.secret or "",
        checkcommand=c.checkcommand or "/bin/true",
        checktimeout=checktimeout,
        negotiatetimeout=negotiatetimeout,
        connecttimeout=c.connecttimeout,
        checkinterval=float(interval),
        checkcount=max(1, c.checkcount if c.checkcount is not None else g.checkcount),
        failurecount=max(1, c.failurecount if c.failurecount is not None else g.failurecount),
    )


def specs_from_config(config: Config | None) -> dict[RealKey, CheckSpec]:
    """Every (virtual, real) pair of the config, in file order."""
    out: dict[RealKey, CheckSpec] = {}
    if config is None:
        return out
    for v in config.virtuals:
        for r in v.reals:
            spec = spec_for(v, r, config.globals)
            out[spec.key] = spec
    return out
