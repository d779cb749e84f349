"""Time and operator overrides in the fold: expiry events, overrides of what the config defines,
optimistic concurrency of configurations."""

from __future__ import annotations

from dataclasses import replace

from lvs_events.domain.config import Config, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    OverrideExpired,
    Payload,
    expiry_event_id,
)
from lvs_events.domain.render import render, touched_reals
from lvs_events.domain.state import State, ended_overrides, fold
from lvs_events.domain.validate import validate_event

V = "TCP 203.0.113.10:80"
R1 = RealServer("192.0.2.11", 80, Forwarding.GATE, 10)
R2 = RealServer("192.0.2.12", 80, Forwarding.GATE, 20)
ON = VirtualService(Protocol.TCP, "203.0.113.10", 80, reals=(R1, R2))
CFG = Config(virtuals=(ON,))


def _ev(rev: int, payload: Payload, t: float = 100.0) -> Event:
    return Event(f"e{rev}", "c", "n", "alice", "", t, payload, revision=rev)


def _weights(state: State) -> dict[str, int]:
    return {d.key: d.weight for s in render(state).services for d in s.dests}


def _configured() -> State:
    on = replace(ON, check=replace(ON.check, checktype="on"))
    return fold(State(), _ev(1, ConfigApplied(Config(virtuals=(on,)))))


def test_an_expiry_event_ends_the_override_it_names_on_a_quiet_log() -> None:
    s = fold(_configured(), _ev(2, AdminOverride(V, "192.0.2.11:80", AdminAction.DRAIN, 0, 115.0)))
    assert _weights(s)["192.0.2.11:80"] == 0
    # the coordinator's event, stamped at the expiry: the override ends at this revision
    expired = _ev(3, OverrideExpired(V, "192.0.2.11:80", 2), t=115.2)
    assert touched_reals(expired) == frozenset({(V, "192.0.2.11:80")})
    s = fold(s, expired)
    assert (V, "192.0.2.11:80") not in s.overrides
    assert _weights(s)["192.0.2.11:80"] == 10


def test_an_expiry_leaves_a_later_override_alone() -> None:
    s = fold(_configured(), _ev(2, AdminOverride(V, "192.0.2.11:80", AdminAction.DRAIN, 0, 115.0)))
    s = fold(s, _ev(3, AdminOverride(V, "192.0.2.11:80", AdminAction.DRAIN, 0, 0.0)))  # open-ended
    s = fold(s, _ev(4, OverrideExpired(V, "192.0.2.11:80", 2), t=115.1))
    assert s.overrides[(V, "192.0.2.11:80")].revision == 3
    assert _weights(s)["192.0.2.11:80"] == 0


def test_overrides_of_what_the_config_does_not_define_are_ignored_and_end_with_a_removal() -> None:
    s = fold(_configured(), _ev(2, AdminOverride(V, "192.0.2.99:80", AdminAction.DRAIN)))
    assert not s.overrides  # a typo never lingers
    s = fold(s, _ev(3, AdminOverride(V, "192.0.2.12:80", AdminAction.DRAIN)))
    smaller = Config(virtuals=(VirtualService(Protocol.TCP, "203.0.113.10", 80, reals=(R1,)),))
    assert [k for k, _ in ended_overrides(s, smaller)] == [(V, "192.0.2.12:80")]
    s = fold(s, _ev(4, ConfigApplied(smaller)))
    assert not s.overrides
    s = fold(s, _ev(5, ConfigApplied(CFG)))  # the server comes back at its own weight
    assert not s.overrides


def test_a_stale_config_is_refused_and_the_config_in_force_stays() -> None:
    s = _configured()
    newer = Config(virtuals=(VirtualService(Protocol.TCP, "203.0.113.10", 80, reals=(R1,)),), source="a.cf")
    s = fold(s, _ev(2, ConfigApplied(newer, replaces_revision=1)))
    assert (s.config, s.config_revision) == (newer, 2)
    stale = Config(virtuals=(), source="old.cf")
    s = fold(s, _ev(3, ConfigApplied(stale, replaces_revision=1)))
    assert (s.config, s.config_revision) == (newer, 2)
    assert "stale config from old.cf refused" in s.config_error
    assert "revision 2" in s.config_error
    s = fold(s, _ev(4, ConfigApplied(stale)))  # unconditional (no replaces_revision): applies
    assert s.config_revision == 4


def test_the_expiry_event_id_is_the_same_from_every_coordinator_and_valid() -> None:
    assert expiry_event_id("c", 2) == expiry_event_id("c", 2) != expiry_event_id("c", 3)
    validate_event(
        Event(
            expiry_event_id("c", 2),
            "c",
            "coord-1",
            "lvs-coordinator",
            "expired",
            1.0,
            OverrideExpired(V, "192.0.2.11:80", 2),
        )
    )
