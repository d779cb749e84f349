"""Property: every valid Config (in the parser's normal form) survives print then parse."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from lvs_events.ldirectord import SERVICES, StaticResolver, derived_service, format_config, parse_text

SOURCE = "generated.cf"
_SAFE = st.characters(
    codec="utf-8",
    exclude_characters='#\t\n\r"\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0',
    exclude_categories=("Cs", "Cc"),
)
# text inside a virtual block: no '#' (comment), no tab (widened), no quote (so quoting stays simple)
block_text = st.text(_SAFE, min_size=1, max_size=20)
# a raw (unquoted) value: ldirectord drops leading blanks
raw_text = block_text.filter(lambda s: not s[0].isspace())
global_text = st.text(
    st.characters(codec="utf-8", exclude_characters='\n\r"', exclude_categories=("Cs", "Cc")), max_size=20
)
raw_global = global_text.filter(lambda s: s != "" and not s[0].isspace())
small = st.integers(min_value=0, max_value=100_000)
positive = st.integers(min_value=1, max_value=100_000)


def addresses(family: Family) -> st.SearchStrategy[str]:
    if family is Family.INET:
        return st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    return st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


def reals(family: Family) -> st.SearchStrategy[RealServer]:
    pair = st.one_of(
        st.just((None, None)),
        st.tuples(block_text.map(lambda s: "/" + s.lstrip("/")), st.text(_SAFE, max_size=10)),
    )
    return st.builds(
        lambda address, port, fwd, weight, lo, hi, rr: RealServer(
            address=address, port=port, forwarding=fwd, weight=weight,
            lower_threshold=lo, upper_threshold=hi, request=rr[0], receive=rr[1],
        ),
        addresses(family), st.integers(0, 65535), st.sampled_from(Forwarding), small, small, small, pair,
    )  # fmt: skip


def fallbacks(family: Family) -> st.SearchStrategy[RealServer]:
    return st.builds(
        lambda a, p, f: RealServer(address=a, port=p, forwarding=f),
        addresses(family),
        st.integers(0, 65535),
        st.sampled_from(Forwarding),
    )


def opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


statuses = st.one_of(
    st.just(("none",)),
    st.just(()),
    st.lists(
        st.sampled_from(["all", "starting", "running", "stopping", "reloading"]), min_size=1, max_size=3
    ).map(tuple),
)
floats = positive.map(float)


@st.composite
def virtuals(draw: st.DrawFn) -> VirtualService:
    family = draw(st.sampled_from(Family))
    kind = draw(st.sampled_from(["tcp", "udp", "fwm"]))
    if kind == "fwm":
        address, port, fwmark = None, 0, draw(st.integers(0, 2**32 - 1))
        derived = "none"
    else:
        address, port, fwmark = draw(addresses(family)), draw(st.integers(0, 65535)), None
        derived = derived_service(str(port))
    service = draw(st.sampled_from(SERVICES))
    login = draw(opt(block_text))
    if service == "ftp" and derived != "ftp" and login is None:
        login = "anonymous"  # what ldirectord sets when service=ftp is written out
    check = CheckSettings(
        checktype=draw(st.sampled_from(["connect", "negotiate", "ping", "off", "on", "external",
                                        "external-perl"]) | st.integers(0, 1000).map(str)),
        service=service,
        request=draw(opt(block_text.map(lambda s: "/" + s.lstrip("/")))),
        receive=draw(opt(block_text)),
        httpmethod=draw(st.sampled_from(["GET", "HEAD"])),
        virtualhost=draw(opt(st.text(_SAFE, max_size=15))),
        checkport=draw(opt(st.integers(1, 65535))),
        login=login,
        passwd=draw(opt(block_text)),
        database=draw(opt(block_text)),
        secret=draw(opt(block_text)),
        checkcommand=draw(opt(block_text)),
        checktimeout=draw(opt(st.integers(0, 1000).map(float))),
        negotiatetimeout=draw(opt(st.integers(0, 1000).map(float))),
        checkinterval=draw(opt(st.integers(0, 1000).map(float))),
        checkcount=draw(opt(st.integers(0, 100))),
        failurecount=draw(opt(st.integers(0, 100))),
        cleanstop=draw(opt(st.booleans())),
    )  # fmt: skip
    netmask = (
        st.integers(1, 128).map(str)
        if family is Family.INET6
        else st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
    )
    return VirtualService(
        protocol=Protocol(kind),
        address=address,
        port=port,
        fwmark=fwmark,
        family=family,
        scheduler=draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
        persistent=draw(opt(small)),
        netmask=draw(opt(netmask)),
        ops=draw(st.booleans()),
        schedflags=tuple(draw(st.lists(st.from_regex(r"[a-z][a-z-]{0,10}", fullmatch=True), max_size=3))),
        reals=tuple(draw(st.lists(reals(family), max_size=4))),
        fallback=draw(opt(fallbacks(family))),
        fallbackcommand=draw(opt(block_text)),
        quiescent=draw(opt(st.booleans())),
        emailalert=draw(opt(block_text)),
        servicename=draw(opt(raw_text)),
        comment=draw(opt(raw_text)),
        check=check,
        emailalertfreq=draw(opt(small)),
        emailalertstatus=draw(opt(statuses)),
        smtp=draw(opt(st.from_regex(r"[0-9A-Za-z._+-]{1,20}", fullmatch=True))),
        monitorfile=draw(opt(block_text)),
    )  # type: ignore[arg-type]


@st.composite
def configs(draw: st.DrawFn) -> Config:
    timeouts = draw(st.one_of(st.just((5.0, 30.0)), st.tuples(floats, floats)))
    g = GlobalSettings(
        checktimeout=timeouts[0],
        negotiatetimeout=timeouts[1],
        checkinterval=float(draw(st.integers(0, 10_000))),
        checkcount=draw(st.integers(0, 100)),
        failurecount=draw(st.integers(0, 100)),
        autoreload=draw(st.booleans()),
        callback=draw(opt(global_text)),
        fallback=draw(opt(fallbacks(Family.INET))),
        fallback6=draw(opt(fallbacks(Family.INET6))),
        fallbackcommand=draw(opt(raw_global)),
        logfile=draw(opt(global_text)),
        emailalert=draw(opt(raw_global.filter(lambda s: '"' not in s))),
        emailalertfreq=draw(small),
        emailalertstatus=draw(statuses),
        emailalertfrom=draw(opt(raw_global)),
        smtp=draw(opt(st.from_regex(r"[0-9A-Za-z._+-]{1,20}", fullmatch=True))),
        execute=tuple(draw(st.lists(raw_global, max_size=3, unique=True))),
        fork=draw(st.booleans()),
        supervised=draw(st.booleans()),
        quiescent=draw(st.booleans()),
        readdquiescent=draw(st.booleans()),
        cleanstop=draw(st.booleans()),
        maintenancedir=draw(opt(raw_global)),
    )  # type: ignore[arg-type]
    vs = draw(
        st.lists(
            virtuals(),
            max_size=4,
            unique_by=lambda v: (v.protocol, v.family, v.address, v.port, v.fwmark),
        )
    )
    return Config(globals=g, virtuals=tuple(vs), source=SOURCE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_parse_of_print_is_identity(config: Config) -> None:
    text = format_config(config)
    assert parse_text(text, SOURCE, resolver=StaticResolver(hosts={}, services={})) == config


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_strict_mode_reads_printed_configs_identically(config: Config) -> None:
    text = format_config(config)
    assert parse_text(text, SOURCE, resolver=StaticResolver(), strict=True) == config
