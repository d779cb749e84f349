"""Hypothesis strategies for domain values and event sequences (shared by the property tests)."""

from __future__ import annotations

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
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    CheckerHealth,
    ConfigApplied,
    ConfigRejected,
    DataplaneDrift,
    DrillMarker,
    Event,
    Leadership,
    LeadershipChange,
    Payload,
    RealServerHealth,
    TableApplied,
)

VIPS = ["203.0.113.10", "203.0.113.20", "2001:db8::10"]
REALS = ["192.0.2.11", "192.0.2.12", "192.0.2.13", "198.51.100.11", "2001:db8::21"]
NODES = ["master", "slave"]
PORTS = [80, 443]


@st.composite
def real_servers(draw: st.DrawFn, v6: bool) -> RealServer:
    pool = [a for a in REALS if (":" in a) == v6]
    return RealServer(
        address=draw(st.sampled_from(pool)),
        port=draw(st.sampled_from(PORTS)),
        forwarding=draw(st.sampled_from(list(Forwarding))),
        weight=draw(st.integers(0, 100)),
        lower_threshold=draw(st.sampled_from([0, 0, 10])),
        upper_threshold=draw(st.sampled_from([0, 0, 100])),
    )


@st.composite
def virtual_services(draw: st.DrawFn) -> VirtualService:
    if draw(st.integers(0, 5)) == 0:
        v6 = False
        proto, addr, port, mark = Protocol.FWM, None, 0, draw(st.integers(1, 9))
    else:
        addr = draw(st.sampled_from(VIPS))
        v6 = ":" in addr
        proto = draw(st.sampled_from([Protocol.TCP, Protocol.UDP]))
        port, mark = draw(st.sampled_from(PORTS)), None
    reals = draw(st.lists(real_servers(v6), max_size=4, unique_by=lambda r: r.key))
    return VirtualService(
        protocol=proto,
        address=addr,
        port=port,
        fwmark=mark,
        family=Family.INET6 if v6 else Family.INET,
        scheduler=draw(st.sampled_from(["wrr", "rr", "lc", "sh"])),
        persistent=draw(st.sampled_from([None, 30, 7200])),
        reals=tuple(reals),
        fallback=draw(st.sampled_from([None, RealServer("127.0.0.1", 80)])) if not v6 else None,
        quiescent=draw(st.sampled_from([None, True, False])),
        check=CheckSettings(checktype=draw(st.sampled_from(["negotiate", "connect", "on", "off"]))),
    )


@st.composite
def configs(draw: st.DrawFn) -> Config:
    vs = draw(st.lists(virtual_services(), max_size=4, unique_by=lambda v: v.key))
    return Config(GlobalSettings(quiescent=draw(st.booleans())), tuple(vs))


@st.composite
def payloads(draw: st.DrawFn, universe: Config) -> Payload:  # noqa: PLR0911 -- one return per kind
    pairs = [(v.key, r.key) for v in universe.virtuals for r in v.reals]
    pairs = pairs or [("TCP 203.0.113.10:80", "192.0.2.11:80")]
    kind = draw(st.integers(0, 9))
    vk, rk = draw(st.sampled_from(pairs))
    if kind == 0:
        return ConfigApplied(draw(configs()))
    if kind <= 4:
        up, node = draw(st.booleans()), draw(st.sampled_from(NODES))
        return RealServerHealth(vk, rk, up, node, "connect", "d", 1.5)
    if kind <= 6:
        action = draw(st.sampled_from(list(AdminAction)))
        return AdminOverride(vk, rk, action, draw(st.integers(0, 50)), draw(st.sampled_from([0.0, 1500.0])))
    if kind == 7:
        return Leadership(
            draw(st.sampled_from(NODES)),
            draw(st.sampled_from(list(LeadershipChange))),
            draw(st.integers(1, 5)),
        )
    if kind == 8 and draw(st.booleans()):
        return ConfigRejected("ldirectord.cf", "ldirectord.cf:3:5: bad", "0" * 64)
    if kind == 8:
        return TableApplied(draw(st.sampled_from(NODES)), draw(st.integers(0, 100)), "0" * 64)
    if draw(st.booleans()):
        repairs = ("edit-dest TCP 203.0.113.10:80 -> 192.0.2.13:80 w=30",)
        return DataplaneDrift(draw(st.sampled_from(NODES)), draw(st.integers(0, 100)), repairs, ("FWM 99",))
    if draw(st.booleans()):
        behind = draw(st.booleans())
        degraded = behind or draw(st.booleans())
        return CheckerHealth(
            draw(st.sampled_from(NODES)), degraded, behind, 2.5 if behind else 1.0, 2.5, 400.0, 1000.0, 3
        )
    return DrillMarker("d1", "switchover", "start")


@st.composite
def event_logs(draw: st.DrawFn, max_size: int = 60) -> list[Event]:
    universe = draw(configs())
    n = draw(st.integers(0, max_size))
    events = [Event("e0", "c1", "master", "op", "boot", 1000.0, ConfigApplied(universe), revision=1)]
    for i in range(n):
        events.append(
            Event(
                event_id=f"e{i + 1}",
                cluster="c1",
                origin=draw(st.sampled_from(NODES)),
                actor="lvs-agent",
                reason="",
                wall_time=1000.0 + i * draw(st.sampled_from([0.0, 10.0, 100.0])),
                payload=draw(payloads(universe)),
                revision=i + 2,
            )
        )
    return events


# --- richer logs for the incremental render: shared destinations, fallbacks, expiring overrides ---

FALLBACK = RealServer("127.0.0.1", 80, Forwarding.MASQ, 1)
RENDER_REALS = ["192.0.2.11", "192.0.2.12", "127.0.0.1"]  # 127.0.0.1: the fallback's address


@st.composite
def render_virtuals(draw: st.DrawFn, vip: str) -> VirtualService:
    # the same address on several ports: direct routing and tunnelling force the service's port,
    # so two real servers can make one destination (the first present one wins)
    reals = draw(
        st.lists(
            st.builds(
                RealServer,
                address=st.sampled_from(RENDER_REALS),
                port=st.sampled_from([80, 8080, 0]),
                forwarding=st.sampled_from(list(Forwarding)),
                weight=st.integers(0, 3),
            ),
            max_size=6,
            unique_by=lambda r: r.key,
        )
    )
    return VirtualService(
        protocol=Protocol.TCP,
        address=vip,
        port=draw(st.sampled_from([80, 443])),
        reals=tuple(reals),
        fallback=draw(st.sampled_from([None, FALLBACK, RealServer("192.0.2.11", 80, Forwarding.GATE, 2)])),
        quiescent=draw(st.sampled_from([None, True, False])),
        check=CheckSettings(checktype=draw(st.sampled_from(["connect", "connect", "on", "off"]))),
    )


@st.composite
def render_configs(draw: st.DrawFn, unique: bool = False) -> Config:
    # unless ``unique``, a virtual key may come twice: the render keeps both, in config order (a
    # dataplane, keyed by service, cannot hold both)
    vips = draw(
        st.lists(st.sampled_from(["203.0.113.10", "203.0.113.20", "203.0.113.30"]), max_size=3, unique=unique)
    )
    fallback = draw(st.sampled_from([None, RealServer("127.0.0.1", 0, Forwarding.GATE, 1)]))
    return Config(
        GlobalSettings(quiescent=draw(st.booleans()), fallback=fallback),
        tuple(draw(render_virtuals(vip)) for vip in vips),
    )


@st.composite
def render_payloads(draw: st.DrawFn, universe: Config, wall: float, unique: bool) -> Payload:
    pairs = [(v.key, r.key) for v in universe.virtuals for r in v.reals]
    pairs = pairs or [("TCP 203.0.113.10:80", "192.0.2.11:80")]
    pairs.append(("TCP 203.0.113.99:80", "192.0.2.11:80"))  # no such virtual service
    kind = draw(st.integers(0, 19))
    vk, rk = draw(st.sampled_from(pairs))
    if kind == 0:
        return ConfigApplied(draw(st.sampled_from([universe, universe, draw(render_configs(unique))])))
    if kind <= 10:
        return RealServerHealth(vk, rk, draw(st.booleans()), draw(st.sampled_from(NODES)), "connect")
    if kind <= 15:
        expires = draw(st.sampled_from([0.0, wall + 1.0, wall + 5.0, wall + 50.0, wall - 1.0]))
        return AdminOverride(
            vk, rk, draw(st.sampled_from(list(AdminAction))), draw(st.integers(0, 5)), expires
        )
    if kind == 16:
        change = draw(st.sampled_from(list(LeadershipChange)))
        return Leadership(draw(st.sampled_from(NODES)), change, draw(st.integers(1, 3)))
    return TableApplied(draw(st.sampled_from(NODES)), 1, "0" * 64)  # moves the clock only


@st.composite
def render_event_logs(draw: st.DrawFn, max_size: int = 80, *, unique: bool = False) -> list[Event]:
    """A config, then health verdicts, overrides (some expiring as the clock moves), leader
    changes, the same or another config, clock-only events."""
    universe = draw(render_configs(unique))
    events = [Event("e0", "c1", "master", "op", "boot", 1000.0, ConfigApplied(universe), revision=1)]
    wall = 1000.0
    for i in range(draw(st.integers(0, max_size))):
        wall += draw(st.sampled_from([0.0, 0.0, 1.0, 3.0, 20.0]))
        events.append(
            Event(
                f"e{i + 1}",
                "c1",
                "master",
                "lvs-agent",
                "",
                wall,
                draw(render_payloads(universe, wall, unique)),
                revision=i + 2,
            )
        )
    return events
