"""The render's kernel normalisations and the incremental render (``render_changed``)."""

from __future__ import annotations

from hypothesis import given, settings
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
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event
from lvs_events.domain.render import (
    expiring_virtuals,
    kernel_schedflags,
    normalized_netmask,
    render,
    render_changed,
    touched_virtuals,
    virtual_positions,
)
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import Service, Table, diff, diff_services, digest_of_parts, service_digest_part
from tests.domain.strategies import event_logs

ON = CheckSettings(checktype="on")


def _table(*virtuals: VirtualService, fallback: RealServer | None = None) -> Table:
    cfg = Config(GlobalSettings(fallback=fallback), virtuals)
    return render(fold(State(), Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(cfg))))


def test_netmask_default_and_canonical_forms() -> None:
    assert normalized_netmask(Family.INET, None) is None
    assert normalized_netmask(Family.INET, "255.255.255.255") is None
    assert normalized_netmask(Family.INET, " 255.255.255.0 ") == "255.255.255.0"
    assert normalized_netmask(Family.INET6, "128") is None
    assert normalized_netmask(Family.INET6, "64") == "64"
    assert normalized_netmask(Family.INET6, "/48") == "48"
    assert normalized_netmask(Family.INET, "not-a-mask") == "not-a-mask"  # refused later, visibly


def test_scheduler_flags_by_the_kernels_names() -> None:
    assert kernel_schedflags("sh", ("flag-2", "flag-1")) == ("sh-fallback", "sh-port")
    assert kernel_schedflags("mh", ("mh-port",)) == ("mh-port",)
    assert kernel_schedflags("wrr", ("sh-port", "flag-3")) == ("flag-2", "flag-3")
    assert kernel_schedflags("sh", ("sh-port", "sh-port")) == ("sh-port",)
    assert kernel_schedflags("rr", ("bogus",)) == ("bogus",)
    assert kernel_schedflags("rr", ()) == ()


def test_service_attributes_as_the_kernel_reports_them() -> None:
    t = _table(
        VirtualService(Protocol.TCP, "203.0.113.1", 80, persistent=300, netmask="255.255.255.255", check=ON),
        VirtualService(Protocol.TCP, "203.0.113.2", 80, netmask="255.255.255.0", check=ON),
        VirtualService(Protocol.UDP, "203.0.113.3", 53, scheduler="sh", schedflags=("flag-1",), check=ON),
        VirtualService(
            Protocol.TCP, "2001:db8::1", 80, family=Family.INET6, persistent=60, netmask="128", check=ON
        ),
    )
    a, b, c, d = t.services
    assert a.persistent == 300
    assert a.netmask is None
    assert b.persistent is None
    assert b.netmask is None
    assert c.schedflags == ("sh-fallback",)
    assert d.netmask is None


def test_gate_and_ipip_real_servers_take_the_service_port_as_ipvsadm_does() -> None:
    reals = (
        RealServer("192.0.2.1", 8080, Forwarding.GATE, 1),
        RealServer("192.0.2.2", 8080, Forwarding.MASQ, 1),
        RealServer("192.0.2.3", 8080, Forwarding.IPIP, 1),
    )
    t = _table(
        VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=reals, check=ON),
        VirtualService(Protocol.FWM, None, 0, fwmark=5, reals=reals, check=ON),
    )
    assert [d.key for d in t.services[0].dests] == ["192.0.2.1:80", "192.0.2.2:8080", "192.0.2.3:80"]
    assert [d.key for d in t.services[1].dests] == ["192.0.2.1:8080", "192.0.2.2:8080", "192.0.2.3:8080"]


def test_two_reals_that_ipvsadm_makes_one_give_one_destination_the_first() -> None:
    reals = (
        RealServer("192.0.2.1", 8080, Forwarding.GATE, 3),
        RealServer("192.0.2.1", 8081, Forwarding.GATE, 5),
    )
    (s,) = _table(VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=reals, check=ON)).services
    assert [(d.key, d.weight) for d in s.dests] == [("192.0.2.1:80", 3)]


def test_a_direct_routing_fallback_takes_the_service_port() -> None:
    fb = RealServer("127.0.0.1", 8080, Forwarding.GATE, 1)
    (s,) = _table(VirtualService(Protocol.TCP, "203.0.113.1", 80, check=ON), fallback=fb).services
    assert [d.key for d in s.dests] == ["127.0.0.1:80"]


def test_override_expiry_names_the_virtual() -> None:
    state = State()
    cfg = Config(virtuals=(VirtualService(Protocol.TCP, "203.0.113.1", 80, check=ON),))
    state = fold(state, Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(cfg)))
    ov = AdminOverride("TCP 203.0.113.1:80", "192.0.2.1:80", AdminAction.DRAIN, 0, 50.0)
    state = fold(state, Event("e2", "c", "n", "t", "", 2.0, ov))
    assert expiring_virtuals(state, 2.0, 49.0) == set()
    assert expiring_virtuals(state, 2.0, 50.0) == {"TCP 203.0.113.1:80"}
    assert expiring_virtuals(state, 50.0, 60.0) == set()


@settings(max_examples=200, deadline=None)
@given(event_logs(), st.data())
def test_incremental_render_equals_full_render(events: list[Event], data: st.DataObject) -> None:
    """Fold in batches as the agent does; after each batch re-render only what the batch touched
    (plus expiring overrides), or everything after a new config or leader: always == render."""
    state = State()
    table = render(state)
    rendered_config, rendered_clock = state.config, state.clock
    dirty: set[str] | None = set()
    for e in events:
        state = fold(state, e)
        t = touched_virtuals(e)
        dirty = None if t is None or dirty is None else dirty | t
        if data.draw(st.booleans(), label="render now"):
            if dirty is None or state.config is not rendered_config:
                table = render(state)
            else:
                keys = dirty | expiring_virtuals(state, rendered_clock, state.clock)
                table = render_changed(state, table, keys, virtual_positions(state.config))
            rendered_config, rendered_clock, dirty = state.config, state.clock, set()
            assert table == render(state)


@settings(max_examples=100, deadline=None)
@given(event_logs(), event_logs())
def test_diff_of_some_services_and_digest_from_parts(a: list[Event], b: list[Event]) -> None:
    ta = render(fold(State(), a[0]))
    state = State()
    for e in b:
        state = fold(state, e)
    tb = render(state)
    want: dict[str, Service | None] = {s.key: s for s in tb.services}
    want.update((s.key, None) for s in ta.services if s.key not in want)
    assert diff_services({s.key: s for s in ta.services}, want) == diff(ta, tb)
    parts = [service_digest_part(s) for s in sorted(tb.services, key=lambda s: s.key)]
    assert digest_of_parts(parts) == tb.digest()


def test_incremental_render_follows_an_expiring_drain() -> None:
    real = RealServer("192.0.2.1", 80, Forwarding.MASQ, 5)
    cfg = Config(
        virtuals=(
            VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=(real,), check=ON),
            VirtualService(Protocol.TCP, "203.0.113.2", 80, reals=(real,), check=ON),
        )
    )
    state = fold(State(), Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(cfg)))
    table = render(state)
    ov = AdminOverride("TCP 203.0.113.1:80", real.key, AdminAction.DRAIN, 0, 50.0)
    e2 = Event("e2", "c", "n", "t", "", 2.0, ov)
    before, state = state, fold(state, e2)
    touched = touched_virtuals(e2)
    assert touched == frozenset({"TCP 203.0.113.1:80"})
    table = render_changed(state, table, touched)
    assert table.services[0].dests[0].weight == 0
    ping = Event(
        "e3", "c", "n", "t", "", 60.0, AdminOverride("TCP 203.0.113.2:80", real.key, AdminAction.ENABLE)
    )
    before, state = state, fold(state, ping)
    keys = set(touched_virtuals(ping) or ()) | expiring_virtuals(state, before.clock, state.clock)
    assert keys == {"TCP 203.0.113.1:80", "TCP 203.0.113.2:80"}
    table = render_changed(state, table, keys)
    assert table == render(state)
    assert table.services[0].dests[0].weight == 5
