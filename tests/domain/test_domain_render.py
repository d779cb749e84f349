"""The render's kernel normalisations and the incremental render (``TableRenderer``)."""

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
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event, RealServerHealth
from lvs_events.domain.render import (
    TableRenderer,
    expiring_reals,
    kernel_schedflags,
    normalized_netmask,
    render,
    touched_reals,
)
from lvs_events.domain.state import RealKey, State, fold
from lvs_events.domain.table import (
    Dest,
    Service,
    Table,
    diff,
    diff_services,
    digest_of_parts,
    format_ipvsadm,
    service_digest_part,
)
from tests.domain.strategies import event_logs, render_event_logs

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


def test_override_expiry_names_the_real_server() -> None:
    state = State()
    real = RealServer("192.0.2.1", 80, Forwarding.GATE, 1)
    cfg = Config(virtuals=(VirtualService(Protocol.TCP, "203.0.113.1", 80, check=ON, reals=(real,)),))
    state = fold(state, Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(cfg)))
    ov = AdminOverride("TCP 203.0.113.1:80", "192.0.2.1:80", AdminAction.DRAIN, 0, 50.0)
    state = fold(state, Event("e2", "c", "n", "t", "", 2.0, ov))
    assert expiring_reals(state, 2.0, 49.0) == set()
    assert expiring_reals(state, 2.0, 50.0) == {("TCP 203.0.113.1:80", "192.0.2.1:80")}
    assert expiring_reals(state, 50.0, 60.0) == set()


def _check_renderer(r: TableRenderer, state: State, before: Table, changed: dict[int, set[str]]) -> None:
    """The renderer's table, text and digest are the full render's; a changed service differs from
    the one before only in the destinations named (the others are the very same objects)."""
    full = render(state)
    assert r.table == full
    assert format_ipvsadm(r.table) == format_ipvsadm(full)  # byte for byte, order included
    assert r.digest() == full.digest()
    assert r.digest_parts() == [service_digest_part(s) for s in sorted(full.services, key=lambda s: s.key)]
    for i, (old, new) in enumerate(zip(before.services, r.table.services, strict=True)):
        if i not in changed:
            assert new is old
            continue
        keys = changed[i]
        assert keys
        assert new.same_attributes(old)
        patched: dict[str, Dest | None] = {d.key: d for d in old.dests}
        patched.update((dk, r.dest(i, dk)) for dk in keys)
        assert {k: d for k, d in patched.items() if d is not None} == {d.key: d for d in new.dests}
        kept = {d.key: d for d in old.dests if d.key not in keys}
        assert all(kept[d.key] is d for d in new.dests if d.key in kept)


@settings(max_examples=200, deadline=None)
@given(render_event_logs(), st.data())
def test_incremental_render_equals_full_render(events: list[Event], data: st.DataObject) -> None:
    """Fold in batches as the agent does; after each batch update only the real servers the batch
    touched plus those whose override expired, or build anew after a new config or leader: the
    table, its ipvsadm text and its digest are always the full render's."""
    state = State()
    r = TableRenderer(state)
    rendered_clock = state.clock
    touched: set[RealKey] | None = set()
    for e in events:
        state = fold(state, e)
        t = touched_reals(e)
        touched = None if t is None or touched is None else touched | t
        if not data.draw(st.booleans(), label="render now"):
            continue
        if touched is None or state.config is not r.config:
            r = TableRenderer(state)
            _check_renderer(r, state, r.table, {})
        else:
            before = r.table
            changed = r.update(state, touched | expiring_reals(state, rendered_clock, state.clock))
            _check_renderer(r, state, before, changed)
        rendered_clock, touched = state.clock, set()


@settings(max_examples=100, deadline=None)
@given(event_logs())
def test_a_renderer_built_from_any_state_is_the_render(events: list[Event]) -> None:
    state = State()
    for e in events:
        state = fold(state, e)
        r = TableRenderer(state)
        assert r.table == render(state)
        assert r.digest() == render(state).digest()


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
    r = TableRenderer(state)
    ov = AdminOverride("TCP 203.0.113.1:80", real.key, AdminAction.DRAIN, 0, 50.0)
    e2 = Event("e2", "c", "n", "t", "", 2.0, ov)
    before, state = state, fold(state, e2)
    touched = touched_reals(e2)
    assert touched == frozenset({("TCP 203.0.113.1:80", real.key)})
    assert r.update(state, touched) == {0: {real.key}}
    assert r.table.services[0].dests[0].weight == 0
    ping = Event(
        "e3", "c", "n", "t", "", 60.0, AdminOverride("TCP 203.0.113.2:80", real.key, AdminAction.ENABLE)
    )
    before, state = state, fold(state, ping)
    reals = set(touched_reals(ping) or ()) | expiring_reals(state, before.clock, state.clock)
    assert reals == {("TCP 203.0.113.1:80", real.key), ("TCP 203.0.113.2:80", real.key)}
    assert r.update(state, reals) == {0: {real.key}}  # the second service did not change
    assert r.table == render(state)
    assert r.table.services[0].dests[0].weight == 5


def test_the_fallback_enters_and_leaves_as_a_change_of_its_destination() -> None:
    fb = RealServer("127.0.0.1", 80, Forwarding.MASQ, 1)
    real = RealServer("192.0.2.1", 80, Forwarding.MASQ, 5)
    v = VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=(real,), fallback=fb)
    state = fold(State(), Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(Config(virtuals=(v,)))))
    r = TableRenderer(state)
    assert [d.key for d in r.table.services[0].dests] == ["127.0.0.1:80"]  # nobody up yet
    up = Event("e2", "c", "n", "t", "", 2.0, RealServerHealth(v.key, real.key, True, "lb1"))
    state = fold(state, up)
    assert r.update(state, touched_reals(up) or ()) == {0: {real.key, "127.0.0.1:80"}}
    assert [d.key for d in r.table.services[0].dests] == [real.key]
    assert r.dest(0, "127.0.0.1:80") is None
    assert r.table == render(state)


def test_an_unchanged_verdict_changes_nothing() -> None:
    real = RealServer("192.0.2.1", 80)
    v = VirtualService(Protocol.TCP, "203.0.113.1", 80, reals=(real,))
    state = fold(State(), Event("e1", "c", "n", "t", "", 1.0, ConfigApplied(Config(virtuals=(v,)))))
    up = RealServerHealth(v.key, real.key, True, "lb1")
    state = fold(state, Event("e2", "c", "n", "t", "", 2.0, up))
    r = TableRenderer(state)
    table = r.table
    state = fold(state, Event("e3", "c", "n", "t", "", 3.0, up))  # the same verdict again
    assert r.update(state, touched_reals(Event("e3", "c", "n", "t", "", 3.0, up)) or ()) == {}
    assert r.table is table
