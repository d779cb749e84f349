"""Unit and property tests of the fold, the render and the snapshot codec (pure)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from lvs_events.domain import codec
from lvs_events.domain.config import Config, Forwarding, GlobalSettings, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    DataplaneDrift,
    DrillMarker,
    Event,
    Leadership,
    LeadershipChange,
    Payload,
    RealServerHealth,
    TableApplied,
)
from lvs_events.domain.render import render
from lvs_events.domain.state import State, effective_health, fold, fold_all
from tests.domain.strategies import event_logs

VIP = "TCP 203.0.113.10:80"


def _cfg(quiescent: bool = False) -> Config:
    v = VirtualService(
        protocol=Protocol.TCP,
        address="203.0.113.10",
        port=80,
        scheduler="wrr",
        persistent=7200,
        reals=(
            RealServer("192.0.2.11", 80, Forwarding.GATE, 10),
            RealServer("192.0.2.12", 80, Forwarding.GATE, 20),
        ),
        fallback=RealServer("127.0.0.1", 80),
    )
    return Config(GlobalSettings(quiescent=quiescent), (v,))


class Log:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, payload: Payload, *, t: float = 1000.0, origin: str = "master") -> Log:
        rev = len(self.events) + 1
        self.events.append(Event(f"e{rev}", "c1", origin, "test", "", t, payload, revision=rev))
        return self

    def state(self) -> State:
        return fold_all(State(), self.events)


def _weights(state: State) -> dict[str, int]:
    svc = render(state).service(VIP)
    assert svc is not None
    return {d.key: d.weight for d in svc.dests}


def test_unchecked_servers_are_not_in_the_table_and_fallback_serves() -> None:
    s = Log().add(ConfigApplied(_cfg())).state()
    assert _weights(s) == {"127.0.0.1:80": 1}


def test_up_servers_replace_the_fallback() -> None:
    s = Log().add(ConfigApplied(_cfg())).add(RealServerHealth(VIP, "192.0.2.11:80", True, "master")).state()
    assert _weights(s) == {"192.0.2.11:80": 10}


def test_quiescent_keeps_down_servers_at_weight_zero() -> None:
    log = Log().add(ConfigApplied(_cfg(quiescent=True)))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", True, "master"))
    log.add(RealServerHealth(VIP, "192.0.2.12:80", False, "master"))
    assert _weights(log.state()) == {"192.0.2.11:80": 10, "192.0.2.12:80": 0}


def test_all_quiescent_down_brings_the_fallback() -> None:
    log = Log().add(ConfigApplied(_cfg(quiescent=True)))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", False, "master"))
    assert _weights(log.state()) == {"192.0.2.11:80": 0, "192.0.2.12:80": 0, "127.0.0.1:80": 1}


def test_drain_sets_weight_zero_enable_restores_and_disable_removes() -> None:
    log = Log().add(ConfigApplied(_cfg()))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", True, "master"))
    log.add(RealServerHealth(VIP, "192.0.2.12:80", True, "master"))
    log.add(AdminOverride(VIP, "192.0.2.12:80", AdminAction.DRAIN))
    assert _weights(log.state()) == {"192.0.2.11:80": 10, "192.0.2.12:80": 0}
    log.add(AdminOverride(VIP, "192.0.2.12:80", AdminAction.ENABLE))
    assert _weights(log.state()) == {"192.0.2.11:80": 10, "192.0.2.12:80": 20}
    log.add(AdminOverride(VIP, "192.0.2.12:80", AdminAction.DISABLE))
    assert _weights(log.state()) == {"192.0.2.11:80": 10}
    log.add(AdminOverride(VIP, "192.0.2.12:80", AdminAction.WEIGHT, weight=5))
    assert _weights(log.state()) == {"192.0.2.11:80": 10, "192.0.2.12:80": 5}


def test_override_expires_by_log_time_not_by_the_reader_clock() -> None:
    log = Log().add(ConfigApplied(_cfg()))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", True, "master"))
    log.add(AdminOverride(VIP, "192.0.2.11:80", AdminAction.DRAIN, expires_at=1500.0))
    # the only up server is drained: nothing is available, so the fallback takes new connections
    assert _weights(log.state()) == {"192.0.2.11:80": 0, "127.0.0.1:80": 1}
    log.add(RealServerHealth(VIP, "192.0.2.12:80", False, "master"), t=1600.0)
    assert _weights(log.state()) == {"192.0.2.11:80": 10}


def test_the_table_follows_the_active_directors_view() -> None:
    log = Log().add(ConfigApplied(_cfg()))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", True, "slave"))
    log.add(RealServerHealth(VIP, "192.0.2.11:80", False, "master"))
    # no leader known: the latest observation wins (the master's DOWN, revision 3)
    seen = effective_health(log.state(), VIP, "192.0.2.11:80")
    assert seen is not None
    assert (seen.up, seen.revision) == (False, 3)
    assert _weights(log.state()) == {"127.0.0.1:80": 1}
    # the slave becomes active: its view (UP) is followed although the master's is newer
    log.add(Leadership("slave", LeadershipChange.ACQUIRED, 1))
    seen = effective_health(log.state(), VIP, "192.0.2.11:80")
    assert seen is not None
    assert (seen.up, seen.revision) == (True, 2)
    assert _weights(log.state()) == {"192.0.2.11:80": 10}
    # and back: the master active again, its DOWN is followed
    log.add(Leadership("master", LeadershipChange.ACQUIRED, 2))
    seen = effective_health(log.state(), VIP, "192.0.2.11:80")
    assert seen is not None
    assert seen.up is False
    assert _weights(log.state()) == {"127.0.0.1:80": 1}


def test_stale_leadership_terms_are_ignored() -> None:
    log = Log().add(Leadership("slave", LeadershipChange.ACQUIRED, 3))
    log.add(Leadership("master", LeadershipChange.ACQUIRED, 2))
    assert (log.state().leader, log.state().term) == ("slave", 3)


def test_replaying_an_event_already_folded_changes_nothing() -> None:
    log = Log().add(ConfigApplied(_cfg())).add(RealServerHealth(VIP, "192.0.2.11:80", True, "master"))
    s = log.state()
    assert fold(s, log.events[0]) is s
    assert fold_all(s, log.events) == s


@settings(max_examples=200, deadline=None)
@given(event_logs(), st.data())
def test_snapshot_plus_tail_equals_full_replay(events: list[Event], data: st.DataObject) -> None:
    full = fold_all(State(), events)
    cut = data.draw(st.integers(0, len(events)))
    snapshot = codec.dumps(fold_all(State(), events[:cut]))
    resumed = fold_all(codec.loads(State, snapshot), events[cut:])
    assert resumed == full
    assert render(resumed).digest() == render(full).digest()


@settings(max_examples=100, deadline=None)
@given(event_logs())
def test_replay_is_idempotent_and_deterministic(events: list[Event]) -> None:
    once = fold_all(State(), events)
    twice = fold_all(once, events)
    assert twice == once
    assert codec.dumps(fold_all(State(), events)) == codec.dumps(once)


@settings(max_examples=100, deadline=None)
@given(event_logs())
def test_table_reports_drift_records_and_drill_markers_only_advance_the_clock(events: list[Event]) -> None:
    state = State()
    for e in events:
        after = fold(state, e)
        if isinstance(e.payload, (TableApplied, DrillMarker, DataplaneDrift)):
            # they may move "now" forward (which can end an expired drain), nothing else
            same_clock = replace(state, clock=after.clock)
            assert render(after).digest() == render(same_clock).digest()
        state = after
